package protocol

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
)

// Session is an established peer connection: one transport (TCP or TLS)
// multiplexed by yamux into the control, data and resync streams.
//
// All methods are safe for concurrent use. The Session dies on Close, when
// the peer closes or stops answering keepalives, and on any error on any of
// its streams; Done is closed then and Err tells why.
type Session struct {
	conn    net.Conn // the transport below yamux (a *tls.Conn with TLS)
	ys      *yamux.Session
	peer    Hello
	streams [3]*Stream
	timeout time.Duration // Config.Timeout it was made with (DefaultTimeout for zero)

	mu  sync.Mutex
	err error // first reason the session died; guarded by mu

	watchDone chan struct{} // closed when the watch goroutine returns
}

// Peer returns the peer's Hello.
func (s *Session) Peer() Hello { return s.peer }

// Timeout returns the timeout the session was made with: yamux's keepalive
// and write timeouts use it for the session's whole life.
func (s *Session) Timeout() time.Duration { return s.timeout }

// Control returns the control stream (State, Ping, Refuse, SyncStart, Bitmap...).
func (s *Session) Control() *Stream { return s.streams[StreamControl] }

// Data returns the data stream (Write, Ack, Flush, FlushAck).
func (s *Session) Data() *Stream { return s.streams[StreamData] }

// Resync returns the resync stream (ResyncData, ResyncAck, Checksum*).
func (s *Session) Resync() *Stream { return s.streams[StreamResync] }

// RemoteAddr returns the peer's transport address.
func (s *Session) RemoteAddr() net.Addr { return s.conn.RemoteAddr() }

// RTT measures one transport round trip with a yamux ping (answered by the
// peer's yamux layer, not by the replication engine). It fails if no answer
// comes within half the timeout or the session dies.
func (s *Session) RTT() (time.Duration, error) {
	d, err := s.ys.Ping()
	if err != nil {
		return 0, fmt.Errorf("protocol: ping: %w", err)
	}
	return d, nil
}

// Done is closed when the session dies (either side, any stream error).
func (s *Session) Done() <-chan struct{} { return s.ys.CloseChan() }

// Err returns nil while the session is alive, then the first reason it
// died; it wraps ErrClosed after a local Close.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil && s.closed() {
		return ErrClosed
	}
	return s.err
}

// Close closes the session and its transport, and waits for the session's
// goroutines. Pending and later Send and Recv calls fail with ErrClosed.
func (s *Session) Close() error {
	if s.closed() {
		// yamux shut down by itself (the peer closed, a keepalive timed
		// out): watch records why; keep that rather than "locally".
		s.ys.Close()
	} else {
		s.fail(fmt.Errorf("%w locally", ErrClosed))
	}
	s.wait()
	return nil
}

// Goodbye tells the peer, best effort and waiting at most a second, that
// this side ends the session on purpose and why: a Refuse with code (one of
// the replication engine's, above 255) on the control stream. It returns
// once the peer closed the session in answer (so the peer saw the Refuse
// before the connection ended) or the second passed; the caller closes the
// session next.
func (s *Session) Goodbye(code uint32, reason string) {
	ctl := s.Control()
	if ctl == nil {
		return
	}
	sent := make(chan struct{})
	go func() {
		// Ends with the session at the latest: the caller closes it.
		defer close(sent)
		if ctl.Send(&Refuse{Code: code, Reason: reason}) == nil {
			ctl.Flush()
		}
	}()
	t := time.NewTimer(2 * refuseGrace)
	defer t.Stop()
	select {
	case <-sent:
	case <-t.C:
		return
	}
	// The peer closes the session when it reads the Refuse. Waiting for
	// that makes it see the Refuse before the end of the connection.
	select {
	case <-s.Done():
	case <-t.C:
	}
}

// LossReason says in a few words, for the status file, why a session whose
// transport ended died, from its Err.
func LossReason(err error) string {
	switch {
	case err == nil || errors.Is(err, yamux.ErrSessionShutdown) && !errors.Is(err, io.EOF):
		return "the connection closed"
	case errors.Is(err, yamux.ErrKeepAliveTimeout):
		return "no answer to keepalive pings within the timeout"
	case errors.Is(err, yamux.ErrConnectionWriteTimeout):
		return "a write to the peer timed out: it stopped reading"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "the peer closed the connection"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "the connection was reset"
	}
	return err.Error()
}

// wait waits for the session's goroutines (watch, stream flushers) after
// the yamux session was closed.
func (s *Session) wait() {
	if s.watchDone != nil {
		<-s.watchDone
	}
	for _, st := range s.streams {
		if st != nil {
			<-st.flusherDone
		}
	}
}

func (s *Session) closed() bool { return s.ys.IsClosed() }

// fail records err (if it is the first) and closes the yamux session, which
// closes the transport.
func (s *Session) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.mu.Unlock()
	s.ys.Close()
}

// refuseGrace bounds the Refuse sent to a peer that broke the protocol.
const refuseGrace = 500 * time.Millisecond

// refuse tells the peer, best effort and without waiting for other senders,
// why the session is about to be closed: a Refuse with RefuseProtocol on
// the control stream. The caller closes the session next.
func (s *Session) refuse(err error) {
	ctl := s.Control()
	if ctl == nil {
		return
	}
	ctl.trySendNow(&Refuse{Code: RefuseProtocol, Reason: "invalid frame received: " + err.Error()}, refuseGrace)
}

// watch owns no stream: it refuses streams the peer opens after the
// handshake and records why yamux shut down. Close waits for it.
func (s *Session) watch() {
	defer close(s.watchDone)
	for {
		st, err := s.ys.AcceptStream()
		if err != nil {
			s.mu.Lock()
			if s.err == nil {
				s.err = fmt.Errorf("%w: %w", ErrClosed, err)
			}
			s.mu.Unlock()
			return
		}
		st.Close()
		s.fail(fmt.Errorf("%w: peer opened an extra stream", ErrUnexpected))
	}
}
