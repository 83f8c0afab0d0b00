package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// daemon is a background process started by startDaemon. Its stdout and
// stderr are captured and written to the test log if the test fails.
type daemon struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{} // closed when the process has exited
	err  error         // Wait's result; valid after done
}

// lockedBuffer is a bytes.Buffer safe for the process's pipes and readers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// startDaemon starts name with args in the background. At the end of the
// test the process gets SIGTERM, then SIGKILL after 10 s if it is still
// running, and its output goes to t.Log if the test failed.
func startDaemon(t *testing.T, name string, args ...string) *daemon {
	t.Helper()
	d := &daemon{t: t, name: name, out: &lockedBuffer{}, done: make(chan struct{})}
	d.cmd = exec.Command(name, args...)
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		d.stop(10 * time.Second)
		if t.Failed() {
			t.Logf("output of %s %s:\n%s", name, strings.Join(args, " "), d.out.String())
		}
	})
	return d
}

// output returns what the process printed so far.
func (d *daemon) output() string { return d.out.String() }

// exited reports whether the process has exited.
func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// signal sends sig to the process.
func (d *daemon) signal(sig os.Signal) {
	d.t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil && !d.exited() {
		d.t.Fatalf("signalling %s: %v", d.name, err)
	}
}

// wait waits up to timeout for the process to exit and returns its exit
// code (-1 if it was killed by a signal). It fails the test on timeout.
func (d *daemon) wait(timeout time.Duration) int {
	d.t.Helper()
	select {
	case <-d.done:
	case <-time.After(timeout):
		d.t.Fatalf("%s did not exit within %v", d.name, timeout)
	}
	return d.cmd.ProcessState.ExitCode()
}

// stop ends the process: SIGTERM, then SIGKILL after grace.
func (d *daemon) stop(grace time.Duration) {
	if d.exited() {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(grace):
		_ = d.cmd.Process.Kill()
		<-d.done
	}
}

// startServe runs `urbd serve --disk disk --listen unix:sock extra...` and
// waits until the socket accepts connections.
func startServe(t *testing.T, disk, sock string, extra ...string) *daemon {
	t.Helper()
	args := append([]string{"serve", "--disk", disk, "--listen", "unix:" + sock}, extra...)
	d := startDaemon(t, urbdBin, args...)
	waitForSocket(t, sock, d, 10*time.Second)
	return d
}

// waitForSocket polls until a unix socket at path accepts a connection.
// If d is not nil and its process exits first, the test fails at once with
// its output.
func waitForSocket(t *testing.T, path string, d *daemon, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			c.Close()
			return
		}
		if d != nil && d.exited() {
			t.Fatalf("%s exited before listening on %s: %v\n%s", d.name, path, d.err, d.output())
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %s after %v: %v", path, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// shortTempDir returns a new directory under /tmp, removed at the end of
// the test. Unix socket paths must stay under 108 bytes, which t.TempDir
// (named after the test) does not guarantee.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "urbd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// makeSparseFile creates path as a sparse file of size bytes.
func makeSparseFile(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

// makeRandomFile creates path with size random bytes.
func makeRandomFile(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		t.Fatal(err)
	}
}

// cmpFiles fails the test unless a and b have the same size and bytes; it
// names the first differing offset. It streams, so files may be large.
func cmpFiles(t *testing.T, a, b string) {
	t.Helper()
	fa, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	ra, rb := bufio.NewReaderSize(fa, 1<<20), bufio.NewReaderSize(fb, 1<<20)
	ba, bb := make([]byte, 64<<10), make([]byte, 64<<10)
	var off int64
	for {
		na, ea := io.ReadFull(ra, ba)
		nb, eb := io.ReadFull(rb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			i := 0
			for i < min(na, nb) && ba[i] == bb[i] {
				i++
			}
			t.Fatalf("%s and %s differ at byte %d", a, b, off+int64(i))
		}
		off += int64(na)
		endA := errors.Is(ea, io.EOF) || errors.Is(ea, io.ErrUnexpectedEOF)
		endB := errors.Is(eb, io.EOF) || errors.Is(eb, io.ErrUnexpectedEOF)
		if endA || endB {
			if !endA || !endB {
				t.Fatalf("%s and %s differ in length (one ends at %d)", a, b, off)
			}
			return
		}
		if ea != nil || eb != nil {
			t.Fatalf("reading: %v %v", ea, eb)
		}
	}
}

// runCmd runs a command with a timeout and returns its combined output,
// failing the test if it fails.
func runCmd(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := tryCmd(timeout, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// tryCmd runs a command with a timeout and returns its combined output and
// error, for commands expected to fail.
func tryCmd(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v: %w", timeout, err)
	}
	return string(out), err
}

// nbdURI is the libnbd URI of the default export on a unix socket.
func nbdURI(sock string) string { return "nbd+unix:///?socket=" + sock }
