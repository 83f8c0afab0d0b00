package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ErrListen is wrapped by Serve's error when the address cannot be bound.
var ErrListen = errors.New("metrics: cannot listen")

// HTTP server limits: a scrape is small, so slow or idle clients are cut.
const (
	readHeaderTimeout = 5 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 60 * time.Second
	gatherTimeout     = 10 * time.Second
	maxInFlight       = 4
	shutdownGrace     = 2 * time.Second
)

// Serve binds addr (HOST:PORT, as --metrics-listen takes it) and serves
// reg's metrics at /metrics until ctx is cancelled. It returns nil after a
// cancellation and an error wrapping ErrListen when addr cannot be bound.
func Serve(ctx context.Context, addr string, reg prometheus.Gatherer) error {
	ln, err := Listen(ctx, addr)
	if err != nil {
		return err
	}
	return ServeListener(ctx, ln, reg)
}

// Listen binds addr (HOST:PORT) for ServeListener; its error wraps
// ErrListen.
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%w on %s: %w", ErrListen, addr, err)
	}
	return ln, nil
}

// ServeListener is Serve on a listener the caller bound (tests bind
// 127.0.0.1:0 and read the port from it). It closes ln before returning.
func ServeListener(ctx context.Context, ln net.Listener, reg prometheus.Gatherer) error {
	srv := &http.Server{
		Handler:           Handler(reg),
		ReadHeaderTimeout: readHeaderTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("metrics: serve on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	<-done // http.ErrServerClosed
	return nil
}

// Handler serves reg at /metrics and a short pointer to it at /.
func Handler(reg prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		MaxRequestsInFlight: maxInFlight,
		Timeout:             gatherTimeout,
	}))
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "urbd metrics: see /metrics")
	})
	return mux
}
