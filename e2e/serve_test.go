package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/urbd/urbd/nbd"
)

// serveFixture is a fresh disk exported by `urbd serve` on a unix socket.
type serveFixture struct {
	dir, disk, sock string
	d               *daemon
}

func newServe(t *testing.T, size int64, extra ...string) *serveFixture {
	t.Helper()
	f := &serveFixture{dir: shortTempDir(t)}
	f.disk = filepath.Join(f.dir, "disk.img")
	f.sock = filepath.Join(f.dir, "nbd.sock")
	makeSparseFile(t, f.disk, size)
	f.d = startServe(t, f.disk, f.sock, extra...)
	return f
}

func TestServeNbdinfo(t *testing.T) {
	requireCmds(t, "nbdinfo")
	f := newServe(t, 64<<20)
	out := runCmd(t, 30*time.Second, "nbdinfo", "--json", nbdURI(f.sock))
	var info struct {
		Protocol string `json:"protocol"`
		Exports  []struct {
			Name     string `json:"export-name"`
			Size     int64  `json:"export-size"`
			CanFlush bool   `json:"can_flush"`
			CanFUA   bool   `json:"can_fua"`
			CanTrim  bool   `json:"can_trim"`
			CanZero  bool   `json:"can_zero"`
			ReadOnly bool   `json:"is_read_only"`
			MaxBlock int64  `json:"block_size_maximum"`
		} `json:"exports"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("nbdinfo --json: %v\n%s", err, out)
	}
	if info.Protocol != "newstyle-fixed" || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo: %s", out)
	}
	e := info.Exports[0]
	if e.Size != 64<<20 || !e.CanFlush || !e.CanFUA || !e.CanTrim || !e.CanZero || e.ReadOnly || e.MaxBlock != nbd.MaxBlockSize {
		t.Fatalf("nbdinfo reports %+v", e)
	}
	// The file's base name is an export name too, and is listed.
	if out := runCmd(t, 30*time.Second, "nbdinfo", "--list", nbdURI(f.sock)); !strings.Contains(out, `export="disk.img"`) {
		t.Errorf("nbdinfo --list:\n%s", out)
	}
	runCmd(t, 30*time.Second, "nbdinfo", "--size", "nbd+unix:///disk.img?socket="+f.sock)
	// An unknown name is refused with the server's message (libnbd prints
	// it in its debug output).
	cmd := exec.Command("nbdinfo", "nbd+unix:///other?socket="+f.sock)
	cmd.Env = append(os.Environ(), "LIBNBD_DEBUG=1")
	msg, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(msg), `unknown export "other"`) {
		t.Errorf("nbdinfo on an unknown export: %v\n%s", err, msg)
	}
}

// TestServeGrowsOnSIGHUP: the disk file grows under urbd serve; SIGHUP makes
// the export serve the new size (nbdinfo on a new connection sees it), the
// new end takes writes that read back, and a SIGHUP with nothing grown
// changes nothing and does not stop the server.
func TestServeGrowsOnSIGHUP(t *testing.T) {
	requireCmds(t, "nbdinfo", "fio")
	f := newServe(t, 32<<20)
	size := func() string {
		return strings.TrimSpace(runCmd(t, 30*time.Second, "nbdinfo", "--size", nbdURI(f.sock)))
	}
	must(t, os.Truncate(f.disk, 48<<20))
	if got := size(); got != strconv.Itoa(32<<20) {
		t.Fatalf("before SIGHUP the export is %s bytes, want the size at start", got)
	}
	f.d.signal(syscall.SIGHUP)
	deadline := time.Now().Add(10 * time.Second)
	for size() != strconv.Itoa(48<<20) {
		if time.Now().After(deadline) {
			t.Fatalf("after SIGHUP the export is %s bytes, want %d\n%s", size(), 48<<20, f.d.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	runFio(t, nbdURI(f.sock), "--rw=write", "--bs=64k", "--offset=40M", "--size=8M", "--verify=crc32c", "--do_verify=1")
	f.d.signal(syscall.SIGHUP)
	time.Sleep(200 * time.Millisecond)
	if f.d.exited() || size() != strconv.Itoa(48<<20) {
		t.Fatalf("a second SIGHUP stopped the server or changed its size:\n%s", f.d.output())
	}
	if out := f.d.output(); !strings.Contains(out, "grew the export from 33554432 to 50331648 bytes") ||
		!strings.Contains(out, "the disk is still 50331648 bytes") {
		t.Errorf("the log does not say what each SIGHUP did:\n%s", out)
	}
}

func TestServeQemuIO(t *testing.T) {
	requireCmds(t, "qemu-io")
	f := newServe(t, 64<<20)
	uri := nbdURI(f.sock)
	runCmd(t, 60*time.Second, "qemu-io", "-f", "raw",
		"-c", "write -P 0x5a 0 4M",
		"-c", "write -P 0xc3 -f 1M 64k", // FUA
		"-c", "flush",
		"-c", "write -z -u 8M 1M",
		"-c", "discard 16M 1M",
		uri)
	runCmd(t, 60*time.Second, "qemu-io", "-f", "raw",
		"-c", "read -P 0x5a 0 1M",
		"-c", "read -P 0xc3 1M 64k",
		"-c", "read -P 0x5a 1088k 2944k",
		"-c", "read -P 0 8M 1M",
		uri)
	// The verification is real: a read over the FUA write's range with
	// the first pattern fails.
	out, err := tryCmd(60*time.Second, "qemu-io", "-f", "raw", "-c", "read -P 0x5a 0 4M", uri)
	if err == nil || !strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("qemu-io did not notice a wrong pattern: %v\n%s", err, out)
	}
	f.d.stop(10 * time.Second)
	// After a clean stop the disk file holds what was written.
	data, err := os.ReadFile(f.disk)
	if err != nil {
		t.Fatal(err)
	}
	if data[0] != 0x5a || data[1<<20] != 0xc3 || data[(4<<20)-1] != 0x5a || data[8<<20] != 0 {
		t.Fatal("disk file does not hold the written pattern")
	}
}

func TestServeNbdcopyRoundTrip(t *testing.T) {
	requireCmds(t, "nbdcopy")
	f := newServe(t, 64<<20)
	src := filepath.Join(f.dir, "src.bin")
	dst := filepath.Join(f.dir, "dst.bin")
	makeRandomFile(t, src, 64<<20)
	runCmd(t, 120*time.Second, "nbdcopy", "--flush", src, nbdURI(f.sock))
	runCmd(t, 120*time.Second, "nbdcopy", nbdURI(f.sock), dst)
	cmpFiles(t, src, dst)
	cmpFiles(t, src, f.disk)
}

func TestServeFioVerify(t *testing.T) {
	requireCmds(t, "fio")
	f := newServe(t, 128<<20)
	out := runCmd(t, 180*time.Second, "fio", "--name=verify", "--ioengine=nbd", "--uri="+nbdURI(f.sock),
		"--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=64M", "--verify=crc32c",
		"--verify_fatal=1", "--do_verify=1", "--output-format=terse")
	if strings.Contains(out, "verify:") && strings.Contains(out, "bad") {
		t.Fatalf("fio verify failed:\n%s", out)
	}
	// Mixed sizes with FUA-free flushes every 64 writes.
	runCmd(t, 180*time.Second, "fio", "--name=mixed", "--ioengine=nbd", "--uri="+nbdURI(f.sock),
		"--rw=randrw", "--bsrange=512-256k", "--iodepth=16", "--size=32M", "--fsync=64",
		"--verify=crc32c", "--verify_fatal=1", "--output-format=terse")
}

// dialExport connects the project's Go client to the default export.
func dialExport(t *testing.T, sock string) *nbd.ClientConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := nbd.Dial(ctx, "unix:"+sock)
	if err != nil {
		t.Fatal(err)
	}
	info, err := nbd.Negotiate(ctx, conn, "")
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	c := nbd.NewClientConn(conn, info)
	t.Cleanup(func() { c.Close() })
	return c
}

func TestServeBadRequestKeepsConnection(t *testing.T) {
	f := newServe(t, 1<<20)
	c := dialExport(t, f.sock)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	buf := make([]byte, 4096)
	for _, tc := range []struct {
		name  string
		do    func() error
		errno uint32
	}{
		{"read past the end", func() error { return c.Read(ctx, buf, (1<<20)-512) }, nbd.ErrnoInval},
		{"write past the end", func() error { return c.Write(ctx, buf, 1<<20, false) }, nbd.ErrnoInval},
		{"read larger than the maximum block", func() error {
			return c.Do(ctx, nbd.CmdRead, 0, 0, nbd.MaxBlockSize+1, nil, nil)
		}, nbd.ErrnoInval},
		{"unknown command", func() error { return c.Do(ctx, 42, 0, 0, 0, nil, nil) }, nbd.ErrnoInval},
	} {
		err := tc.do()
		var re *nbd.RemoteError
		if !errors.As(err, &re) || re.Errno != tc.errno {
			t.Fatalf("%s: %v, want errno %d", tc.name, err, tc.errno)
		}
		// The same connection keeps working.
		if err := c.Write(ctx, []byte("still here"), 0, true); err != nil {
			t.Fatalf("write after %s: %v", tc.name, err)
		}
		if err := c.Read(ctx, buf[:10], 0); err != nil || string(buf[:10]) != "still here" {
			t.Fatalf("read after %s: %q %v", tc.name, buf[:10], err)
		}
	}
}

func TestServeExt4OverNbdfuse(t *testing.T) {
	requireRoot(t)
	requireCmds(t, "mkfs.ext4", "e2fsck", "mount", "umount")
	f := newServe(t, 256<<20)
	loop, _ := fuseLoop(t, f.sock, f.dir, 256<<20)
	runCmd(t, 120*time.Second, "mkfs.ext4", "-q", "-F", loop)
	mnt := filepath.Join(f.dir, "mnt")
	umount := mountExt4(t, loop, mnt)
	want := map[string][]byte{}
	for i := 0; i < 20; i++ {
		name := filepath.Join(mnt, "file"+strings.Repeat("x", i))
		data := []byte(strings.Repeat(name, 1000+i*500))
		if err := os.WriteFile(name, data, 0o644); err != nil {
			t.Fatal(err)
		}
		want[name] = data
	}
	runCmd(t, 60*time.Second, "sync")
	umount()
	runCmd(t, 120*time.Second, "e2fsck", "-fn", loop)
	// Mount again and read the files back through the whole stack.
	umount = mountExt4(t, loop, mnt, "-o", "ro")
	for name, data := range want {
		got, err := os.ReadFile(name)
		if err != nil || string(got) != string(data) {
			t.Fatalf("%s: read back %d bytes (%v), want %d", name, len(got), err, len(data))
		}
	}
	umount()
}

func TestServeReadOnly(t *testing.T) {
	requireCmds(t, "qemu-io", "nbdinfo")
	f := newServe(t, 16<<20, "--read-only")
	out := runCmd(t, 30*time.Second, "nbdinfo", "--json", nbdURI(f.sock))
	if !strings.Contains(out, `"is_read_only": true`) {
		t.Fatalf("nbdinfo does not report read-only:\n%s", out)
	}
	out, err := tryCmd(30*time.Second, "qemu-io", "-f", "raw", "-c", "write -P 1 0 4k", nbdURI(f.sock))
	if err == nil && !strings.Contains(out, "failed") && !strings.Contains(out, "read-only") {
		t.Fatalf("write to a read-only export succeeded:\n%s", out)
	}
	c := dialExport(t, f.sock)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var re *nbd.RemoteError
	if err := c.Write(ctx, []byte{1}, 0, false); !errors.As(err, &re) || re.Errno != nbd.ErrnoPerm {
		t.Fatalf("write: %v, want EPERM", err)
	}
	if err := c.Read(ctx, make([]byte, 4096), 0); err != nil {
		t.Fatalf("read: %v", err)
	}
	if fi, err := os.Stat(f.disk); err != nil || fi.Size() != 16<<20 {
		t.Fatalf("disk changed: %v", err)
	}
}

func TestServeSIGTERMFinishesAndExitsZero(t *testing.T) {
	f := newServe(t, 32<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := nbd.Dial(ctx, "unix:"+f.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := nbd.Negotiate(ctx, conn, ""); err != nil {
		t.Fatal(err)
	}
	// Pipeline 512 writes of 64 KiB without waiting for replies, and send
	// SIGTERM once the first replies are back: many are in flight then.
	const n, bs = 512, 64 << 10
	block := func(i int) []byte { return bytes.Repeat([]byte{byte(i%251 + 1)}, bs) }
	go func() {
		for i := 0; i < n; i++ {
			req := make([]byte, 28, 28+bs)
			binary.BigEndian.PutUint32(req, nbd.MagicRequest)
			binary.BigEndian.PutUint16(req[6:], nbd.CmdWrite)
			binary.BigEndian.PutUint64(req[8:], uint64(i))
			binary.BigEndian.PutUint64(req[16:], uint64(i%(32<<20/bs))*bs)
			binary.BigEndian.PutUint32(req[24:], bs)
			if _, err := conn.Write(append(req, block(i)...)); err != nil {
				return // the server stopped reading and closed
			}
		}
	}()
	acked := map[int]bool{}
	rd := bufio.NewReader(conn)
	var hdr [16]byte
	for {
		if _, err := io.ReadFull(rd, hdr[:]); err != nil {
			break
		}
		if m := binary.BigEndian.Uint32(hdr[:]); m != nbd.MagicSimpleReply {
			t.Fatalf("reply magic %#x", m)
		}
		if e := binary.BigEndian.Uint32(hdr[4:]); e != 0 {
			t.Fatalf("write %d failed with errno %d", binary.BigEndian.Uint64(hdr[8:]), e)
		}
		acked[int(binary.BigEndian.Uint64(hdr[8:]))] = true
		if len(acked) == 8 {
			f.d.signal(syscall.SIGTERM)
		}
	}
	if code := f.d.wait(20 * time.Second); code != 0 {
		t.Fatalf("urbd serve exited %d after SIGTERM:\n%s", code, f.d.output())
	}
	if len(acked) < 8 {
		t.Fatalf("only %d writes acknowledged", len(acked))
	}
	t.Logf("%d of %d pipelined writes acknowledged before the exit", len(acked), n)
	if _, err := os.Stat(f.sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
	// Every acknowledged write is on the disk, unless a later write to the
	// same block was acknowledged too.
	data, err := os.ReadFile(f.disk)
	if err != nil {
		t.Fatal(err)
	}
	last := map[int]int{}
	for i := range acked {
		blk := i % (32 << 20 / bs)
		if j, ok := last[blk]; !ok || i > j {
			last[blk] = i
		}
	}
	for blk, i := range last {
		if got := data[blk*bs : (blk+1)*bs]; !bytes.Equal(got, block(i)) && !acked[i+32<<20/bs] {
			t.Fatalf("acknowledged write %d missing from block %d", i, blk)
		}
	}
}

func TestServeCommandLineErrors(t *testing.T) {
	f := newServe(t, 1<<20)
	other := filepath.Join(f.dir, "other.img")
	makeSparseFile(t, other, 1<<20)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"busy socket", []string{"serve", "--disk", other, "--listen", "unix:" + f.sock}, "busy"},
		{"missing disk", []string{"serve", "--disk", filepath.Join(f.dir, "nope.img"), "--listen", "unix:" + filepath.Join(f.dir, "x.sock")}, "does not exist"},
		{"bad address", []string{"serve", "--disk", other, "--listen", "udp:1.2.3.4:5"}, "--listen"},
		{"directory as disk", []string{"serve", "--disk", f.dir, "--listen", "unix:" + filepath.Join(f.dir, "y.sock")}, "is a directory"},
	} {
		out, err := tryCmd(20*time.Second, urbdBin, tc.args...)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() == 0 {
			t.Errorf("%s: exit %v, want a non-zero exit\n%s", tc.name, err, out)
			continue
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 1 || !strings.HasPrefix(lines[0], "urbd: ") || !strings.Contains(lines[0], tc.want) {
			t.Errorf("%s: output %q, want one line mentioning %q", tc.name, out, tc.want)
		}
	}
	// The busy socket's owner is unharmed.
	runCmd(t, 30*time.Second, "nbdinfo", "--size", nbdURI(f.sock))
}
