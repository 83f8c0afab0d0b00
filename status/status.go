// Package status describes the state of one resource as the daemon reports it:
// the facts behind RUN/NAME/status (the /proc/drbd-like text), `urbd status
// --json` and `urbd status --watch`. It does no I/O.
package status

import "time"

// Resource is a snapshot of one resource. Field names and JSON names are stable:
// scripts depend on them.
type Resource struct {
	Minor    int    `json:"minor"`
	Name     string `json:"name"`
	Protocol string `json:"protocol"` // "A", "B" or "C"

	ConnState  string `json:"cstate"`      // StandAlone, WFConnection, Connected, SyncSource, SyncTarget, PausedSyncS, PausedSyncT, VerifyS, VerifyT, Ahead, Behind
	Role       string `json:"role"`        // Primary, Secondary
	PeerRole   string `json:"peer_role"`   // Primary, Secondary, Unknown
	DiskState  string `json:"dstate"`      // UpToDate, Inconsistent, Outdated, DUnknown, Diskless
	PeerDisk   string `json:"peer_dstate"` // same values
	Suspended  bool   `json:"suspended"`   // writes held (on-peer-loss suspend)
	SyncPaused bool   `json:"sync_paused"` // this node's operator paused resyncs (urbd pause-sync)
	PeerPaused bool   `json:"peer_paused"` // the peer's operator paused resyncs
	SplitBrain bool   `json:"split_brain"`
	Reason     string `json:"reason,omitempty"` // why the last state change happened, in words
	// Generation UUIDs as DRBD's get-gi prints them, in hex:
	// CURRENT:BITMAP:HISTORY1:HISTORY2; the peer's only while connected.
	UUIDs     string `json:"uuids,omitempty"`
	PeerUUIDs string `json:"peer_uuids,omitempty"`

	// Counters, in KiB except where noted.
	NetSendKiB   uint64 `json:"ns"`
	NetRecvKiB   uint64 `json:"nr"`
	DiskWriteKiB uint64 `json:"dw"`
	DiskReadKiB  uint64 `json:"dr"`
	ALWrites     uint64 `json:"al"` // activity-log metadata writes
	BMWrites     uint64 `json:"bm"` // bitmap metadata writes
	LocalPending uint64 `json:"lo"` // local I/O in flight
	PeerPending  uint64 `json:"pe"` // requests sent to the peer, not yet answered
	Unacked      uint64 `json:"ua"` // requests received from the peer, not yet answered
	AppPending   uint64 `json:"ap"` // application requests in flight
	OutOfSyncKiB uint64 `json:"oos"`

	// DiskBlockedSeconds and PeerBlockedSeconds say how long requests
	// have waited on the local disk, or at the peer, with none of them
	// completing, once that is 2 s or more (0 otherwise): a disk or a peer
	// that hangs. The status flags show them as b (the local disk), n (the
	// peer) or a (both), and Blocked says each in words.
	DiskBlockedSeconds int64    `json:"disk_blocked_seconds,omitempty"`
	PeerBlockedSeconds int64    `json:"peer_blocked_seconds,omitempty"`
	Blocked            []string `json:"blocked,omitempty"`

	NBDClients int    `json:"nbd_clients"`
	SizeKiB    uint64 `json:"size_kib"` // the disk's size (the export's), KiB

	Sync *Sync `json:"sync,omitempty"` // present while resyncing or verifying

	// LastVerify is what the last online verify this node ran found (kept
	// across restarts); nil when it never ran one.
	LastVerify *VerifyResult `json:"last_verify,omitempty"`
}

// VerifyResult is what one online verify found.
type VerifyResult struct {
	Ended      time.Time `json:"ended"`
	Complete   bool      `json:"complete"` // false: it stopped early (the reason said why)
	FromKiB    uint64    `json:"from_kib"` // the range it covered
	ToKiB      uint64    `json:"to_kib"`
	Differing  uint64    `json:"differing_blocks"`  // marked out of sync: the resync copies them
	Unreadable uint64    `json:"unreadable_blocks"` // on either disk
}

// Sync is the progress of a running resync or online verify.
type Sync struct {
	TotalKiB     uint64        `json:"total_kib"`     // out of sync when the resync started (plus any added since)
	RemainingKiB uint64        `json:"remaining_kib"` // still to copy
	SpeedKiB     uint64        `json:"speed_kib"`     // recent rate, KiB/s
	AvgSpeedKiB  uint64        `json:"avg_speed_kib"` // since the start, KiB/s
	WantKiB      uint64        `json:"want_kib"`      // configured rate, KiB/s
	ETA          time.Duration `json:"eta_ns"`
	VerifiedKiB  uint64        `json:"verified_kib,omitempty"`      // verify only
	Differing    uint64        `json:"differing_blocks,omitempty"`  // verify only
	Unreadable   uint64        `json:"unreadable_blocks,omitempty"` // verify only: blocks either disk could not read
}

// Percent is the part of the resync done, 0..100.
func (s *Sync) Percent() float64 {
	if s == nil || s.TotalKiB == 0 {
		return 100
	}
	done := s.TotalKiB - min(s.RemainingKiB, s.TotalKiB)
	return 100 * float64(done) / float64(s.TotalKiB)
}

// BlockedOn says what r's requests are blocked on: "disk" (the local disk),
// "peer", "both", or "no" when neither has been blocked for 2 s or more.
// The status flag and the events' blocked field are this, in a letter and
// in a word.
func (r *Resource) BlockedOn() string {
	switch disk, peer := r.DiskBlockedSeconds > 0, r.PeerBlockedSeconds > 0; {
	case disk && peer:
		return "both"
	case disk:
		return "disk"
	case peer:
		return "peer"
	}
	return "no"
}
