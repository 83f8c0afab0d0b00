package testnet

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Tap sees each piece of data a Proxy forwards: conn counts the proxy's
// connections from 0 in the order they were accepted, forward is true for
// bytes from the dialing side to the target. p is valid only during the
// call. Calls for one direction of a connection come in order, those of
// different directions and connections concurrently.
type Tap func(conn int, forward bool, p []byte)

// Proxy forwards each TCP connection made to Addr to a target address, as a
// link between two nodes that tests can break:
//
//   - Cut drops every byte both ways, CutForward and CutBack one way only
//     (from the dialing side to the target, or back), while the connections
//     stay open: no FIN, no RST, as when a cable is pulled, so only a
//     timeout notices.
//   - Reset closes every connection through the proxy (both sides see the
//     end at once, as when a host reboots); new ones are forwarded.
//   - A connection the target refuses is reset, as the target's host would
//     have done had it been dialed directly.
//   - Delay holds every byte that long in each direction, as a long link
//     does (a one-way latency, not a bandwidth limit); set it before the
//     connections it should apply to are made.
type Proxy struct {
	Cut, CutForward, CutBack atomic.Bool
	Delay                    atomic.Int64 // nanoseconds

	ln     net.Listener
	target string
	tap    Tap
	wg     sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	n      int // connections accepted and forwarded
	closed bool
}

// StartProxy listens on a loopback port and forwards to target; tap, if not
// nil, sees what passes. Close stops it.
func StartProxy(target string, tap Tap) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, tap: tap, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr is the address to dial instead of the target.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		d, err := net.Dial("tcp", p.target)
		if err != nil {
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
			continue
		}
		idx, ok := p.track(c, d)
		if !ok {
			return
		}
		p.wg.Add(2)
		go p.pipe(c, d, idx, true, &p.CutForward)
		go p.pipe(d, c, idx, false, &p.CutBack)
	}
}

// track remembers both ends of connection number idx for Reset and Close;
// false if the proxy is closing.
func (p *Proxy) track(c ...net.Conn) (idx int, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		for _, x := range c {
			x.Close()
		}
		return 0, false
	}
	for _, x := range c {
		p.conns[x] = struct{}{}
	}
	p.n++
	return p.n - 1, true
}

// pipe copies src to dst, dropping the bytes while the link or this
// direction (cutDir) is cut. When src ends, both ends are closed and
// forgotten.
func (p *Proxy) pipe(src, dst net.Conn, idx int, forward bool, cutDir *atomic.Bool) {
	defer p.wg.Done()
	defer p.forget(src, dst)
	write := dst.Write
	if d := time.Duration(p.Delay.Load()); d > 0 {
		var wait func()
		write, wait = delayed(dst, d)
		defer wait()
	}
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.Cut.Load() && !cutDir.Load() {
			if p.tap != nil {
				p.tap(idx, forward, buf[:n])
			}
			if _, werr := write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// delayed returns a write that hands a copy of p to a goroutine which
// writes it to dst d after the call, in order, and a wait that ends that
// goroutine once what was handed over is written.
func delayed(dst net.Conn, d time.Duration) (write func(p []byte) (int, error), wait func()) {
	type piece struct {
		due  time.Time
		data []byte
	}
	q := make(chan piece, 4096)
	done := make(chan struct{})
	var failed atomic.Bool
	go func() {
		defer close(done)
		for pc := range q {
			time.Sleep(time.Until(pc.due))
			if _, err := dst.Write(pc.data); err != nil {
				failed.Store(true)
			}
		}
	}()
	write = func(p []byte) (int, error) {
		if failed.Load() {
			return 0, net.ErrClosed
		}
		q <- piece{time.Now().Add(d), append([]byte(nil), p...)}
		return len(p), nil
	}
	return write, func() { close(q); <-done }
}

// forget closes c and drops it from the connections Reset and Close close.
func (p *Proxy) forget(c ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, x := range c {
		x.Close()
		delete(p.conns, x)
	}
}

// Reset closes every connection through the proxy; new connections are
// forwarded.
func (p *Proxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

// Close stops accepting, closes every connection and waits for the proxy's
// goroutines.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.ln.Close()
	p.wg.Wait()
}
