package aiosync

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func newSyncer(t *testing.T) *Syncer {
	t.Helper()
	s, err := New()
	if err != nil {
		t.Fatalf("New: %v (the tests need Linux AIO)", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestFdatasync syncs a written file from several goroutines at once.
func TestFdatasync(t *testing.T) {
	s := newSyncer(t)
	f, err := os.Create(filepath.Join(t.TempDir(), "disk"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := f.WriteAt(make([]byte, 4096), int64(i)*4096); err != nil {
				errs <- err
				return
			}
			errs <- s.Fdatasync(int(f.Fd()))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestFdatasyncRefusals checks the errors that tell a caller to fall back:
// a descriptor the kernel cannot sync this way, and a closed Syncer.
func TestFdatasyncRefusals(t *testing.T) {
	s := newSyncer(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if err := s.Fdatasync(int(w.Fd())); err == nil {
		t.Fatal("Fdatasync of a pipe succeeded")
	}
	if err := s.Fdatasync(-1); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("Fdatasync(-1) = %v, want ErrUnsupported", err)
	}
	// The context is still usable after the refusals.
	f, err := os.Create(filepath.Join(t.TempDir(), "disk"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := s.Fdatasync(int(f.Fd())); err != nil {
		t.Fatalf("Fdatasync after refusals: %v", err)
	}
	s.Close()
	if err := s.Fdatasync(int(f.Fd())); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("Fdatasync after Close = %v, want ErrUnsupported", err)
	}
}
