// Package bitmap tracks which regions of a replicated disk may differ from
// the peer, and keeps that knowledge crash safe: the out-of-sync bitmap, the
// activity log (write-intent extents) and the resource's metadata, in files
// of one directory (--meta).
//
// # Model
//
// The out-of-sync Bitmap has one bit per block (--bitmap-block, default
// 4 KiB). A set bit means "may differ from the peer": set for a write the peer
// did not confirm, for every write while disconnected, for the union of both
// bitmaps at a resync; cleared as resync copies.
//
// The activity log (AL) splits the disk into extents (default 4 MiB) and
// holds at most ALExtents of them (default 1237) on disk. A write may start
// only when each extent it touches is in the on-disk AL ("hot"). Writes to hot
// extents cost no metadata I/O.
//
// # The invariant
//
// At every instant,
//
//	on-disk bitmap ∪ blocks of on-disk AL extents
//	    ⊇ blocks with a write in flight ∪ blocks set in the in-memory bitmap
//	    ⊇ blocks that may differ between the nodes.
//
// After a crash, Open loads the bitmap and marks every block of every AL
// extent dirty, so nothing that may differ is ever taken as clean.
//
// # Ordering rules
//
//  1. BeginWrite returns only after every extent of the range is in the AL on
//     disk (the AL file was fsynced, renamed and its directory fsynced). Only
//     then may the caller issue the local write or send it to the peer.
//  2. A write the peer did not confirm is marked with MarkOutOfSync before its
//     EndWrite. While the write is in flight its extent cannot leave the AL,
//     so the mark is covered; after EndWrite the extent may be evicted, and
//     eviction persists the bitmap first if the extent has bits that are not
//     on disk yet.
//  3. Eviction order: (a) a data sync (Options.SyncData) that began after
//     the victim's last write ended has succeeded: out of the log, a write
//     that a page cache still holds is recorded nowhere, and a power cut
//     would take it from one disk alone. EndWrite records the sync epoch it
//     saw; when no idle extent is covered, the write that needs the room
//     runs a sync without holding the store, and writes to hot extents go on.
//     (b) The victim's hot bit is cleared (no new write can start in it),
//     (c) its bits are compared with the last durable bitmap and the bitmap
//     is written if needed, (d) the AL is written without it. A failed sync
//     keeps the victims in the log and fails the calls waiting for room.
//  4. MarkInSync only clears memory; the on-disk bitmap keeps the bits until
//     the next bitmap write. A superset on disk is always safe.
//  5. Sweep drops idle extents (no write in flight, none begun or ended
//     since the previous Sweep) with one AL write; if one has bits not yet
//     on disk, the changed bitmap chunks are written first (rule 3 again).
//     Its SyncData runs before it takes the store, so writes go on meanwhile:
//     every write of an extent it drops ended before the previous Sweep, so
//     before that sync began.
//  6. Close runs SyncData, persists the bitmap, then writes an empty AL
//     marked clean.
//  7. Open, after an unclean shutdown, writes the bitmap (with the AL extents
//     marked) before it writes the AL without them; on creation it writes the
//     bitmap, the AL and last the meta file, which marks the directory
//     complete.
//  8. A failed metadata write leaves the file old or new (unknown which): the
//     Store then assumes the intersection is durable (bits in both bitmaps,
//     extents in both logs) and returns the error; the write that needed it
//     must not be issued.
//
// # Caller contract
//
//   - Every BeginWrite that returned nil is matched by exactly one EndWrite
//     of the same range; an extra EndWrite would release another write's
//     hold on the extent and break the invariant.
//   - MarkOutOfSync for a write comes before that write's EndWrite.
//   - Bits set outside a write window (MarkOutOfSync on an extent not in the
//     log, or Bitmap().Set/SetAll/MergeWords directly) are durable only after
//     the next PersistBitmap (Sweep and Close also persist MarkOutOfSync
//     marks made outside the log). Call PersistBitmap after a resync decision
//     that set bits.
//   - A metadata write error is returned to the call that needed it; the
//     Store stays usable and retries on the next call. What to do about a
//     failing metadata disk (detach, go Diskless) is the caller's decision.
//
// # Crash testing
//
// All file access goes through FS. MemFS is an in-memory FS that counts
// durable operations and can crash after any of them (optionally applying
// the crashing write, or leaving a torn temp file), or fail one with an
// injected error; Reboot gives the files a restarted machine would see. The
// package's crash loop replays a scripted workload crashing at every
// operation and checks the invariant against a model; other packages can
// use MemFS the same way.
//
// # Files
//
// Every file is written whole through FS.WriteFileAtomic (temp file, fsync,
// rename, fsync of the directory) and is framed as
//
//	magic [8]byte | version u32 | body | crc32c u32   (little endian)
//
//	meta   "URBDMETA": node id u64, size i64, bitmap block i64, extent size i64,
//	       uuid current, bitmap, history[0], history[1] u64, peer node id u64,
//	       reserved u64, flags u32, role (len u8 + bytes), disk (len u8 + bytes)
//	bitmap.I "URBDBMAP": size i64, block i64, nwords u64, chunk words u64,
//	       first u64, count u64, words [count]u64
//	       (chunk I holds words [I*chunk, I*chunk+count) of the bitmap; a
//	       chunk is 8192 words = 64 KiB = 2 GiB of disk at 4 KiB per bit)
//	al     "URBDALOG": flags u32 (1 = clean), seq u64, size i64, extent i64,
//	       count u32, extents [count]u64
//
// A file with a bad magic, version, length or checksum, a field out of range,
// or missing when the others exist, is corrupt: Open marks the whole disk
// dirty (a full resync), never clean, and reports it through Recovered. A
// lost meta file also loses the identity: Open makes a new NodeID with Disk
// "Inconsistent". (A first creation interrupted by a crash before meta was
// written is reported the same way on the next Open: harmless, the disk was
// Inconsistent anyway.) Every length is checked against what the geometry
// allows before anything is allocated; stale temp files of interrupted
// writes are removed by Open.
//
// # Costs
//
// A write to a hot extent: two CAS operations, ~45 ns (BenchmarkBeginEndHot).
// A newly hot extent: one AL file write (a few KiB: temp file, fsync, rename,
// directory fsync; 2-4 ms on this machine's virtio disk), shared by every
// BeginWrite waiting at that moment (32 writers to new extents: one AL write
// per ~15 extents, 0.5 ms per extent; BenchmarkBeginEndColdOSFSParallel). An eviction of an extent with bits not yet
// on disk first rewrites the bitmap chunks that changed (usually the one
// 64 KiB chunk holding the extent). A bitmap write only rewrites chunks that
// differ from what is on disk; each chunk file is atomic on its own, and any
// mix of old and new chunks after a crash is still a superset (every chunk
// held enough for the activity log of its time).
//
// # Concurrency
//
// Bitmap, Store and MemFS are safe for concurrent use. BeginWrite/EndWrite on
// hot extents take no lock (one CAS per extent). Metadata writes are
// serialised: one runner at a time (Store.busy), with Store.mu released during
// the I/O. Lock order: Store.mu before Bitmap.mu; Store.metaMu is independent.
package bitmap
