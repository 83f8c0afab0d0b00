package bitmap

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// DirLock is an exclusive lock on a metadata directory, held by one process:
// the daemon for its whole life, or an offline command (EditMeta's callers)
// while it changes the metadata. The kernel drops it when the process exits,
// however it exits, so a crash never leaves the directory locked.
type DirLock struct {
	f *os.File
}

// LockDir takes the lock of the existing directory dir (a non-blocking
// flock on dir/lock, created if missing), recording this process's id in the
// file. When another process holds it, the error wraps ErrLocked and names
// that process.
func LockDir(dir string) (*DirLock, error) {
	p := filepath.Join(dir, LockFile)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("bitmap: open %s: %w", p, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder := lockHolder(f)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is held by %s", ErrLocked, dir, holder)
		}
		return nil, fmt.Errorf("bitmap: lock %s: %w", p, err)
	}
	// The pid is for the message above only; a failure to record it costs
	// nothing else.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &DirLock{f: f}, nil
}

// lockHolder names the process recorded in an already locked file.
func lockHolder(f *os.File) string {
	buf := make([]byte, 16)
	n, _ := f.ReadAt(buf, 0)
	if pid, err := strconv.Atoi(strings.TrimSpace(string(buf[:n]))); err == nil && pid > 0 {
		return "process " + strconv.Itoa(pid)
	}
	return "another process"
}

// Unlock releases the lock. The lock file stays: removing it would let a
// process that opened it just before lock a file no longer in the directory.
func (l *DirLock) Unlock() error {
	return l.f.Close()
}

// EditMeta changes the stored metadata of dir without opening the Store:
// it reads DIR/meta, calls edit and, when edit returns nil, replaces the file
// atomically with what edit left, unless that is what it holds already. The
// caller holds dir's lock (LockDir), so no daemon uses the directory
// meanwhile. A missing or corrupt meta file is an error and nothing is
// written.
func EditMeta(dir string, edit func(*Meta) error) error {
	fsys := OSFS()
	p := filepath.Join(dir, MetaFile)
	data, err := fsys.ReadFile(p, maxMetaLen)
	if err != nil {
		return fmt.Errorf("bitmap: read %s: %w", p, err)
	}
	m, err := decodeMeta(data)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	geometry := [3]int64{m.Size, m.BitmapBlock, m.ExtentSize}
	if err := edit(&m); err != nil {
		return err
	}
	if [3]int64{m.Size, m.BitmapBlock, m.ExtentSize} != geometry {
		return fmt.Errorf("%w: EditMeta cannot change the geometry of %s", ErrInvalid, dir)
	}
	if err := validStates(m); err != nil {
		return err
	}
	out := encodeMeta(m)
	if bytes.Equal(out, data) {
		return nil // nothing changed: no rewrite, no fsync
	}
	if err := fsys.WriteFileAtomic(p, out); err != nil {
		return fmt.Errorf("bitmap: write %s: %w", p, err)
	}
	return nil
}
