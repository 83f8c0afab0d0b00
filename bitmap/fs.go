package bitmap

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/google/renameio/v2"
)

// FS is every file operation the Store performs on its metadata directory.
// Tests substitute MemFS to crash after any durable operation.
//
// Contract: implementations are safe for concurrent use. WriteFileAtomic is
// durable on return: after a crash at any instant the file holds either its
// previous content or data, never a mix, and once it returned nil the new
// content survives a crash. A failed WriteFileAtomic leaves the file old or
// new (unknown which). ReadFile returns an error wrapping fs.ErrNotExist for a
// missing file and refuses files larger than limit bytes (the decoders know
// the size to expect, so nothing unbounded is ever allocated).
type FS interface {
	WriteFileAtomic(path string, data []byte) error
	ReadFile(path string, limit int64) ([]byte, error)
	// MkdirAll creates dir and its parents and makes their entries durable.
	MkdirAll(dir string) error
	// ReadDir lists the names in dir (no paths), for removing stale temp files.
	ReadDir(dir string) ([]string, error)
	// Remove deletes a file; durability of the removal is not required.
	Remove(path string) error
}

// OSFS returns the real file system: WriteFileAtomic writes a temp file in the
// same directory, fsyncs it and renames it over path (renameio), then fsyncs
// the directory, which renameio does not do.
func OSFS() FS { return osFS{} }

type osFS struct{}

func (osFS) WriteFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	// WithTempDir keeps the temp file next to path: without it renameio probes
	// os.TempDir() on every call and may place the temp file there.
	if err := renameio.WriteFile(path, data, 0o600, renameio.WithTempDir(dir)); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}

func (osFS) ReadFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() > limit {
		return nil, fmt.Errorf("%w: %s is %d bytes, at most %d expected", ErrCorrupt, path, st.Size(), limit)
	}
	// Read at most limit+1 bytes so a file growing under us is still bounded.
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrCorrupt, path, limit)
	}
	return data, nil
}

func (osFS) MkdirAll(dir string) error {
	dir = filepath.Clean(dir)
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		}
		missing = append(missing, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	// Make each new entry durable in its parent.
	for _, d := range missing {
		if err := syncDir(filepath.Dir(d)); err != nil {
			return err
		}
	}
	return nil
}

func (osFS) ReadDir(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, nil
}

func (osFS) Remove(path string) error { return os.Remove(path) }
