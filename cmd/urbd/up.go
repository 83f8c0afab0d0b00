package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/urbd/urbd/config"
	"github.com/urbd/urbd/daemon"
	"github.com/urbd/urbd/internal/units"
	"github.com/urbd/urbd/replica"
)

var upCommand = &cli.Command{
	Name:      "up",
	Usage:     "run a replicated resource in the foreground",
	ArgsUsage: "NAME",
	Description: `Runs resource NAME until SIGTERM or 'urbd down NAME': serves the NBD export
(only while Primary), replicates every write to the peer, resyncs after outages,
and keeps RUN/NAME/status current. Metadata is created in --meta on first start.

Example, node A (node B swaps the addresses):
   urbd up --disk /dev/vdb --meta /var/lib/urbd/r0 --nbd unix:/run/urbd/r0.nbd \
           --listen-peer 10.0.0.1:7789 --peer 10.0.0.2:7789 --secret-file /etc/urbd/r0.secret r0`,
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "disk", Usage: "local disk: a block device or a file"},
		&cli.StringFlag{Name: "meta", Usage: "metadata directory (created on first start)"},
		&cli.StringFlag{Name: "nbd", Usage: "NBD export address: unix:SOCK or tcp:HOST:PORT"},
		&cli.StringFlag{Name: "listen-peer", Usage: "HOST:PORT to accept the peer on"},
		&cli.StringFlag{Name: "peer", Usage: "HOST:PORT of the peer"},
		&cli.StringFlag{Name: "protocol", Value: "C", Usage: "A (async), B (peer received) or C (peer wrote: no acknowledged write is lost)"},
		&cli.StringFlag{Name: "resync-rate", Value: "100MiB", Usage: "resync rate per second, e.g. 250KiB, 100MiB; 0 = unlimited"},
		&cli.StringFlag{Name: "secret-file", Usage: "file holding the shared secret both nodes must present"},
		&cli.StringFlag{Name: "tls-cert", Usage: "this node's TLS certificate (PEM)"},
		&cli.StringFlag{Name: "tls-key", Usage: "this node's TLS key (PEM)"},
		&cli.StringFlag{Name: "tls-ca", Usage: "CA that signed the peer's certificate (PEM)"},
		&cli.DurationFlag{Name: "timeout", Value: 6 * time.Second, Usage: "declare the peer lost after this long without an answer"},
		&cli.DurationFlag{Name: "disk-timeout", Usage: "detach the Primary's disk when it leaves a write, flush or read unanswered this long, and serve the request from the UpToDate peer (DRBD's disk-timeout); without the peer it waits for the disk; a Secondary whose disk leaves a request of its Primary unanswered this long leaves the Primary, Outdated, and connects again once the disk answers; 0 = off (default)"},
		&cli.IntFlag{Name: "ko-count", Value: replica.DefaultKoCount, Usage: "drop a peer that answers pings but leaves a write unanswered for this many timeouts (its disk hung), so the application goes on alone; 0 = wait for it however long (DRBD's ko-count)"},
		&cli.StringFlag{Name: "tcp-congestion", Usage: "TCP congestion control of the peer connection: a name the kernel offers, or system for the kernel's default (default cubic, or the kernel's where cubic is not allowed)"},
		&cli.StringFlag{Name: "on-peer-loss", Value: "continue", Usage: "continue (go on alone, track changes) or suspend (hold writes until the peer is back)"},
		&cli.StringFlag{Name: "bitmap-block", Value: "4KiB", Usage: "disk bytes per out-of-sync bit"},
		&cli.IntFlag{Name: "al-extents", Value: config.DefaultALExtents, Usage: "activity-log slots of 4MiB each (DRBD's al-extents, 67 to 65534): a working set that fits writes with no metadata I/O; a crash resyncs up to this much by checksum"},
		&cli.BoolFlag{Name: "assume-clean", Usage: "on first start, mark the disk UpToDate: both disks are freshly created and identical"},
		&cli.BoolFlag{Name: "grow", Usage: "the disk was grown since the last start (on both nodes): grow the metadata to its size and resync the new part"},
		&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
		&cli.StringFlag{Name: "config", Usage: "resource file naming both nodes (see docs/CONFIG.md); flags override it"},
		&cli.StringFlag{Name: "node", Usage: "this node's name in --config (default: the hostname)"},
		&cli.StringFlag{Name: "metrics-listen", Usage: "serve Prometheus metrics on HOST:PORT"},
		cpusFlag(),
		&cli.StringFlag{Name: "fencing", Value: "dont-care", Usage: "dont-care, resource-only (run the fence-peer handler when the peer may be promoted without this node's writes) or resource-and-stonith (also hold writes until it reports the peer fenced)"},
		&cli.StringFlag{Name: "after-sb-0pri", Value: "disconnect", Usage: "split brain with no Primary: disconnect (the operator decides), discard-zero-changes (a node that wrote nothing since the split becomes SyncTarget) or discard-least-changes (the node that changed fewer blocks does); both nodes need the same"},
		&cli.StringFlag{Name: "after-sb-1pri", Value: "disconnect", Usage: "split brain with one Primary: disconnect, consensus (discard the Secondary's changes when after-sb-0pri would) or discard-secondary; both nodes need the same"},
		&cli.StringFlag{Name: "on-io-error", Value: "detach", Usage: "when the Primary's disk fails a write or a flush: detach (go on Diskless, all I/O served by the UpToDate peer, no error seen) or pass_on (the application gets EIO, the disk stays)"},
		&cli.StringFlag{Name: "csums-alg", Value: "none", Usage: "sha256: every resync to a disk that holds data compares SHA-256 checksums of the marked blocks and sends only those that differ (DRBD's csums-alg; saves the link, reads the target's disk); none: copies them; on either node it applies to both"},
		&cli.StringFlag{Name: "read-balancing", Value: "prefer-local", Usage: "which disk serves the Primary's reads while the peer's holds the same data: prefer-local, prefer-remote, round-robin, least-pending (the disk with fewer requests waiting), when-congested-remote (the peer while 32 wait at the local disk) or 32K-striping to 1M-striping (odd stripes from the peer); DRBD's read-balancing"},
		&cli.StringFlag{Name: "on-congestion", Value: "block", Usage: "with protocol A, when the link cannot keep up: block (writes wait for room), pull-ahead (once a write waits 100ms for room on the link, or at --congestion-fill or --congestion-extents, go Ahead: record writes in the bitmap instead of sending them, the peer Behind and Outdated, and resync once the link drains) or disconnect (drop the connection, reconnect and resync); DRBD's on-congestion"},
		&cli.StringFlag{Name: "congestion-fill", Value: "0", Usage: "on-congestion also acts once this much write data is in flight to the peer (0: off; it always acts when a write waits 100ms for room on the link)"},
		&cli.IntFlag{Name: "congestion-extents", Value: config.DefaultCongestionExtents, Usage: "on-congestion acts once this many activity-log extents have writes in flight (0: off)"},
		&cli.StringFlag{Name: "auto-promote", Value: "no", Usage: "yes: a Secondary promotes itself when an NBD client attaches, if urbd primary would (disk UpToDate, the peer not Primary and agreeing), and demotes itself when the last client leaves; DRBD 9's auto-promote; no: only urbd primary promotes"},
		&cli.StringSliceFlag{Name: "handler", Usage: "EVENT=COMMAND run on initial-split-brain, split-brain, peer-lost, peer-back, resync-started, resync-done, promoted, demoted, local-io-error, fence-peer (repeatable)"},
	},
	Before: setCPUs,
	Action: runUp,
}

func init() { commands = append(commands, upCommand) }

func runUp(c *cli.Context) error {
	name, err := resourceName(c)
	if err != nil {
		return err
	}
	o, err := upOptions(c, name)
	if err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	o.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	logMonitor(o.Logger)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return daemon.Run(ctx, o)
}

// upOptions merges the resource file (if any) with the flags; a flag given
// on the command line wins over the file.
func upOptions(c *cli.Context, name string) (daemon.Options, error) {
	o := daemon.Options{Name: name, RunDir: runDir(c), Handlers: map[string]string{}}
	str := map[string]*string{
		"disk": &o.Disk, "meta": &o.Meta, "nbd": &o.NBD, "listen-peer": &o.ListenPeer, "peer": &o.Peer,
		"secret-file": &o.SecretFile, "tls-cert": &o.TLSCert, "tls-key": &o.TLSKey, "tls-ca": &o.TLSCA,
		"on-peer-loss": &o.OnPeerLoss, "metrics-listen": &o.MetricsListen, "fencing": &o.Fencing,
		"after-sb-0pri": &o.AfterSB0Pri, "after-sb-1pri": &o.AfterSB1Pri, "on-io-error": &o.OnIOError,
		"tcp-congestion": &o.TCPCongestion, "csums-alg": &o.CsumsAlg, "read-balancing": &o.ReadBalancing,
		"on-congestion": &o.OnCongestion, "auto-promote": &o.AutoPromote,
	}
	proto, rate, block, fill := c.String("protocol"), c.String("resync-rate"), c.String("bitmap-block"), c.String("congestion-fill")
	o.CongestionExtents = c.Int("congestion-extents")
	o.Timeout = c.Duration("timeout")
	o.ALExtents = c.Int("al-extents")
	o.KoCount = c.Int("ko-count")
	o.DiskTimeout = c.Duration("disk-timeout")
	if path := c.String("config"); path != "" {
		r, err := loadResource(c, path, name)
		if err != nil {
			return o, err
		}
		fromFile := map[string]string{
			"disk": r.Disk, "meta": r.Meta, "nbd": r.NBD, "listen-peer": r.ListenPeer, "peer": r.Peer,
			"secret-file": r.SecretFile, "tls-cert": r.TLSCert, "tls-key": r.TLSKey, "tls-ca": r.TLSCA,
			"on-peer-loss": r.OnPeerLoss, "metrics-listen": r.MetricsListen, "fencing": r.Fencing,
			"after-sb-0pri": r.AfterSB0Pri, "after-sb-1pri": r.AfterSB1Pri, "on-io-error": r.OnIOError,
			"tcp-congestion": r.TCPCongestion, "csums-alg": r.CsumsAlg, "read-balancing": r.ReadBalancing,
			"on-congestion": r.OnCongestion, "auto-promote": r.AutoPromote,
		}
		for k, v := range fromFile {
			*str[k] = v
		}
		if !c.IsSet("protocol") && r.Protocol != "" {
			proto = r.Protocol
		}
		if !c.IsSet("resync-rate") && r.ResyncRate > 0 {
			rate = fmt.Sprint(r.ResyncRate)
		}
		if !c.IsSet("bitmap-block") && r.BitmapBlock > 0 {
			block = fmt.Sprint(r.BitmapBlock)
		}
		if !c.IsSet("timeout") && r.Timeout > 0 {
			o.Timeout = r.Timeout
		}
		if !c.IsSet("al-extents") && r.ALExtents > 0 {
			o.ALExtents = r.ALExtents
		}
		if !c.IsSet("ko-count") {
			o.KoCount = r.KoCount // the file's, or its default
		}
		if !c.IsSet("disk-timeout") {
			o.DiskTimeout = r.DiskTimeout
		}
		if !c.IsSet("congestion-fill") {
			fill = fmt.Sprint(r.CongestionFill) // the file's, or its default
		}
		if !c.IsSet("congestion-extents") {
			o.CongestionExtents = r.CongestionExtents
		}
		for k, v := range r.Handlers {
			o.Handlers[k] = v
		}
	}
	for k, p := range str {
		if c.IsSet(k) || *p == "" {
			*p = c.String(k)
		}
	}
	for _, h := range c.StringSlice("handler") {
		ev, cmd, ok := strings.Cut(h, "=")
		if !ok || ev == "" || cmd == "" {
			return o, fmt.Errorf("--handler %q: use EVENT=COMMAND, e.g. --handler split-brain=/usr/local/bin/page-admin", h)
		}
		o.Handlers[ev] = cmd
	}
	for _, req := range []string{"disk", "meta", "nbd"} {
		if *str[req] == "" {
			return o, fmt.Errorf("--%s is required (or give it in --config)", req)
		}
	}
	if o.Peer == "" && o.ListenPeer == "" {
		return o, fmt.Errorf("give --peer and --listen-peer: urbd up replicates to a peer (use urbd serve for a plain export)")
	}
	var err error
	if o.Protocol, err = daemon.ParseProtocol(proto); err != nil {
		return o, err
	}
	if o.ResyncRate, err = units.ParseRate(rate); err != nil {
		return o, fmt.Errorf("--resync-rate: %w", err)
	}
	if o.CongestionFill, err = units.ParseSize(fill); err != nil {
		return o, fmt.Errorf("--congestion-fill: %w", err)
	}
	if o.BitmapBlock, err = units.ParseSize(block); err != nil {
		return o, fmt.Errorf("--bitmap-block: %w", err)
	}
	if o.BitmapBlock < 512 || o.BitmapBlock&(o.BitmapBlock-1) != 0 {
		return o, fmt.Errorf("--bitmap-block %s: use a power of two of at least 512 bytes", block)
	}
	if err := config.CheckALExtents(o.ALExtents); err != nil {
		return o, fmt.Errorf("--%w", err)
	}
	if err := replica.CheckKoCount(o.KoCount); err != nil {
		return o, fmt.Errorf("--%w", err)
	}
	if err := replica.CheckDiskTimeout(o.DiskTimeout); err != nil {
		return o, fmt.Errorf("--%w", err)
	}
	o.AssumeClean = c.Bool("assume-clean")
	o.Grow = c.Bool("grow")
	o.Threads = autoThreads
	if c.String("config") != "" {
		o.Reload = func() (daemon.Options, error) { return upOptions(c, name) }
	}
	return o, nil
}

// loadResource reads this node's part (--node, or the hostname) of resource
// name from the resource file at path.
func loadResource(c *cli.Context, path, name string) (config.Resource, error) {
	f, err := config.Load(path)
	if err != nil {
		return config.Resource{}, err
	}
	return f.Resolve(name, c.String("node"))
}
