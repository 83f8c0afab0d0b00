package bitmap

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestLockDirIsExclusive: while one holder has a directory's lock, a second
// LockDir fails with ErrLocked naming the holder's pid; after Unlock it
// succeeds. (flock locks of two opens conflict within one process too, so
// this stands for two processes.)
func TestLockDirIsExclusive(t *testing.T) {
	dir := t.TempDir()
	l, err := LockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = LockDir(dir)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "process "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second LockDir: %v; want ErrLocked naming process %d", err, os.Getpid())
	}
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	l2, err := LockDir(dir)
	if err != nil {
		t.Fatalf("LockDir after Unlock: %v", err)
	}
	l2.Unlock()
	if _, err := LockDir(filepath.Join(dir, "missing")); err == nil || errors.Is(err, ErrLocked) {
		t.Fatalf("LockDir of a missing directory: %v; want an open error", err)
	}
}

// TestEditMeta: EditMeta changes what the next Open reads; an edit error, a
// geometry change or a bad state string writes nothing; a corrupt meta file
// is an error.
func TestEditMeta(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{Size: 64 * tMiB})
	if err != nil {
		t.Fatal(err)
	}
	m := s.Meta()
	m.Disk = DiskUpToDate
	if err := s.SaveMeta(m); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	meta := filepath.Join(dir, MetaFile)
	before, _ := os.ReadFile(meta)

	refused := []func(*Meta) error{
		func(m *Meta) error { m.Disk = DiskOutdated; return errors.New("no") },
		func(m *Meta) error { m.Size *= 2; return nil },
		func(m *Meta) error { m.Disk = strings.Repeat("x", 40); return nil },
	}
	for i, edit := range refused {
		if err := EditMeta(dir, edit); err == nil {
			t.Errorf("edit %d: nil error", i)
		}
		if after, _ := os.ReadFile(meta); string(after) != string(before) {
			t.Errorf("edit %d changed the meta file", i)
		}
	}

	if err := EditMeta(dir, func(m *Meta) error { m.Disk = DiskOutdated; return nil }); err != nil {
		t.Fatal(err)
	}
	// An edit that changes nothing does not rewrite the file.
	st1, _ := os.Stat(meta)
	time.Sleep(10 * time.Millisecond)
	if err := EditMeta(dir, func(m *Meta) error { m.Disk = DiskOutdated; return nil }); err != nil {
		t.Fatal(err)
	}
	if st2, _ := os.Stat(meta); !os.SameFile(st1, st2) {
		t.Error("an edit that changed nothing replaced the meta file")
	}
	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Meta(); got.Disk != DiskOutdated || got.NodeID != m.NodeID || got.Size != m.Size {
		t.Errorf("after EditMeta: %+v; want %+v with Disk Outdated", got, m)
	}
	s.Close()

	data, _ := os.ReadFile(meta)
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(meta, data, 0o600); err != nil {
		t.Fatal(err)
	}
	err = EditMeta(dir, func(*Meta) error { t.Error("edit called on a corrupt meta"); return nil })
	if !errors.Is(err, ErrCorrupt) {
		t.Errorf("EditMeta of a corrupt meta: %v; want ErrCorrupt", err)
	}
}
