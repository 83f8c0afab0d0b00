package replica

import (
	"errors"
	"testing"

	"github.com/urbd/urbd/bitmap"
)

// TestOutdateStopped: `urbd outdate` with the daemon stopped. An UpToDate
// Secondary, and a Primary that crashed (it starts as Secondary), become
// Outdated; Outdated and Inconsistent disks stay as they are; a Primary that
// stopped cleanly (it starts as Primary) is refused and its metadata is
// left alone; a directory in use (its lock held) is refused.
func TestOutdateStopped(t *testing.T) {
	cases := []struct {
		name  string
		disk  string
		flags uint32
		want  DiskState
		err   error
	}{
		{"UpToDate Secondary", bitmap.DiskUpToDate, flagClean, Outdated, nil},
		{"crashed Secondary", bitmap.DiskUpToDate, 0, Outdated, nil},
		{"crashed Primary", bitmap.DiskUpToDate, flagPrimary, Outdated, nil},
		{"already Outdated", bitmap.DiskOutdated, flagClean, Outdated, nil},
		{"Inconsistent", bitmap.DiskInconsistent, 0, Inconsistent, nil},
		{"cleanly stopped Primary", bitmap.DiskUpToDate, flagPrimary | flagClean, DUnknown, ErrOutdateRefused},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s, err := bitmap.Open(dir, bitmap.Options{Size: 16 << 20})
			if err != nil {
				t.Fatal(err)
			}
			m := s.Meta()
			m.Disk, m.Flags = tc.disk, tc.flags
			if err := s.SaveMeta(m); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}

			got, err := OutdateStopped("r0", dir)
			if !errors.Is(err, tc.err) || got != tc.want {
				t.Fatalf("OutdateStopped = %v, %v; want %v, %v", got, err, tc.want, tc.err)
			}
			s, err = bitmap.Open(dir, bitmap.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			wantDisk := tc.want.String()
			if tc.err != nil {
				wantDisk = tc.disk
			}
			if d := s.Meta().Disk; d != wantDisk {
				t.Errorf("stored disk state %s, want %s", d, wantDisk)
			}
		})
	}

	t.Run("in use", func(t *testing.T) {
		dir := t.TempDir()
		s, err := bitmap.Open(dir, bitmap.Options{Size: 16 << 20})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		lock, err := bitmap.LockDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer lock.Unlock()
		if _, err := OutdateStopped("r0", dir); !errors.Is(err, bitmap.ErrLocked) {
			t.Errorf("OutdateStopped of a locked directory: %v; want ErrLocked", err)
		}
	})
}
