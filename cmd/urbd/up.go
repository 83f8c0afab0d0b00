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

	"github.com/urbd/urbd/daemon"
	"github.com/urbd/urbd/internal/units"
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
		&cli.StringFlag{Name: "disk", Usage: "local disk: a block device or a file", Required: true},
		&cli.StringFlag{Name: "meta", Usage: "metadata directory (created on first start)", Required: true},
		&cli.StringFlag{Name: "nbd", Usage: "NBD export address: unix:SOCK or tcp:HOST:PORT", Required: true},
		&cli.StringFlag{Name: "listen-peer", Usage: "HOST:PORT to accept the peer on"},
		&cli.StringFlag{Name: "peer", Usage: "HOST:PORT of the peer"},
		&cli.StringFlag{Name: "protocol", Value: "C", Usage: "A (async), B (peer received) or C (peer wrote: no acknowledged write is lost)"},
		&cli.StringFlag{Name: "resync-rate", Value: "100MiB", Usage: "resync rate per second, e.g. 250KiB, 100MiB; 0 = unlimited"},
		&cli.StringFlag{Name: "secret-file", Usage: "file holding the shared secret both nodes must present"},
		&cli.StringFlag{Name: "tls-cert", Usage: "this node's TLS certificate (PEM)"},
		&cli.StringFlag{Name: "tls-key", Usage: "this node's TLS key (PEM)"},
		&cli.StringFlag{Name: "tls-ca", Usage: "CA that signed the peer's certificate (PEM)"},
		&cli.DurationFlag{Name: "timeout", Value: 6 * time.Second, Usage: "declare the peer lost after this long without an answer"},
		&cli.StringFlag{Name: "on-peer-loss", Value: "continue", Usage: "continue (go on alone, track changes) or suspend (hold writes until the peer is back)"},
		&cli.StringFlag{Name: "bitmap-block", Value: "4KiB", Usage: "disk bytes per out-of-sync bit"},
		&cli.BoolFlag{Name: "assume-clean", Usage: "on first start, mark the disk UpToDate: both disks are freshly created and identical"},
		&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
	},
	Action: runUp,
}

func init() { commands = append(commands, upCommand) }

func runUp(c *cli.Context) error {
	name, err := resourceName(c)
	if err != nil {
		return err
	}
	proto := strings.ToUpper(c.String("protocol"))
	if proto != "A" && proto != "B" && proto != "C" {
		return fmt.Errorf("--protocol %q: use A, B or C", c.String("protocol"))
	}
	rate, err := units.ParseRate(c.String("resync-rate"))
	if err != nil {
		return fmt.Errorf("--resync-rate: %w", err)
	}
	block, err := units.ParseSize(c.String("bitmap-block"))
	if err != nil {
		return fmt.Errorf("--bitmap-block: %w", err)
	}
	if block < 512 || block&(block-1) != 0 {
		return fmt.Errorf("--bitmap-block %s: use a power of two of at least 512 bytes", c.String("bitmap-block"))
	}
	if c.String("peer") == "" && c.String("listen-peer") == "" {
		return fmt.Errorf("give --peer and --listen-peer: urbd up replicates to a peer (use urbd serve for a plain export)")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return daemon.Run(ctx, daemon.Options{
		Name: name, Disk: c.String("disk"), Meta: c.String("meta"), NBD: c.String("nbd"),
		ListenPeer: c.String("listen-peer"), Peer: c.String("peer"), Protocol: proto[0],
		ResyncRate: rate, SecretFile: c.String("secret-file"),
		TLSCert: c.String("tls-cert"), TLSKey: c.String("tls-key"), TLSCA: c.String("tls-ca"),
		Timeout: c.Duration("timeout"), OnPeerLoss: c.String("on-peer-loss"), BitmapBlock: block,
		AssumeClean: c.Bool("assume-clean"), RunDir: runDir(c), Logger: log,
	})
}
