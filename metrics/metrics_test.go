package metrics

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/urbd/urbd/status"
)

// scrape fetches url and returns every sample of the text exposition format
// by its series, e.g. `urbd_split_brain{resource="r0"}` -> 1.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	samples := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad sample line %q", line)
		}
		samples[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return samples
}

func TestServeScrape(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	r0 := m.Resource("r0")
	r0.IO(Local, Write, 8192)
	r0.IO(Local, Write, 4096)
	r0.IO(Peer, Write, 4096)
	r0.IO(Local, Flush, 0)
	r0.IO(Local, Read, 65536)
	r0.IO(Peer, Trim, 1<<20)
	r0.IO(Local, Zero, 1<<16)
	r0.ObserveWrite(Local, 40*time.Microsecond)
	r0.ObserveWrite(Peer, 3*time.Millisecond)
	r0.ObserveWrite(Peer, 20*time.Second)
	r0.Update(&status.Resource{
		Name: "r0", Protocol: "B", ConnState: "SyncSource", Role: "Primary", PeerRole: "Secondary",
		DiskState: "UpToDate", PeerDisk: "Inconsistent", OutOfSyncKiB: 20480, NBDClients: 2, Suspended: true,
		LocalPending: 1, PeerPending: 3, AppPending: 3, PeerBlockedSeconds: 12,
		Sync:       &status.Sync{TotalKiB: 29312, RemainingKiB: 20480, SpeedKiB: 4096},
		LastVerify: &status.VerifyResult{Ended: time.Unix(1793000000, 500e6), Complete: true, Differing: 3, Unreadable: 1},
	})
	r1 := m.Resource("r1")
	r1.SetConnState("StandAlone")
	r1.SetSplitBrain(true)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeListener(ctx, ln, reg) }()
	got := scrape(t, "http://"+ln.Addr().String()+"/metrics")

	want := map[string]float64{
		`urbd_io_bytes_total{kind="write",resource="r0",side="local"}`:             12288,
		`urbd_io_requests_total{kind="write",resource="r0",side="local"}`:          2,
		`urbd_io_bytes_total{kind="write",resource="r0",side="peer"}`:              4096,
		`urbd_io_requests_total{kind="flush",resource="r0",side="local"}`:          1,
		`urbd_io_bytes_total{kind="flush",resource="r0",side="local"}`:             0,
		`urbd_io_bytes_total{kind="read",resource="r0",side="local"}`:              65536,
		`urbd_io_bytes_total{kind="trim",resource="r0",side="peer"}`:               1 << 20,
		`urbd_io_bytes_total{kind="zero",resource="r0",side="local"}`:              1 << 16,
		`urbd_io_requests_total{kind="read",resource="r0",side="peer"}`:            0,
		`urbd_write_latency_seconds_bucket{resource="r0",side="local",le="1e-05"}`: 0,
		`urbd_write_latency_seconds_bucket{resource="r0",side="local",le="5e-05"}`: 1,
		`urbd_write_latency_seconds_bucket{resource="r0",side="peer",le="0.0025"}`: 0,
		`urbd_write_latency_seconds_bucket{resource="r0",side="peer",le="0.005"}`:  1,
		`urbd_write_latency_seconds_bucket{resource="r0",side="peer",le="10"}`:     1,
		`urbd_write_latency_seconds_bucket{resource="r0",side="peer",le="+Inf"}`:   2,
		`urbd_write_latency_seconds_count{resource="r0",side="peer"}`:              2,
		`urbd_out_of_sync_bytes{resource="r0"}`:                                    20480 * 1024,
		`urbd_resync_rate_bytes_per_second{resource="r0"}`:                         4096 * 1024,
		`urbd_resync_remaining_bytes{resource="r0"}`:                               20480 * 1024,
		`urbd_connection_state{resource="r0",state="SyncSource"}`:                  1,
		`urbd_connection_state{resource="r0",state="Connected"}`:                   0,
		`urbd_connection_state{resource="r0",state="StandAlone"}`:                  0,
		`urbd_role{resource="r0",role="Primary"}`:                                  1,
		`urbd_role{resource="r0",role="Secondary"}`:                                0,
		`urbd_peer_role{resource="r0",role="Secondary"}`:                           1,
		`urbd_protocol{protocol="B",resource="r0"}`:                                1,
		`urbd_protocol{protocol="C",resource="r0"}`:                                0,
		`urbd_protocol{protocol="A",resource="r1"}`:                                0,
		`urbd_disk_state{disk="local",resource="r0",state="UpToDate"}`:             1,
		`urbd_disk_state{disk="peer",resource="r0",state="Inconsistent"}`:          1,
		`urbd_disk_state{disk="peer",resource="r0",state="UpToDate"}`:              0,
		`urbd_writes_suspended{resource="r0"}`:                                     1,
		`urbd_split_brain{resource="r0"}`:                                          0,
		`urbd_nbd_clients{resource="r0"}`:                                          2,
		`urbd_pending_requests{queue="local",resource="r0"}`:                       1,
		`urbd_pending_requests{queue="peer",resource="r0"}`:                        3,
		`urbd_pending_requests{queue="unacked",resource="r0"}`:                     0,
		`urbd_pending_requests{queue="application",resource="r0"}`:                 3,
		`urbd_blocked_seconds{on="peer",resource="r0"}`:                            12,
		`urbd_blocked_seconds{on="disk",resource="r0"}`:                            0,
		`urbd_connection_state{resource="r1",state="StandAlone"}`:                  1,
		`urbd_split_brain{resource="r1"}`:                                          1,
		`urbd_role{resource="r1",role="Primary"}`:                                  0,
		`urbd_last_verify_end_timestamp_seconds{resource="r0"}`:                    1793000000.5,
		`urbd_last_verify_blocks{found="differing",resource="r0"}`:                 3,
		`urbd_last_verify_blocks{found="unreadable",resource="r0"}`:                1,
		`urbd_last_verify_complete{resource="r0"}`:                                 1,
		`urbd_last_verify_end_timestamp_seconds{resource="r1"}`:                    0,
	}
	for series, w := range want {
		v, ok := got[series]
		if !ok {
			t.Errorf("scrape lacks %s", series)
		} else if v != w {
			t.Errorf("%s = %v, want %v", series, v, w)
		}
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ServeListener after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ServeListener did not return after cancel")
	}
	if _, err := http.Get("http://" + ln.Addr().String() + "/metrics"); err == nil {
		t.Error("server still answers after cancel")
	}
}

func TestServeBadAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, addr := range []string{ln.Addr().String(), "not an address", "127.0.0.1:99999"} {
		err := Serve(context.Background(), addr, prometheus.NewRegistry())
		if !errors.Is(err, ErrListen) {
			t.Errorf("Serve(%q) = %v, want ErrListen", addr, err)
		}
	}
}

func TestServeRoot(t *testing.T) {
	srv := Handler(prometheus.NewRegistry())
	for path, code := range map[string]int{"/": 200, "/metrics": 200, "/nothing": 404} {
		rec := &responseRecorder{header: http.Header{}}
		req, _ := http.NewRequest(http.MethodGet, path, nil)
		srv.ServeHTTP(rec, req)
		if rec.code != code {
			t.Errorf("GET %s: %d, want %d", path, rec.code, code)
		}
	}
}

type responseRecorder struct {
	header http.Header
	code   int
}

func (r *responseRecorder) Header() http.Header { return r.header }
func (r *responseRecorder) Write(p []byte) (int, error) {
	if r.code == 0 {
		r.code = 200
	}
	return len(p), nil
}
func (r *responseRecorder) WriteHeader(code int) { r.code = code }

// gather returns the value of every series of reg, like scrape without HTTP.
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	srv := &http.Server{Handler: Handler(reg)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	return scrape(t, "http://"+ln.Addr().String()+"/metrics")
}

func TestEnumTransitions(t *testing.T) {
	reg := prometheus.NewRegistry()
	r := New(reg).Resource("r0")
	for _, s := range []string{"WFConnection", "Connected", "SyncTarget", "Connected", "Connected", ""} {
		r.SetConnState(s)
	}
	r.SetConnState("Disconnecting") // not a known state: gets its own series
	got := gather(t, reg)
	ones := 0
	for _, s := range append(ConnStates, "Disconnecting") {
		v, ok := got[`urbd_connection_state{resource="r0",state="`+s+`"}`]
		if !ok {
			t.Errorf("no series for %s", s)
		}
		if v == 1 {
			ones++
			if s != "Disconnecting" {
				t.Errorf("state %s is 1, want Disconnecting", s)
			}
		}
	}
	if ones != 1 {
		t.Errorf("%d states are 1, want exactly one", ones)
	}

	for i := range 2 * maxEnumValues {
		r.SetRole("made-up-" + strconv.Itoa(i))
	}
	roles := 0
	for series := range gather(t, reg) {
		if strings.HasPrefix(series, "urbd_role{") {
			roles++
		}
	}
	if roles > maxEnumValues {
		t.Errorf("role gauge grew to %d series, bound is %d", roles, maxEnumValues)
	}
}

func TestResourceIsShared(t *testing.T) {
	m := New(nil)
	if m.Resource("r0") != m.Resource("r0") {
		t.Error("Resource returns a new recorder for the same name")
	}
	m.Resource("r0").IO(Side(7), Kind(-1), 1) // out of range: ignored
	m.Resource("r0").ObserveWrite(Side(-1), time.Second)
}

func TestRemove(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	m.Resource("r0").IO(Local, Write, 1)
	m.Resource("r1").IO(Local, Write, 1)
	m.Remove("r0")
	for series := range gather(t, reg) {
		if strings.Contains(series, `resource="r0"`) {
			t.Errorf("series %s survived Remove", series)
		}
	}
	if _, ok := gather(t, reg)[`urbd_io_bytes_total{kind="write",resource="r1",side="local"}`]; !ok {
		t.Error("Remove(r0) removed r1's series")
	}
}

func TestLatencyBuckets(t *testing.T) {
	if LatencyBuckets[0] != 10e-6 || LatencyBuckets[len(LatencyBuckets)-1] != 10 {
		t.Errorf("buckets span %v..%v, want 10µs..10s", LatencyBuckets[0], LatencyBuckets[len(LatencyBuckets)-1])
	}
	for i := 1; i < len(LatencyBuckets); i++ {
		if LatencyBuckets[i] <= LatencyBuckets[i-1] {
			t.Errorf("bucket %d (%v) not above %v", i, LatencyBuckets[i], LatencyBuckets[i-1])
		}
	}
}

func TestKindSideNames(t *testing.T) {
	for k, want := range map[Kind]string{Read: "read", Write: "write", Flush: "flush", Trim: "trim", Zero: "zero", FlushAhead: "flush_ahead", Kind(9): "unknown"} {
		if k.String() != want {
			t.Errorf("Kind(%d) = %q, want %q", k, k.String(), want)
		}
	}
	for s, want := range map[Side]string{Local: "local", Peer: "peer", Side(-1): "unknown"} {
		if s.String() != want {
			t.Errorf("Side(%d) = %q, want %q", s, s.String(), want)
		}
	}
}

// TestHotPathAllocations holds the recording methods of the write path to
// zero allocations.
func TestHotPathAllocations(t *testing.T) {
	r := New(prometheus.NewRegistry()).Resource("r0")
	if n := testing.AllocsPerRun(1000, func() { r.IO(Local, Write, 4096) }); n != 0 {
		t.Errorf("IO allocates %v times per call", n)
	}
	if n := testing.AllocsPerRun(1000, func() { r.ObserveWrite(Peer, 150*time.Microsecond) }); n != 0 {
		t.Errorf("ObserveWrite allocates %v times per call", n)
	}
}

func BenchmarkIO(b *testing.B) {
	r := New(prometheus.NewRegistry()).Resource("r0")
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r.IO(Local, Write, 4096)
		}
	})
}

func BenchmarkObserveWrite(b *testing.B) {
	r := New(prometheus.NewRegistry()).Resource("r0")
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r.ObserveWrite(Peer, 150*time.Microsecond)
		}
	})
}

var _ io.Writer = (*responseRecorder)(nil)
