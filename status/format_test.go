package status

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// golden compares got with testdata/name.golden, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./status -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (go test ./status -update rewrites it)\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// designExample is the resource of DESIGN.md's status file example.
func designExample() Resource {
	return Resource{
		Minor: 0, Name: "r0", Protocol: "C",
		ConnState: "SyncSource", Role: "Primary", PeerRole: "Secondary",
		DiskState: "UpToDate", PeerDisk: "Inconsistent",
		NetSendKiB: 1048576, DiskWriteKiB: 1048576, DiskReadKiB: 4096,
		ALWrites: 12, BMWrites: 3, PeerPending: 2, AppPending: 1, OutOfSyncKiB: 20480,
		NBDClients: 1, SizeKiB: 1 << 20,
		Sync: &Sync{TotalKiB: 29312, RemainingKiB: 20480, SpeedKiB: 4096, AvgSpeedKiB: 4000, WantKiB: 4096, ETA: 2 * time.Second},
	}
}

func TestWriteTextDesignExample(t *testing.T) {
	const want = "urbd 0.1 (api:1/proto:8)\n" +
		" 0: r0 cs:SyncSource ro:Primary/Secondary ds:UpToDate/Inconsistent C r-----\n" +
		"    ns:1048576 nr:0 dw:1048576 dr:4096 al:12 bm:3 lo:0 pe:2 ua:0 ap:1 oos:20480\n" +
		"\t[=====>..............] sync'ed: 30.1% (20480/29312)K\n" +
		"\tfinish: 0:00:02 speed: 4,096 (4,000) want: 4,096 K/sec\n"
	var b bytes.Buffer
	if err := WriteText(&b, "0.1", []Resource{designExample()}); err != nil {
		t.Fatal(err)
	}
	if b.String() != want {
		t.Errorf("got\n%q\nwant\n%q", b.String(), want)
	}
}

// scenarios are the states the golden files show, in text and in the watch view.
func scenarios() map[string][]Resource {
	ex := designExample()
	return map[string][]Resource{
		"none": nil,
		"connected": {{
			Minor: 0, Name: "r0", Protocol: "C", ConnState: "Connected", Role: "Primary", PeerRole: "Secondary",
			DiskState: "UpToDate", PeerDisk: "UpToDate", NetSendKiB: 123456789, DiskWriteKiB: 123456789,
			DiskReadKiB: 42, ALWrites: 1237, BMWrites: 9, AppPending: 3, PeerPending: 3, LocalPending: 1, NBDClients: 2,
		}},
		"resync": {ex},
		"paused": {{
			Minor: 0, Name: "r0", Protocol: "C", ConnState: "PausedSyncT", Role: "Secondary", PeerRole: "Primary",
			DiskState: "Inconsistent", PeerDisk: "UpToDate", SyncPaused: true, PeerPaused: true, OutOfSyncKiB: 4096,
			Reason: "resync paused by the peer's operator",
			Sync:   &Sync{TotalKiB: 8192, RemainingKiB: 4096, AvgSpeedKiB: 2048, WantKiB: 102400, ETA: time.Hour},
		}},
		"multi": {
			{Minor: 3, Name: "r3", Protocol: "A", ConnState: "WFConnection", Role: "Primary", PeerRole: "Unknown",
				DiskState: "UpToDate", PeerDisk: "DUnknown", OutOfSyncKiB: 8 << 20, Reason: "peer lost: no answer within 6s"},
			{Minor: 0, Name: "r0", Protocol: "C", ConnState: "SyncTarget", Role: "Secondary", PeerRole: "Primary",
				DiskState: "Inconsistent", PeerDisk: "UpToDate", NetRecvKiB: 5 << 20, DiskWriteKiB: 5 << 20, OutOfSyncKiB: 6 << 20,
				Sync: &Sync{TotalKiB: 10 << 20, RemainingKiB: 6 << 20, SpeedKiB: 102400, AvgSpeedKiB: 98765, WantKiB: 102400, ETA: 61*time.Second + 500*time.Millisecond}},
			{Minor: 1, Name: "r1", Protocol: "B", ConnState: "VerifyS", Role: "Primary", PeerRole: "Secondary",
				DiskState: "UpToDate", PeerDisk: "UpToDate",
				Sync: &Sync{TotalKiB: 1 << 20, RemainingKiB: 1 << 20, SpeedKiB: 0, AvgSpeedKiB: 0, VerifiedKiB: 0, Differing: 0}},
		},
		"splitbrain": {{
			Minor: 0, Name: "r0", Protocol: "C", ConnState: "StandAlone", Role: "Primary", PeerRole: "Unknown",
			DiskState: "UpToDate", PeerDisk: "DUnknown", SplitBrain: true, OutOfSyncKiB: 4096,
			Reason: "split brain detected:\nboth nodes were primary since generation 7f3a",
		}},
		"suspended": {{
			Minor: 0, Name: "r0", Protocol: "C", ConnState: "WFConnection", Role: "Primary",
			DiskState: "UpToDate", Suspended: true, AppPending: 17,
		}},
		"verify": {{
			Minor: 0, Name: "r0", Protocol: "C", ConnState: "VerifyS", Role: "Primary", PeerRole: "Secondary",
			DiskState: "UpToDate", PeerDisk: "UpToDate", OutOfSyncKiB: 8,
			Sync:       &Sync{TotalKiB: 2 << 20, RemainingKiB: 1 << 19, SpeedKiB: 204800, AvgSpeedKiB: 200000, ETA: 2*time.Second + 600*time.Millisecond, VerifiedKiB: 3 << 19, Differing: 2, Unreadable: 1},
			SizeKiB:    2 << 20,
			LastVerify: &VerifyResult{Ended: time.Date(2026, 11, 1, 3, 12, 0, 0, time.UTC), FromKiB: 1 << 20, ToKiB: 2 << 20, Differing: 3},
		}},
		"unset": {{Minor: 0, Name: "bad name\n", Protocol: "X"}},
		"blocked": {{
			Minor: 0, Name: "r0", Protocol: "C", ConnState: "Connected", Role: "Primary", PeerRole: "Secondary",
			DiskState: "UpToDate", PeerDisk: "UpToDate", LocalPending: 3, PeerPending: 5, AppPending: 5,
			DiskBlockedSeconds: 12, PeerBlockedSeconds: 18,
			Blocked: []string{
				"the local disk has completed no request for 12s (--disk-timeout 30s)",
				"the peer has completed no request for 18s (dropped after 42s: --ko-count 7 × --timeout 6s)",
			},
			SizeKiB: 1 << 20,
		}},
	}
}

func TestWriteTextGolden(t *testing.T) {
	for name, rs := range scenarios() {
		t.Run(name, func(t *testing.T) {
			var b bytes.Buffer
			if err := WriteText(&b, "0.1", rs); err != nil {
				t.Fatal(err)
			}
			golden(t, "text-"+name, b.Bytes())
		})
	}
}

// TestWriteTextDRBDShape checks, for every scenario, the lines a /proc/drbd
// parser relies on: the header, then per resource a state line and a
// counter line of DRBD's fields in DRBD's order.
func TestWriteTextDRBDShape(t *testing.T) {
	state := []string{"cs:", "ro:", "ds:"}
	counters := []string{"ns:", "nr:", "dw:", "dr:", "al:", "bm:", "lo:", "pe:", "ua:", "ap:", "oos:"}
	for name, rs := range scenarios() {
		var b bytes.Buffer
		if err := WriteText(&b, "0.1", rs); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
		if lines[0] != "urbd 0.1 (api:1/proto:8)" {
			t.Errorf("%s: header %q", name, lines[0])
		}
		states := 0
		for i, l := range lines {
			if !strings.Contains(l, " cs:") {
				continue
			}
			states++
			f := strings.Fields(l)
			if len(f) != 7 || !strings.HasSuffix(f[0], ":") {
				t.Errorf("%s: state line %q has %d fields, want 7", name, l, len(f))
				continue
			}
			for j, p := range state {
				if !strings.HasPrefix(f[2+j], p) {
					t.Errorf("%s: field %d of %q is not %s", name, 2+j, l, p)
				}
			}
			if len(f[5]) != 1 || len(f[6]) != 6 {
				t.Errorf("%s: protocol %q and flags %q are not one and six letters", name, f[5], f[6])
			}
			c := strings.Fields(lines[i+1])
			if len(c) != len(counters) || !strings.HasPrefix(lines[i+1], "    ns:") {
				t.Errorf("%s: counter line %q", name, lines[i+1])
				continue
			}
			for j, p := range counters {
				if !strings.HasPrefix(c[j], p) {
					t.Errorf("%s: counter %d of %q is not %s", name, j, lines[i+1], p)
				}
			}
		}
		if states != len(rs) {
			t.Errorf("%s: %d state lines for %d resources", name, states, len(rs))
		}
	}
}

func TestProgressBar(t *testing.T) {
	for _, tc := range []struct {
		total, left uint64
		bar, pct    string
	}{
		{100, 100, "[>....................]", "  0.0%"},
		{1000, 951, "[>....................]", "  4.9%"},
		{1000, 950, "[>...................]", "  5.0%"},
		{1000, 900, "[=>..................]", " 10.0%"},
		{29312, 20480, "[=====>..............]", " 30.1%"},
		{1000, 1, "[==================>.]", " 99.9%"},
		{1000, 0, "[===================>]", "100.0%"},
		{0, 0, "[===================>]", "100.0%"},
		{10, 20, "[>....................]", "  0.0%"},
		{1 << 63, 1 << 62, "[=========>..........]", " 50.0%"},
	} {
		var b bytes.Buffer
		writeProgress(&b, &Resource{ConnState: "SyncTarget", Sync: &Sync{TotalKiB: tc.total, RemainingKiB: tc.left}})
		first := strings.SplitN(b.String(), "\n", 2)[0]
		if want := "\t" + tc.bar + " sync'ed:" + tc.pct + " "; !strings.HasPrefix(first, want) {
			t.Errorf("total %d left %d: %q, want prefix %q", tc.total, tc.left, first, want)
		}
	}
}

func TestProgressUnits(t *testing.T) {
	for _, tc := range []struct {
		total, left uint64
		want        string
	}{
		{4 << 20, 1 << 20, "(1048576/4194304)K"},
		{4<<20 + 1, 1 << 20, "(1024/4096)M"},
		{1 << 30, 3 << 20, "(3072/1048576)M"},
	} {
		var b bytes.Buffer
		writeProgress(&b, &Resource{Sync: &Sync{TotalKiB: tc.total, RemainingKiB: tc.left}})
		if !strings.Contains(b.String(), tc.want+"\n") {
			t.Errorf("total %d left %d: %q lacks %q", tc.total, tc.left, b.String(), tc.want)
		}
	}
}

func TestFinishLine(t *testing.T) {
	for _, tc := range []struct {
		s    Sync
		want string
	}{
		{Sync{ETA: 0, SpeedKiB: 0}, "\tfinish: 0:00:00 speed: 0 (0) K/sec\n"},
		{Sync{ETA: -time.Second}, "\tfinish: 0:00:00 speed: 0 (0) K/sec\n"},
		{Sync{ETA: 3*time.Hour + 25*time.Minute + 7*time.Second + 999*time.Millisecond, SpeedKiB: 999, AvgSpeedKiB: 1000, WantKiB: 250},
			"\tfinish: 3:25:07 speed: 999 (1,000) want: 250 K/sec\n"},
		{Sync{ETA: 100 * time.Hour, SpeedKiB: 1234567890}, "\tfinish: 100:00:00 speed: 1,234,567,890 (0) K/sec\n"},
	} {
		var b bytes.Buffer
		writeProgress(&b, &Resource{Sync: &tc.s})
		lines := strings.SplitAfter(b.String(), "\n")
		if len(lines) < 2 || lines[1] != tc.want {
			t.Errorf("%+v: %q, want %q", tc.s, b.String(), tc.want)
		}
	}
}

func TestThousands(t *testing.T) {
	for in, want := range map[uint64]string{
		0: "0", 7: "7", 999: "999", 1000: "1,000", 4096: "4,096", 100000: "100,000",
		1000000: "1,000,000", 18446744073709551615: "18,446,744,073,709,551,615",
	} {
		if got := thousands(in); got != want {
			t.Errorf("thousands(%d) = %q, want %q", in, got, want)
		}
	}
}

func TestOneLine(t *testing.T) {
	for _, tc := range []struct {
		in   string
		max  int
		want string
	}{
		{"a\nb\tc", 100, "a b c"},
		{"  padded \r\n", 100, "padded"},
		{"abcdefghij", 8, "abcde..."},
		{"ééééé", 8, "éé..."},
	} {
		if got := oneLine(tc.in, tc.max); got != tc.want {
			t.Errorf("oneLine(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.want)
		}
	}
}

type failWriter struct{}

var errBroken = errors.New("broken pipe")

func (failWriter) Write([]byte) (int, error) { return 0, errBroken }

func TestWriteErrors(t *testing.T) {
	rs := []Resource{designExample()}
	if err := WriteText(failWriter{}, "0.1", rs); !errors.Is(err, ErrWrite) || !errors.Is(err, errBroken) {
		t.Errorf("WriteText to a failing writer: %v", err)
	}
	if err := WriteJSON(failWriter{}, rs); !errors.Is(err, ErrWrite) || !errors.Is(err, errBroken) {
		t.Errorf("WriteJSON to a failing writer: %v", err)
	}
}

func TestWriteJSON(t *testing.T) {
	var b bytes.Buffer
	if err := WriteJSON(&b, nil); err != nil {
		t.Fatal(err)
	}
	if b.String() != "[]\n" {
		t.Errorf("no resources: %q, want []", b.String())
	}

	ex := designExample()
	b.Reset()
	if err := WriteJSON(&b, []Resource{{Minor: 1, Name: "r1"}, ex}); err != nil {
		t.Fatal(err)
	}
	var back []Resource
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if len(back) != 2 || back[0].Name != "r0" || back[1].Name != "r1" {
		t.Fatalf("resources not sorted by minor: %+v", back)
	}
	if *back[0].Sync != *ex.Sync || back[0].OutOfSyncKiB != ex.OutOfSyncKiB {
		t.Errorf("round trip lost data: %+v", back[0])
	}
	golden(t, "json-resync", b.Bytes())

	// Stable names: scripts read these keys.
	var raw []map[string]any
	if err := json.Unmarshal(b.Bytes(), &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"minor", "name", "protocol", "cstate", "role", "peer_role", "dstate", "peer_dstate",
		"suspended", "split_brain", "ns", "nr", "dw", "dr", "al", "bm", "lo", "pe", "ua", "ap", "oos", "nbd_clients", "sync"} {
		if _, ok := raw[0][k]; !ok {
			t.Errorf("json lacks key %q", k)
		}
	}
	if _, ok := raw[1]["sync"]; ok {
		t.Errorf("sync present without a resync")
	}

	// The blocked keys are there only while something is blocked.
	b.Reset()
	if err := WriteJSON(&b, append(scenarios()["blocked"], Resource{Minor: 1})); err != nil {
		t.Fatal(err)
	}
	raw = nil
	if err := json.Unmarshal(b.Bytes(), &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"disk_blocked_seconds", "peer_blocked_seconds", "blocked"} {
		if _, ok := raw[0][k]; !ok {
			t.Errorf("json of a blocked resource lacks key %q", k)
		}
		if _, ok := raw[1][k]; ok {
			t.Errorf("json of a resource that is not blocked has key %q", k)
		}
	}
}

func TestWriteAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "status")
	for _, content := range []string{"first\n", "second, longer\n", ""} {
		if err := WriteAtomic(path, []byte(content)); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != content {
			t.Errorf("content %q, want %q", got, content)
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the status file", len(entries))
	}

	err = WriteAtomic(filepath.Join(dir, "missing", "status"), []byte("x"))
	if !errors.Is(err, ErrWrite) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("write into a missing directory: %v", err)
	}
	// A directory in the way: the rename fails and nothing is left behind.
	blocked := filepath.Join(dir, "blocked")
	if err := os.Mkdir(blocked, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(blocked, "keep"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteAtomic(blocked, []byte("x")); !errors.Is(err, ErrWrite) {
		t.Errorf("rename over a non-empty directory: %v", err)
	}
	entries, _ = os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("a failed write left a temporary file: %d entries", len(entries))
	}
}
