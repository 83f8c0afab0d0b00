package replica

import (
	"time"

	"github.com/urbd/urbd/status"
)

// Status returns the facts behind the status file and `urbd status --json`.
func (n *Node) Status() status.Resource {
	al, bm := n.store().Counters()
	n.mu.Lock()
	st := n.st
	prog := n.progress
	var verify status.Sync
	if n.verify != nil {
		verify = *n.verify
	}
	var last *status.VerifyResult
	if n.lastVerify != nil {
		v := *n.lastVerify
		last = &v
	}
	susp := n.suspendedLocked()
	clients := n.holders
	var unacked int64
	var peerWait, timeout time.Duration
	userPause, peerPause := n.userPause.Load(), false
	uuids, peerUUIDs := n.uuids.String(), ""
	if n.sess != nil {
		unacked = n.sess.unacked.Load()
		peerPause = n.sess.peerPause.Load()
		peerWait, timeout = time.Duration(n.sess.peerWait.Load()), n.sess.ps.Timeout()
		if st.Conn.Connected() {
			peerUUIDs = n.peerUUIDs.String()
		}
	}
	n.mu.Unlock()
	r := status.Resource{
		Name:         n.cfg.Name,
		Protocol:     string(n.protocol()),
		ConnState:    pausedConnName(st.Conn, userPause || peerPause),
		Role:         st.Role.String(),
		PeerRole:     st.PeerRole.String(),
		DiskState:    st.Disk.String(),
		PeerDisk:     st.PeerDisk.String(),
		Suspended:    susp,
		SyncPaused:   userPause,
		PeerPaused:   peerPause,
		SplitBrain:   st.SplitBrain,
		Reason:       st.Reason,
		LastVerify:   last,
		UUIDs:        uuids,
		PeerUUIDs:    peerUUIDs,
		NetSendKiB:   n.stats.netSend.Load() >> 10,
		NetRecvKiB:   n.stats.netRecv.Load() >> 10,
		DiskWriteKiB: n.stats.diskWrite.Load() >> 10,
		DiskReadKiB:  n.stats.diskRead.Load() >> 10,
		ALWrites:     al,
		BMWrites:     bm,
		LocalPending: uint64(max(0, n.localPending())),
		PeerPending:  uint64(max(0, n.stats.peerPending.Load())),
		Unacked:      uint64(max(0, unacked)),
		AppPending:   uint64(max(0, n.stats.appPending.Load())),
		OutOfSyncKiB: uint64(n.store().Bitmap().DirtyBytes()) >> 10,
		NBDClients:   clients,
		SizeKiB:      uint64(n.backend().Size()) >> 10,
	}
	n.blocked(&r, n.localBlocked(time.Now()), peerWait, timeout, st)
	if prog != nil {
		snap := prog.Snapshot()
		r.Sync = &status.Sync{
			TotalKiB:     uint64(snap.Total) >> 10,
			RemainingKiB: uint64(snap.Remaining) >> 10,
			SpeedKiB:     uint64(snap.Speed) >> 10,
			AvgSpeedKiB:  uint64(snap.AvgSpeed) >> 10,
			WantKiB:      uint64(n.rate.Rate()) >> 10,
			ETA:          snap.ETA,
			Differing:    verify.Differing,
			Unreadable:   verify.Unreadable,
		}
		if st.Conn == VerifyS || st.Conn == VerifyT {
			r.Sync.VerifiedKiB = uint64(snap.Total-snap.Remaining) >> 10
		}
	}
	return r
}
