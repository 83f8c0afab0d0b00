package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestLoadExample(t *testing.T) {
	f, err := Load("testdata/urbd.toml")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := f.Resources(), []string{"r0", "r1"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Resources() = %v, want %v", got, want)
	}
	for _, tc := range []struct {
		resource, node string
		want           Resource
	}{
		{"r0", "alpha", Resource{
			Name: "r0", Node: "alpha", PeerNode: "beta",
			Disk: "/dev/vdb", Meta: "/var/lib/urbd/r0", NBD: "unix:/run/urbd/r0.nbd",
			ListenPeer: "10.0.0.1:7789", Peer: "10.0.0.2:7789",
			Protocol: "C", ResyncRate: 100 << 20, SecretFile: "/etc/urbd/r0.secret",
			Timeout: 6 * time.Second, KoCount: 7, OnPeerLoss: "continue", Fencing: "dont-care", BitmapBlock: 4096, ALExtents: 1237,
			AfterSB0Pri: "disconnect", AfterSB1Pri: "disconnect", OnIOError: "detach", CsumsAlg: "none", ReadBalancing: "prefer-local",
			OnCongestion: "block", CongestionFill: 0, CongestionExtents: 1237, AutoPromote: "no",
			Handlers: map[string]string{
				"split-brain": "/usr/local/bin/notify-admin",
				"peer-lost":   "/usr/local/bin/page-oncall",
			},
			MetricsListen: "127.0.0.1:9942",
		}},
		{"r0", "beta", Resource{
			Name: "r0", Node: "beta", PeerNode: "alpha",
			Disk: "/dev/vdb", Meta: "/var/lib/urbd/r0", NBD: "unix:/run/urbd/r0.nbd",
			ListenPeer: "10.0.0.2:7789", Peer: "10.0.0.1:7789",
			Protocol: "C", ResyncRate: 100 << 20, SecretFile: "/etc/urbd/r0.secret",
			Timeout: 6 * time.Second, KoCount: 7, OnPeerLoss: "continue", Fencing: "dont-care", BitmapBlock: 4096, ALExtents: 1237,
			AfterSB0Pri: "disconnect", AfterSB1Pri: "disconnect", OnIOError: "detach", CsumsAlg: "none", ReadBalancing: "prefer-local",
			OnCongestion: "block", CongestionFill: 0, CongestionExtents: 1237, AutoPromote: "no",
			Handlers: map[string]string{
				"split-brain": "/usr/local/bin/notify-admin",
				"peer-lost":   "/usr/local/bin/page-oncall",
			},
			MetricsListen: "0.0.0.0:9942",
		}},
		{"r1", "alpha", Resource{
			Name: "r1", Node: "alpha", PeerNode: "beta",
			Disk: "testdata/disks/r1.img", Meta: "/var/lib/urbd/r1", NBD: "tcp:127.0.0.1:10809",
			ListenPeer: "10.0.0.1:7790", Peer: "10.0.0.2:7790",
			Protocol: "A", ResyncRate: 50 << 20,
			Timeout: 10 * time.Second, KoCount: 0, DiskTimeout: 30 * time.Second, OnPeerLoss: "suspend", Fencing: "resource-and-stonith", BitmapBlock: 64 << 10, ALExtents: 3389,
			AfterSB0Pri: "discard-zero-changes", AfterSB1Pri: "consensus", OnIOError: "pass_on", CsumsAlg: "sha256", ReadBalancing: "1M-striping", TCPCongestion: "bbr",
			OnCongestion: "disconnect", CongestionFill: 4 << 20, CongestionExtents: 0, AutoPromote: "yes",
			Handlers: map[string]string{
				"split-brain": "/usr/local/bin/notify-admin",
				"peer-lost":   "logger -t urbd peer lost",
			},
		}},
	} {
		got, err := f.Resolve(tc.resource, tc.node)
		if err != nil {
			t.Errorf("Resolve(%s, %s): %v", tc.resource, tc.node, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Resolve(%s, %s) =\n%+v\nwant\n%+v", tc.resource, tc.node, got, tc.want)
		}
	}
}

func TestResolveDefaults(t *testing.T) {
	src := `
[resource.r0.node.a]
disk = "/d"
meta = "/m"
nbd = "unix:/s"
address = "127.0.0.1:7789"
[resource.r0.node.b]
disk = "/d"
meta = "/m"
nbd = "unix:/s"
address = "127.0.0.1:7790"
`
	f, err := parse("/etc/urbd/urbd.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	r, err := f.Resolve("r0", "b")
	if err != nil {
		t.Fatal(err)
	}
	if r.Protocol != DefaultProtocol || r.ResyncRate != DefaultResyncRate || r.Timeout != DefaultTimeout ||
		r.OnPeerLoss != DefaultOnPeerLoss || r.BitmapBlock != DefaultBitmapBlock || r.ALExtents != DefaultALExtents {
		t.Errorf("defaults not applied: %+v", r)
	}
	if r.Handlers == nil || len(r.Handlers) != 0 {
		t.Errorf("Handlers = %#v, want an empty map", r.Handlers)
	}
	if r.SecretFile != "" || r.TLSCert != "" || r.MetricsListen != "" {
		t.Errorf("unset optional values are set: %+v", r)
	}
}

func TestResolveRelativePaths(t *testing.T) {
	src := `
[resource.r0]
secret-file = "r0.secret"
tls-ca = "pki/ca.pem"
[resource.r0.node.a]
disk = "a.img"
meta = "meta/a"
nbd = "unix:run/a.nbd"
address = "127.0.0.1:7789"
tls-cert = "pki/a.pem"
tls-key = "/abs/a.key"
[resource.r0.node.b]
disk = "b.img"
meta = "meta/b"
nbd = "unix:run/b.nbd"
address = "127.0.0.1:7790"
tls-cert = "pki/b.pem"
tls-key = "pki/b.key"
`
	f, err := parse("/srv/cfg/urbd.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	r, err := f.Resolve("r0", "a")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"Disk": "/srv/cfg/a.img", "Meta": "/srv/cfg/meta/a", "NBD": "unix:/srv/cfg/run/a.nbd",
		"SecretFile": "/srv/cfg/r0.secret", "TLSCA": "/srv/cfg/pki/ca.pem",
		"TLSCert": "/srv/cfg/pki/a.pem", "TLSKey": "/abs/a.key",
	}
	v := reflect.ValueOf(r)
	for field, w := range want {
		if got := v.FieldByName(field).String(); got != w {
			t.Errorf("%s = %q, want %q", field, got, w)
		}
	}
}

func TestResolveErrors(t *testing.T) {
	f, err := Load("testdata/urbd.toml")
	if err != nil {
		t.Fatal(err)
	}
	defer func(h func() (string, error)) { hostname = h }(hostname)

	hostname = func() (string, error) { return "beta.example.net", nil }
	r, err := f.Resolve("r0", "")
	if err != nil || r.Node != "beta" {
		t.Errorf("Resolve by short hostname = %q, %v; want beta", r.Node, err)
	}
	hostname = func() (string, error) { return "alpha", nil }
	if r, err := f.Resolve("r0", ""); err != nil || r.Node != "alpha" {
		t.Errorf("Resolve by hostname = %q, %v; want alpha", r.Node, err)
	}

	for _, tc := range []struct {
		name, resource, node string
		host                 func() (string, error)
		want                 error
		line                 int
	}{
		{"missing resource", "r9", "alpha", nil, ErrNoResource, 0},
		{"missing node", "r0", "gamma", nil, ErrNoNode, 11},
		{"hostname not a node", "r1", "", func() (string, error) { return "gamma.example.net", nil }, ErrNoNode, 36},
		{"no hostname", "r1", "", func() (string, error) { return "", errors.New("uname failed") }, ErrNoNode, 36},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.host != nil {
				hostname = tc.host
			}
			_, err := f.Resolve(tc.resource, tc.node)
			checkError(t, err, tc.want, tc.line)
		})
	}
}

func TestResolveReturnsCopy(t *testing.T) {
	f, err := Load("testdata/urbd.toml")
	if err != nil {
		t.Fatal(err)
	}
	r, _ := f.Resolve("r0", "alpha")
	r.Handlers["split-brain"] = "changed"
	r2, _ := f.Resolve("r0", "alpha")
	if r2.Handlers["split-brain"] != "/usr/local/bin/notify-admin" {
		t.Errorf("changing a resolved Handlers map changed the File")
	}
}

// checkError asserts the error contract: an *Error wrapping want, of one
// line, naming file:line when line > 0.
func checkError(t *testing.T, err, want error, line int) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("error = %v, want %v", err, want)
	}
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %v is not an *Error", err)
	}
	if ce.Line != line {
		t.Errorf("line = %d, want %d (%v)", ce.Line, line, err)
	}
	t.Log(err)
	msg := err.Error()
	if strings.ContainsAny(msg, "\n\r") {
		t.Errorf("error spans lines: %q", msg)
	}
	prefix := ce.File + ":"
	if line > 0 {
		prefix = ce.File + ":" + strconv.Itoa(line) + ": "
	}
	if !strings.HasPrefix(msg, prefix) {
		t.Errorf("error %q does not start with %q", msg, prefix)
	}
}

// mark puts the "#<-" marker on the line before the first line starting with key.
func mark(src, key string) string { return strings.Replace(src, "\n"+key, "\n#<-\n"+key, 1) }

// node returns a valid node table; extra lines are appended inside it.
func node(res, name, addr string, extra ...string) string {
	return "[resource." + res + ".node." + name + "]\n" +
		"disk = \"/dev/" + name + "-" + res + "\"\n" +
		"meta = \"/var/lib/urbd/" + res + "\"\n" +
		"nbd = \"unix:/run/urbd/" + res + ".nbd\"\n" +
		"address = \"" + addr + "\"\n" + strings.Join(extra, "\n") + "\n"
}

// pair is a valid two-node resource with extra resource-level lines.
func pair(res string, port string, extra ...string) string {
	return "[resource." + res + "]\n" + strings.Join(extra, "\n") + "\n" +
		node(res, "alpha", "10.0.0.1:"+port) + node(res, "beta", "10.0.0.2:"+port)
}

func TestLoadErrors(t *testing.T) {
	// Each source marks the line the error must name with "#<-".
	for _, tc := range []struct {
		name string
		src  string
		want error
	}{
		{"syntax: unterminated table", "[resource.r0 #<-\n", ErrSyntax},
		{"syntax: unterminated string", pair("r0", "7789", `secret-file = "/etc/x #<-`), ErrSyntax},
		{"syntax: duplicate key", pair("r0", "7789", `protocol = "C"`, `protocol = "B" #<-`), ErrSyntax},
		{"unknown resource key", pair("r0", "7789", `protcol = "C" #<-`), ErrUnknownKey},
		{"unknown node key", "[resource.r0]\n" + node("r0", "alpha", "10.0.0.1:1", `device = "/dev/nbd0" #<-`) + node("r0", "beta", "10.0.0.2:1"), ErrUnknownKey},
		{"unknown top-level table", pair("r0", "7789") + "[global] #<-\nusage-count = false\n", ErrUnknownKey},
		{"unknown common key", "[common]\nwfc-timeout = \"x\" #<-\n" + pair("r0", "7789"), ErrUnknownKey},
		{"unknown handler event", "[handlers]\nsplit-brian = \"x\" #<-\n" + pair("r0", "7789"), ErrUnknownKey},
		{"unknown resource handler event", pair("r0", "7789") + "[resource.r0.handlers]\nbefore-resync = \"x\" #<-\n", ErrUnknownKey},
		{"bad size", pair("r0", "7789", `bitmap-block = "4XiB" #<-`), ErrBadValue},
		{"bitmap-block not a power of two", pair("r0", "7789", `bitmap-block = 3000 #<-`), ErrBadValue},
		{"bitmap-block too small", "[common]\nbitmap-block = 256 #<-\n" + pair("r0", "7789"), ErrBadValue},
		{"al-extents too small", pair("r0", "7789", `al-extents = 66 #<-`), ErrBadValue},
		{"al-extents too large", "[common]\nal-extents = 65535 #<-\n" + pair("r0", "7789"), ErrBadValue},
		{"al-extents not a number", pair("r0", "7789", `al-extents = "many" #<-`), ErrBadValue},
		{"bad rate", pair("r0", "7789", `resync-rate = "fast" #<-`), ErrBadValue},
		{"zero rate", pair("r0", "7789", `resync-rate = 0 #<-`), ErrBadValue},
		{"bad duration", pair("r0", "7789", `timeout = "6" #<-`), ErrBadValue},
		{"negative duration", "[common]\ntimeout = \"-1s\" #<-\n" + pair("r0", "7789"), ErrBadValue},
		{"bad protocol", pair("r0", "7789", `protocol = "D" #<-`), ErrBadValue},
		{"bad on-peer-loss", pair("r0", "7789", `on-peer-loss = "panic" #<-`), ErrBadValue},
		{"bad fencing", pair("r0", "7789", `fencing = "stonith" #<-`), ErrBadValue},
		{"bad after-sb-0pri", pair("r0", "7789", `after-sb-0pri = "discard-younger-primary" #<-`), ErrBadValue},
		{"bad after-sb-1pri", pair("r0", "7789", `after-sb-1pri = "call-pri-lost-after-sb" #<-`), ErrBadValue},
		{"bad on-io-error", pair("r0", "7789", `on-io-error = "call-local-io-error" #<-`), ErrBadValue},
		{"bad tcp-congestion", pair("r0", "7789", `tcp-congestion = "cu bic" #<-`), ErrBadValue},
		{"bad csums-alg", pair("r0", "7789", `csums-alg = "md5" #<-`), ErrBadValue},
		{"bad read-balancing", pair("r0", "7789", `read-balancing = "nearest" #<-`), ErrBadValue},
		{"bad on-congestion", pair("r0", "7789", `on-congestion = "ahead" #<-`), ErrBadValue},
		{"bad auto-promote", pair("r0", "7789", `auto-promote = "maybe" #<-`), ErrBadValue},
		{"auto-promote not yes or no", pair("r0", "7789", `auto-promote = 1 #<-`), ErrBadValue},
		{"bad congestion-fill", pair("r0", "7789", `congestion-fill = "lots" #<-`), ErrBadValue},
		{"negative congestion-extents", pair("r0", "7789", `congestion-extents = -1 #<-`), ErrBadValue},
		{"negative disk-timeout", pair("r0", "7789", `disk-timeout = "-1s" #<-`), ErrBadValue},
		{"bad disk-timeout", pair("r0", "7789", `disk-timeout = "soon" #<-`), ErrBadValue},
		{"negative ko-count", pair("r0", "7789", `ko-count = -1 #<-`), ErrBadValue},
		{"ko-count too large", "[common]\nko-count = 201 #<-\n" + pair("r0", "7789"), ErrBadValue},
		{"wrong type", "[resource.r0]\n" + node("r0", "alpha", "10.0.0.1:1", `metrics-listen = 9942 #<-`) + node("r0", "beta", "10.0.0.2:1"), ErrBadValue},
		{"bad address", "[resource.r0]\n" + mark(node("r0", "alpha", "10.0.0.1"), "address") + node("r0", "beta", "10.0.0.2:1"), ErrBadValue},
		{"bad port", "[resource.r0]\n" + mark(node("r0", "alpha", "10.0.0.1:99999"), "address") + node("r0", "beta", "10.0.0.2:1"), ErrBadValue},
		{"bad nbd", "[resource.r0]\n[resource.r0.node.alpha]\ndisk = \"/d\"\nmeta = \"/m\"\nnbd = \"nbd://x\" #<-\naddress = \"10.0.0.1:1\"\n" + node("r0", "beta", "10.0.0.2:1"), ErrBadValue},
		{"bad metrics-listen", pair("r0", "7789", `metrics-listen = "9942" #<-`), ErrBadValue},
		{"bad resource name", "[resource.\"../etc\"] #<-\n" + strings.ReplaceAll(pair("r", "1"), "[resource.r.", "[resource.\"../etc\"."), ErrBadValue},
		{"bad node name", "[resource.r0]\n" + node("r0", "alpha", "10.0.0.1:1") + "[resource.r0.node.\"be ta\"] #<-\ndisk = \"/d\"\nmeta = \"/m\"\nnbd = \"unix:/s\"\naddress = \"10.0.0.2:1\"\n", ErrBadValue},
		{"one node", "[resource.r0] #<-\n" + node("r0", "alpha", "10.0.0.1:1"), ErrNodeCount},
		{"three nodes", "[resource.r0] #<-\n" + node("r0", "alpha", "10.0.0.1:1") + node("r0", "beta", "10.0.0.2:1") + node("r0", "gamma", "10.0.0.3:1"), ErrNodeCount},
		{"no nodes", "[resource.r0] #<-\nprotocol = \"C\"\n", ErrNodeCount},
		{"missing disk", "[resource.r0]\n[resource.r0.node.alpha] #<-\nmeta = \"/m\"\nnbd = \"unix:/s\"\naddress = \"10.0.0.1:1\"\n" + node("r0", "beta", "10.0.0.2:1"), ErrMissingKey},
		{"missing address", "[resource.r0]\n" + node("r0", "alpha", "10.0.0.1:1") + "[resource.r0.node.beta] #<-\ndisk = \"/d\"\nmeta = \"/m\"\nnbd = \"unix:/s\"\n", ErrMissingKey},
		{"partial tls", "[resource.r0]\ntls-ca = \"/ca\"\n[resource.r0.node.alpha] #<-\ndisk = \"/d\"\nmeta = \"/m\"\nnbd = \"unix:/s\"\naddress = \"10.0.0.1:1\"\ntls-cert = \"/c\"\n" + node("r0", "beta", "10.0.0.2:1", `tls-cert = "/c"`, `tls-key = "/k"`), ErrMissingKey},
		{"no resources", "[handlers]\nsplit-brain = \"x\"\n", ErrMissingKey},
		{"duplicate address in a resource", "[resource.r0]\n" + node("r0", "alpha", "10.0.0.1:7789") + mark(node("r0", "beta", "10.0.0.1:7789"), "address"), ErrDuplicate},
		{"duplicate address across resources", pair("r0", "7789") + "[resource.r1]\n" + node("r1", "alpha", "10.0.0.5:7789") + mark(node("r1", "beta", "10.0.0.2:7789"), "address"), ErrDuplicate},
		{"duplicate nbd on one node", pair("r0", "7789") + "[resource.r1]\n" +
			mark(strings.Replace(node("r1", "alpha", "10.0.0.1:7790"), "r1.nbd", "r0.nbd", 1), "nbd") +
			node("r1", "beta", "10.0.0.2:7790"), ErrDuplicate},
	} {
		t.Run(tc.name, func(t *testing.T) {
			line := markedLine(tc.src)
			_, err := parse("test.toml", []byte(tc.src))
			checkError(t, err, tc.want, line)
		})
	}
}

// markedLine is the 1-based line holding "#<-", the line after it when the
// marker stands alone on its line, or 0.
func markedLine(src string) int {
	for i, l := range strings.Split(src, "\n") {
		if strings.Contains(l, "#<-") {
			if strings.TrimSpace(l) == "#<-" {
				return i + 2
			}
			return i + 1
		}
	}
	return 0
}

func TestLoadFileErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := Load(filepath.Join(dir, "missing.toml"))
	checkError(t, err, ErrRead, 0)

	big := filepath.Join(dir, "big.toml")
	if err := os.WriteFile(big, []byte("# "+strings.Repeat("x", MaxFileSize)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Load(big)
	checkError(t, err, ErrRead, 0)
}

func TestIndexLines(t *testing.T) {
	src := `# comment
top = 1
[resource.r0]   # trailing comment
protocol = "C"
  [resource.r0.node."alpha.example"]
  disk = '/dev/vdb'
  "quoted key" = 2
  a.b.c = 3
[resource.r0.handlers]
split-brain = """
not = a key
"""
after = 1
[[array]]
x = 1
`
	ix := indexLines(src)
	for _, tc := range []struct {
		path []string
		want int
	}{
		{[]string{"top"}, 2},
		{[]string{"resource"}, 3},
		{[]string{"resource", "r0"}, 3},
		{[]string{"resource", "r0", "protocol"}, 4},
		{[]string{"resource", "r0", "node", "alpha.example"}, 5},
		{[]string{"resource", "r0", "node", "alpha.example", "disk"}, 6},
		{[]string{"resource", "r0", "node", "alpha.example", "quoted key"}, 7},
		{[]string{"resource", "r0", "node", "alpha.example", "a", "b", "c"}, 8},
		{[]string{"resource", "r0", "handlers", "split-brain"}, 10},
		{[]string{"resource", "r0", "handlers", "not"}, 9}, // inside the string: falls back to the table
		{[]string{"resource", "r0", "handlers", "after"}, 13},
		{[]string{"array", "x"}, 15},
		{[]string{"resource", "r0", "unseen"}, 3},
		{[]string{"nothing"}, 0},
	} {
		if got := ix.line(tc.path...); got != tc.want {
			t.Errorf("line(%q) = %d, want %d", tc.path, got, tc.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	example, err := os.ReadFile("testdata/urbd.toml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example)
	f.Add([]byte(pair("r0", "7789")))
	f.Add([]byte("[resource.r0 #<-\n"))
	f.Add([]byte("a = \"\"\"\nx\n\"\"\"\n[resource.\"q\\\"\"]\n"))
	f.Add([]byte{0xff, 0xfe, 0})
	sentinels := []error{ErrRead, ErrSyntax, ErrUnknownKey, ErrBadValue, ErrMissingKey, ErrNoResource, ErrNoNode, ErrNodeCount, ErrDuplicate}
	f.Fuzz(func(t *testing.T, data []byte) {
		indexLines(string(data))
		file, err := parse("fuzz.toml", data)
		if err != nil {
			if strings.ContainsAny(err.Error(), "\n\r") {
				t.Fatalf("error spans lines: %q", err)
			}
			for _, s := range sentinels {
				if errors.Is(err, s) {
					return
				}
			}
			t.Fatalf("error %v wraps no sentinel", err)
		}
		for _, name := range file.Resources() {
			e := file.resources[name]
			for n := range e.nodes {
				r, err := file.Resolve(name, n)
				if err != nil {
					t.Fatalf("Resolve(%s, %s): %v", name, n, err)
				}
				if r.ListenPeer == r.Peer {
					t.Fatalf("resource %s: node %s listens on its peer's address %s", name, n, r.Peer)
				}
			}
		}
	})
}

// TestDocsExample loads the complete example of docs/CONFIG.md, so the
// documentation cannot drift from the parser.
func TestDocsExample(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "CONFIG.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "```toml\n")
	if !ok {
		t.Fatal("docs/CONFIG.md has no toml example")
	}
	example, _, _ := strings.Cut(rest, "```")
	f, err := parse("/etc/urbd/urbd.toml", []byte(example))
	if err != nil {
		t.Fatal(err)
	}
	r, err := f.Resolve("r0", "alpha")
	if err != nil {
		t.Fatal(err)
	}
	if r.ResyncRate != 200<<20 || r.Peer != "10.0.0.2:7789" || r.Handlers["resync-done"] == "" || r.Handlers["split-brain"] == "" {
		t.Errorf("r0 on alpha: %+v", r)
	}
	r, err = f.Resolve("r1", "beta")
	if err != nil {
		t.Fatal(err)
	}
	if r.TLSCert != "/etc/urbd/pki/beta.pem" || r.TLSCA != "/etc/urbd/pki/ca.pem" || r.Protocol != "A" || r.ResyncRate != 100<<20 {
		t.Errorf("r1 on beta: %+v", r)
	}
}
