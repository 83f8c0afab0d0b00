package nbd

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Errors of the server.
var (
	// ErrUnknownExport may be wrapped by Server.Lookup for a name it does
	// not serve; the client gets NBD_REP_ERR_UNKNOWN.
	ErrUnknownExport = errors.New("nbd: unknown export")
	// ErrNotServing is wrapped by the errors of Refuse.
	ErrNotServing = errors.New("nbd: export not serving clients now")
	// ErrBadClient is wrapped when a client breaks the protocol in a way
	// that closes its connection (bad magic, unknown client flags, an
	// absurd length).
	ErrBadClient = errors.New("nbd: client broke the protocol")
)

// Refuse returns the error Server.Lookup gives for an export that exists but
// does not serve clients now (a replica that is Secondary): the client gets
// NBD_REP_ERR_POLICY ("denied by server policy") with the text of err as the
// message. The result wraps ErrNotServing and err.
func Refuse(err error) error { return refused{err} }

type refused struct{ err error }

func (r refused) Error() string   { return r.err.Error() }
func (r refused) Unwrap() []error { return []error{ErrNotServing, r.err} }

// Export is one name a client can attach to.
type Export struct {
	// Name is reported in NBD_INFO_NAME; empty means the name the client
	// asked for.
	Name, Description string
	// Backend serves the requests. It must stay usable until every
	// connection that got this Export has ended.
	Backend  Backend
	ReadOnly bool
	// MultiConn advertises NBD_FLAG_CAN_MULTI_CONN. Set it only where a
	// FLUSH on one connection covers writes completed on all connections
	// (true of File, whose Flush is fdatasync of the whole file).
	MultiConn bool
	// Attach, if set, is called when a client selects the export with
	// NBD_OPT_GO or NBD_OPT_EXPORT_NAME, before the server answers (not for
	// NBD_OPT_INFO). An error refuses the export as Lookup's would (for
	// NBD_OPT_EXPORT_NAME, by closing the connection). Otherwise release,
	// which may be nil, is called once the client has detached: its
	// requests answered, the disconnect flush done, and Clients no longer
	// counting it. A replica promotes itself here (auto-promote).
	Attach func() (release func(), err error)
}

// Server serves NBD clients in the fixed newstyle protocol. Configure the
// fields before the first Serve and do not change them after. Serve,
// Shutdown, Clients and CloseClients may be called concurrently.
type Server struct {
	// Lookup resolves an export name during negotiation ("" is the default
	// export). A non-nil error refuses the export: its text is sent to the
	// client with NBD_REP_ERR_SHUTDOWN if it wraps ErrShutdown, with
	// NBD_REP_ERR_POLICY if it comes from Refuse, and with
	// NBD_REP_ERR_UNKNOWN ("the requested export is not available")
	// otherwise. qemu and this package's client show the text; libnbd
	// clients (nbdinfo, fio, nbdfuse) show it with LIBNBD_DEBUG=1 and
	// otherwise name only the kind of refusal. Returning a nil
	// Export and a nil error refuses the name as unknown. Called once per
	// NBD_OPT_INFO, NBD_OPT_GO or NBD_OPT_EXPORT_NAME, possibly
	// concurrently from many connections.
	Lookup func(name string) (*Export, error)
	// List names the exports for NBD_OPT_LIST; nil lists nothing.
	List func() []string
	// Logger gets connection events and I/O errors; nil means slog.Default().
	Logger *slog.Logger
	// MaxInFlight bounds the requests of one connection being served or
	// waiting for their reply to be sent; 0 means 64.
	MaxInFlight int
	// MaxInFlightBytes bounds the READ and WRITE payload bytes held for
	// one connection; 0 means 64 MiB. A single request larger than the
	// bound is served alone.
	MaxInFlightBytes int64
	// NegotiationTimeout bounds the handshake of one connection, so a
	// client that connects and says nothing does not hold it forever;
	// 0 means 30 s.
	NegotiationTimeout time.Duration

	mu        sync.Mutex
	listeners map[net.Listener]bool // true once CloseListener retired it
	conns     map[*srvConn]struct{}
	shutdown  bool
	connWG    sync.WaitGroup // one per conn in conns
	clients   atomic.Int64
	served    struct{ reads, writes, writeBytes atomic.Uint64 }
}

// Served counts the requests served since the server started, over all
// connections: READs, WRITEs and the bytes of those WRITEs. Safe to call
// concurrently with serving.
type Served struct{ Reads, Writes, WriteBytes uint64 }

// Served returns the server's request counts.
func (s *Server) Served() Served {
	return Served{s.served.reads.Load(), s.served.writes.Load(), s.served.writeBytes.Load()}
}

// ErrServerClosed is returned by Serve when the server was shut down before
// Serve was called.
var ErrServerClosed = errors.New("nbd: server closed")

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

func (s *Server) maxInFlight() int {
	if s.MaxInFlight > 0 {
		return s.MaxInFlight
	}
	return 64
}

func (s *Server) negotiationTimeout() time.Duration {
	if s.NegotiationTimeout > 0 {
		return s.NegotiationTimeout
	}
	return 30 * time.Second
}

func (s *Server) maxInFlightBytes() int64 {
	if s.MaxInFlightBytes > 0 {
		return s.MaxInFlightBytes
	}
	return 64 << 20
}

// Serve accepts connections on ln and serves each in its own goroutines
// until Shutdown or CloseListener(ln), which make Serve return nil, or until ctx is cancelled,
// which closes ln and every connection Serve accepted abruptly (no flush)
// and returns ctx.Err(). Serve closes ln before it returns. Several Serve
// calls on different listeners may share one Server.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	if s.listeners == nil {
		s.listeners = make(map[net.Listener]bool)
	}
	if s.listeners[ln] { // CloseListener came first
		delete(s.listeners, ln)
		s.mu.Unlock()
		return nil
	}
	s.listeners[ln] = false
	s.mu.Unlock()

	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()

	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			down := s.shutdown || s.listeners[ln]
			s.mu.Unlock()
			if down {
				return nil
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, errTemporaryAccept) || isTemporary(err) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.logger().Warn("nbd: accept", "err", err, "retry_in", delay)
				t := time.NewTimer(delay)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					return ctx.Err()
				}
				continue
			}
			return err
		}
		delay = 0
		c := newSrvConn(s, nc)
		s.mu.Lock()
		if s.shutdown {
			s.mu.Unlock()
			nc.Close()
			return nil
		}
		if s.conns == nil {
			s.conns = make(map[*srvConn]struct{})
		}
		s.conns[c] = struct{}{}
		s.connWG.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.connWG.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
			}()
			c.serve(ctx)
		}()
	}
}

var errTemporaryAccept = errors.New("nbd: temporary accept error")

// isTemporary reports accept errors worth retrying (EMFILE and friends).
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// Shutdown stops accepting, lets every connection finish the requests it
// has received (new ones are not read), sends their replies, flushes each
// connection's backend and closes the connection. If ctx ends first, the
// remaining connections are closed abruptly, their backend calls see a
// cancelled context, and ctx.Err() is returned at once (the connections'
// goroutines end when their backend calls return).
// Serve returns nil once its listener is closed.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutdown = true
	for ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()
	return s.closeConns(ctx, &s.connWG)
}

// CloseListener stops accepting on ln, which a Serve call serves: that
// Serve returns nil, and the connections it accepted go on until their
// clients leave (Shutdown or CloseClients end them). For moving a server to
// another address: Serve the new listener first, then close the old one.
func (s *Server) CloseListener(ln net.Listener) {
	s.mu.Lock()
	if s.listeners == nil {
		s.listeners = make(map[net.Listener]bool)
	}
	s.listeners[ln] = true // also when its Serve has not started yet
	s.mu.Unlock()
	ln.Close()
}

// CloseClients disconnects every current client as Shutdown does (finish
// in-flight requests, flush, close) but keeps listening; clients may
// connect again right away.
func (s *Server) CloseClients(ctx context.Context) error {
	return s.closeConns(ctx, nil)
}

func (s *Server) closeConns(ctx context.Context, all *sync.WaitGroup) error {
	s.mu.Lock()
	conns := make([]*srvConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
		c.stop()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		if all != nil {
			all.Wait()
		} else {
			for _, c := range conns {
				<-c.done
			}
		}
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		for _, c := range conns {
			c.kill()
		}
		if all != nil {
			s.mu.Lock()
			for c := range s.conns {
				c.kill()
			}
			s.mu.Unlock()
		}
		// Backend calls got a cancelled context; a backend that ignores
		// it may still be running, so do not wait for it.
		return ctx.Err()
	}
}

// Clients returns the number of connections in the transmission phase.
func (s *Server) Clients() int { return int(s.clients.Load()) }
