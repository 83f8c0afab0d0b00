// Package resync paces and measures the copying of out-of-sync regions: a
// token-bucket rate limiter that yields to application I/O, and a progress
// meter with recent speed, average speed and ETA. Both are pure: they do no
// I/O and read time only from an injected Clock, so tests drive time by hand
// (see resync/resynctest).
//
// # Rate control
//
// Limiter is a token bucket (golang.org/x/time/rate) filled at the effective
// rate, in bytes per second. Wait(ctx, n) returns once n bytes may be sent;
// requests larger than the bucket are paced in bucket-sized pieces. The
// bucket holds BurstWindow (100 ms) of the effective rate, at least MinBurst
// (256 KiB) and at most MaxBurst, and it starts empty: over any window of T
// seconds at most rate×T plus one bucket pass, so from 2.5 MiB/s up (where
// the bucket is 100 ms worth) any 10 s window measures within 1% of the
// setting, and a run from the start measures exact to one request (the
// tests measure 0.0% at 10, 50, 100 and 200 MiB/s). SetRate takes effect at
// once, including for callers blocked in Wait, which recompute their delay;
// 0 means unlimited.
//
// # Competing application I/O
//
// The driver reports every application read and write with NoteAppIO(n).
// The limiter keeps the application bytes of the last AppWindow (1 s, in
// 100 ms buckets) and derives the application rate app = bytes / the time
// those buckets cover. Before each piece Wait computes the effective rate:
//
//	app == 0:  effective = rate
//	app  > 0:  effective = max(min(minRate, rate), rate - app)
//
// So resync and application traffic together stay within the configured
// rate, the resync never drops below the floor (DefaultMinRate, 4 MiB/s,
// changeable with SetMinRate) and never exceeds the configured rate. When
// application I/O stops, its bytes age out of the window and the resync is
// back at full rate at most AppWindow + BurstWindow later. An unlimited rate
// (0) ignores application I/O. There is no controller state beyond the
// window: the effective rate is a function of the configured rate, the
// floor and the last second of application bytes, which keeps it
// predictable and easy to reason about in the status file ("want:").
//
// # Progress
//
// Progress counts the bytes to copy (Add grows the total when blocks go out
// of sync during the resync) and the bytes done. Snapshot reports the recent
// speed over SpeedWindow (3 s, like /proc/drbd's first speed figure), the
// average since the start, and ETA = Remaining / recent speed. When nothing
// was copied in the last SpeedWindow the speed is 0 and the ETA unknown:
// ETA is 0 and Stalled is set. When nothing remains, ETA is 0 and Stalled is
// false.
//
// # Concurrency
//
// Limiter and Progress are safe for concurrent use. Wait may block; every
// other method only takes a short internal lock and never blocks on I/O.
package resync
