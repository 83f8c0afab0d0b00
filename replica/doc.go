// Package replica is urbd's replication engine: roles, connection and disk
// states, the write path of protocols A, B and C, generation UUIDs and split
// brain, and the resync that brings a peer back in step.
//
// A Node wraps the local disk (an nbd.Backend) and implements nbd.Backend
// itself, so the NBD server serves it like any disk. The decisions live in
// plain values that do no I/O (State, UUIDs, Decide); Node performs the
// sends, writes and fsyncs they ask for.
//
// Ordering rules, which every change here must keep:
//
//  1. Before a write reaches either disk, its activity-log extent is durable
//     on the primary's metadata (bitmap.Store.BeginWrite). The extent stays
//     referenced until the peer answered the write or the write was marked
//     out of sync, so after a crash of either node at any instant the
//     on-disk bitmap plus the activity log cover every block that may differ.
//     An extent leaves the log only after a flush of both disks that began
//     after its last write ended (syncData, the store's SyncData), so a power
//     cut of both machines together leaves nothing that differs unmarked.
//  2. Protocol C answers an NBD write only after the local write and the
//     peer's write completed; B after the local write and the peer's receipt;
//     A after the local write and the hand-over to the socket. A FLUSH, or a
//     write with FUA, is answered only after both sides ran fdatasync.
//  3. Writes are sent on the data stream in sequence order (seq is taken and
//     the frame sent under one lock) and the peer applies them in that order;
//     an application write holds the range lock of its blocks from before it
//     is sent until its local write completed, so overlapping writes in
//     flight together are sent and written locally in one order, and land in
//     that order on both disks.
//  4. A write the peer answered as done but that is not yet covered by a
//     peer flush stays in the transfer log; on peer loss it is marked out of
//     sync with the writes still in flight, and the bitmap is persisted
//     before the node goes on alone.
//  5. A resync copy holds a range lock from its local read until the target
//     acknowledged it; application writes take the same lock, so resync data
//     never overwrites a newer application write on the target.
//  6. Nothing is replicated to a peer until both sides exchanged states and
//     decided (Decide) that they share a history; a split brain copies nothing.
package replica
