package daemon

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/urbd/urbd/metrics"
)

// metricsServer serves a resource's Prometheus registry on the address in
// effect (--metrics-listen); urbd adjust moves it, turns it on or off.
// While it serves nowhere, the I/O path records nothing (on).
type metricsServer struct {
	reg *prometheus.Registry
	log *slog.Logger
	on  atomic.Bool // serving somewhere: the I/O observer records

	mu   sync.Mutex
	stop context.CancelFunc // ends the server in effect; nil when none
	done chan struct{}      // closed when it ended
}

// listen binds addr for use ("" = nowhere: nil, nil), so that a caller can
// refuse a change before anything else changes.
func (m *metricsServer) listen(ctx context.Context, addr string) (net.Listener, error) {
	if addr == "" {
		return nil, nil
	}
	return metrics.Listen(ctx, addr)
}

// use serves on ln from now on (nil: nowhere), after closing the server in
// effect: the new address is bound before the old one is closed. The
// server ends with ctx.
func (m *metricsServer) use(ctx context.Context, ln net.Listener) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closeLocked()
	if ln == nil {
		m.on.Store(false)
		return
	}
	sctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	m.stop, m.done = stop, done
	m.on.Store(true)
	go func() {
		defer close(done)
		if err := metrics.ServeListener(sctx, ln, m.reg); err != nil {
			m.log.Error("metrics server stopped", "err", err)
		}
	}()
}

// close ends the server in effect and waits for it.
func (m *metricsServer) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closeLocked()
	m.on.Store(false)
}

func (m *metricsServer) closeLocked() {
	if m.stop != nil {
		m.stop()
		<-m.done
		m.stop, m.done = nil, nil
	}
}
