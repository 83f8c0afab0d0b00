package replica

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/urbd/urbd/bitmap"
)

// OutdateStopped is `urbd outdate` for a node whose daemon is not running,
// as DRBD's outdate works on a resource that is down: it marks the disk
// recorded in metaDir Outdated, so that the next start refuses promotion
// without --force until a resync brings the disk up to date. It takes the
// directory's lock (bitmap.LockDir), so it fails with bitmap.ErrLocked while a
// daemon uses metaDir. It is refused (ErrOutdateRefused) when the daemon
// stopped cleanly as Primary, because it would start as Primary again; a
// daemon that crashed while Primary comes back Secondary, and may be
// outdated: that is the fencing of a crashed Primary before its peer is
// promoted. It returns the disk state now recorded.
func OutdateStopped(name, metaDir string) (DiskState, error) {
	if _, err := os.Stat(filepath.Join(metaDir, bitmap.MetaFile)); err != nil {
		return DUnknown, fmt.Errorf("%s: no metadata to outdate in %s: %w", name, metaDir, err)
	}
	lock, err := bitmap.LockDir(metaDir)
	if err != nil {
		return DUnknown, fmt.Errorf("%s: %w", name, err)
	}
	defer lock.Unlock()
	var now DiskState
	err = bitmap.EditMeta(metaDir, func(m *bitmap.Meta) error {
		if m.Flags&flagPrimary != 0 && m.Flags&flagClean != 0 {
			return fmt.Errorf("%s: %w: this node was Primary when it stopped and starts as Primary", name, ErrOutdateRefused)
		}
		now = ParseDiskState(m.Disk)
		if now == UpToDate {
			now = Outdated
			m.Disk = now.String()
		}
		return nil
	})
	if err != nil {
		return DUnknown, err
	}
	return now, nil
}
