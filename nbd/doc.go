// Package nbd is urbd's Network Block Device layer: the server that exports a
// Backend to NBD clients (nbd-client, the kernel via urbd attach, qemu,
// libnbd tools), the file backend, and the client side used to attach the
// kernel.
//
// # Server
//
// Negotiation is fixed newstyle: NBD_OPT_EXPORT_NAME, NBD_OPT_INFO,
// NBD_OPT_GO, NBD_OPT_LIST and NBD_OPT_ABORT are served; every other option
// (structured replies, TLS, meta contexts) is answered NBD_REP_ERR_UNSUP and
// negotiation goes on, so transmission uses simple replies. Option data is
// bounded by MaxOptionLen before allocation.
//
// Transmission serves READ, WRITE, FLUSH, TRIM, WRITE_ZEROES and DISC. Each
// connection has one reader goroutine, a pool of request workers (one per
// request in flight at most, kept until the connection ends), and one reply
// writer. The rules, in the order a request meets them:
//
//  1. The reader validates the header. A request out of range, with an
//     unknown command or flag, or with a READ/WRITE length above
//     MaxBlockSize is answered EINVAL without touching the backend and the
//     connection goes on (a refused WRITE's payload is read and dropped; one
//     above MaxDiscardLen closes the connection). Writes to a read-only
//     export get EPERM. Bad request magic closes the connection.
//  2. The reader reserves in-flight budget (Server.MaxInFlight requests and
//     Server.MaxInFlightBytes payload bytes); it stops reading while the
//     budget is exhausted, which pushes back on the client through TCP.
//  3. A write (WRITE, TRIM, WRITE_ZEROES) is registered, in arrival order,
//     against the writes still in flight: it waits for every earlier write
//     whose range overlaps its own, so overlapping writes reach the backend
//     in the order the client sent them. Reads do not wait.
//  4. The backend call runs. Only after it returned is the reply queued:
//     a reply never precedes the operation it acknowledges. A READ reply is
//     written as header and data together.
//  5. FLUSH calls Backend.Flush, which covers every write that completed
//     before it; every write whose reply was sent before the FLUSH arrived
//     had completed, so the FLUSH covers it. FUA is passed to the backend.
//  6. The writer releases the request's buffer and budget once its reply is
//     written.
//
// When a connection ends (DISC, client gone, Server.Shutdown or
// CloseClients) the requests already read are finished and answered, then
// the backend is flushed, then the socket is closed.
//
// # File backend
//
// File serves a regular file or a block device with pread/pwrite. Flush and
// FUA use fdatasync with group commit: concurrent callers share one sync. A
// failed fdatasync is sticky (see File).
package nbd
