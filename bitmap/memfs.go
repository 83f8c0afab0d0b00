package bitmap

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// ErrCrashed is returned by every MemFS operation at and after its simulated
// crash.
var ErrCrashed = errors.New("bitmap: simulated crash")

// MemFS is an in-memory FS for tests, in this package and in the packages
// that use a Store. It counts every durable (mutating) operation and can
// simulate a power loss: after CrashAfter(k), operation k+1 and everything
// after it fail with ErrCrashed, and Reboot returns the state a machine would
// find after the crash. Optionally the crashing write still takes effect
// (its rename reached the disk but the caller never learned it), or it
// leaves a torn temp file behind. Safe for concurrent use.
type MemFS struct {
	mu         sync.Mutex
	files      map[string][]byte
	dirs       map[string]bool
	log        []string // one line per durable operation performed
	crashAfter int      // crash when the operation count reaches it; -1 never
	crashed    bool
	apply      bool // the crashing operation takes effect
	torn       bool // the crashing write leaves a torn temp file
	failAt     int  // inject failErr at this operation (1-based), 0 never
	failErr    error
	failApply  bool
}

// NewMemFS returns an empty MemFS that never crashes.
func NewMemFS() *MemFS {
	return &MemFS{files: map[string][]byte{}, dirs: map[string]bool{}, crashAfter: -1}
}

// CrashOptions choose what the crashing operation leaves behind.
type CrashOptions struct {
	// Apply makes the crashing operation take effect durably although it
	// reports ErrCrashed (the crash hit after the rename reached the disk).
	Apply bool
	// TornTemp makes a crashing write leave a temp file with half its data,
	// as a crash between writing and renaming the temp file would.
	TornTemp bool
}

// CrashAfter arms a crash: the first k durable operations (counted from the
// creation of the MemFS) succeed, operation k+1 crashes.
func (m *MemFS) CrashAfter(k int, o CrashOptions) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.crashAfter, m.apply, m.torn = k, o.Apply, o.TornTemp
}

// FailAt makes durable operation k (1-based) fail with err, without a crash;
// with apply the operation still takes effect (outcome unknown to the caller).
func (m *MemFS) FailAt(k int, err error, apply bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.failAt, m.failErr, m.failApply = k, err, apply
}

// Ops is the number of durable operations attempted so far (successful,
// failed or crashing).
func (m *MemFS) Ops() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.log)
}

// Log lists the durable operations attempted, in order.
func (m *MemFS) Log() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.log)
}

// Crashed reports whether the simulated crash happened.
func (m *MemFS) Crashed() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.crashed
}

// Reboot returns a new MemFS with the durable state of m (what survives the
// crash), with no crash armed and an empty log.
func (m *MemFS) Reboot() *MemFS {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := NewMemFS()
	for k, v := range m.files {
		n.files[k] = slices.Clone(v)
	}
	n.dirs = maps.Clone(m.dirs)
	return n
}

// File returns a copy of a file's content.
func (m *MemFS) File(path string) ([]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.files[filepath.Clean(path)]
	return slices.Clone(d), ok
}

// SetFile replaces a file's content directly (to plant corrupt files); a nil
// data removes the file. Not counted as an operation.
func (m *MemFS) SetFile(path string, data []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if data == nil {
		delete(m.files, filepath.Clean(path))
		return
	}
	m.files[filepath.Clean(path)] = slices.Clone(data)
}

// begin counts one durable operation and decides its fate: run it and
// return nil, or return an error, in which case do reports whether the
// operation still takes effect.
func (m *MemFS) beginLocked(what string) (do bool, torn bool, err error) {
	if m.crashed {
		return false, false, ErrCrashed
	}
	m.log = append(m.log, what)
	n := len(m.log)
	if m.crashAfter >= 0 && n > m.crashAfter {
		m.crashed = true
		return m.apply, m.torn, ErrCrashed
	}
	if n == m.failAt {
		return m.failApply, false, m.failErr
	}
	return true, false, nil
}

// WriteFileAtomic implements FS.
func (m *MemFS) WriteFileAtomic(path string, data []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	path = filepath.Clean(path)
	do, torn, err := m.beginLocked("write " + filepath.Base(path))
	if torn {
		m.files[filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+"4711")] = slices.Clone(data[:len(data)/2])
	}
	if do {
		if !m.dirs[filepath.Dir(path)] {
			if err == nil {
				return fmt.Errorf("write %s: %w", path, fs.ErrNotExist)
			}
			return err
		}
		m.files[path] = slices.Clone(data)
	}
	return err
}

// ReadFile implements FS.
func (m *MemFS) ReadFile(path string, limit int64) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.crashed {
		return nil, ErrCrashed
	}
	d, ok := m.files[filepath.Clean(path)]
	if !ok {
		return nil, fmt.Errorf("read %s: %w", path, fs.ErrNotExist)
	}
	if int64(len(d)) > limit {
		return nil, fmt.Errorf("%w: %s is %d bytes, at most %d expected", ErrCorrupt, path, len(d), limit)
	}
	return slices.Clone(d), nil
}

// MkdirAll implements FS.
func (m *MemFS) MkdirAll(dir string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	dir = filepath.Clean(dir)
	if m.dirs[dir] {
		return nil
	}
	do, _, err := m.beginLocked("mkdir " + dir)
	if do {
		for d := dir; !m.dirs[d]; d = filepath.Dir(d) {
			m.dirs[d] = true
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return err
}

// ReadDir implements FS.
func (m *MemFS) ReadDir(dir string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.crashed {
		return nil, ErrCrashed
	}
	dir = filepath.Clean(dir)
	if !m.dirs[dir] {
		return nil, fmt.Errorf("readdir %s: %w", dir, fs.ErrNotExist)
	}
	var names []string
	for p := range m.files {
		if filepath.Dir(p) == dir {
			names = append(names, filepath.Base(p))
		}
	}
	slices.Sort(names)
	return names, nil
}

// Remove implements FS.
func (m *MemFS) Remove(path string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	path = filepath.Clean(path)
	if _, ok := m.files[path]; !ok {
		return fmt.Errorf("remove %s: %w", path, fs.ErrNotExist)
	}
	do, _, err := m.beginLocked("remove " + filepath.Base(path))
	if do {
		delete(m.files, path)
	}
	return err
}

// String lists the files and their sizes, for test failure messages.
func (m *MemFS) String() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(m.files)) {
		fmt.Fprintf(&b, "%s(%d) ", k, len(m.files[k]))
	}
	return b.String()
}
