package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/urbd/urbd/internal/threads"
	"github.com/urbd/urbd/nbd"
)

func init() { commands = append(commands, serveCommand) }

var serveCommand = &cli.Command{
	Name:      "serve",
	Usage:     "export a disk over NBD, with no peer",
	UsageText: "urbd serve --disk PATH --listen unix:SOCK|tcp:HOST:PORT [--read-only]",
	Description: "Serves PATH (a regular file or a block device) to NBD clients under the export name \"\" " +
		"and the file's base name. SIGINT or SIGTERM stops accepting, finishes the requests in flight, " +
		"flushes the disk and exits 0. SIGHUP takes a disk grown meanwhile (truncate, lvextend): the export " +
		"serves its new size, to new clients and to urbd attach after its own SIGHUP.",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "disk", Usage: "file or block device to export", Required: true},
		&cli.StringFlag{Name: "listen", Usage: "unix:/path/to.sock or tcp:host:port", Required: true},
		&cli.BoolFlag{Name: "read-only", Usage: "refuse writes (EPERM)"},
		&cli.BoolFlag{Name: "verbose", Usage: "log every connection"},
		cpusFlag(),
		&cli.StringFlag{Name: "cpu-profile", Usage: "write a pprof CPU profile to this file until exit", Hidden: true},
	},
	Before: setCPUs,
	Action: serveAction,
}

func serveAction(c *cli.Context) error {
	if c.NArg() != 0 {
		return fmt.Errorf("serve takes no arguments, got %q: use --disk and --listen", c.Args().First())
	}
	path, addr, ro := c.String("disk"), c.String("listen"), c.Bool("read-only")
	level := slog.LevelInfo
	if c.Bool("verbose") {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	logMonitor(log)

	if p := c.String("cpu-profile"); p != "" {
		f, err := os.Create(p)
		if err != nil {
			return fmt.Errorf("--cpu-profile: %v", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("--cpu-profile: %v", err)
		}
		defer pprof.StopCPUProfile()
	}
	if _, _, err := nbd.ParseAddr(addr); err != nil {
		return fmt.Errorf("--listen %s: want unix:/path/to.sock or tcp:host:port", addr)
	}
	disk, err := nbd.OpenFile(path, ro)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("disk %s does not exist: create it (e.g. truncate -s 1G %s) or pass an existing file or device", path, path)
		}
		return fmt.Errorf("disk %s: %v", path, err)
	}
	defer disk.Close()
	ln, err := nbd.Listen(addr)
	if err != nil {
		if errors.Is(err, nbd.ErrAddressInUse) {
			return fmt.Errorf("%s is busy: another process listens on it; stop it or choose another --listen", addr)
		}
		return err
	}
	exp := &nbd.Export{
		Name:        filepath.Base(path),
		Description: "urbd serve " + path,
		Backend:     disk,
		ReadOnly:    ro,
		MultiConn:   true,
	}
	srv := &nbd.Server{
		Logger: log,
		Lookup: func(name string) (*nbd.Export, error) {
			if name == "" || name == exp.Name {
				return exp, nil
			}
			return nil, fmt.Errorf("%w %q: this server exports %q (or \"\")", nbd.ErrUnknownExport, name, exp.Name)
		},
		List: func() []string { return []string{exp.Name} },
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), ln) }()
	go threads.Run(context.Background(), autoThreads, threads.Interval, srv.Served)
	log.Info("serving", "disk", path, "size", disk.Size(), "listen", addr, "read_only", ro)

	for running := true; running; {
		select {
		case err := <-served:
			return fmt.Errorf("serving %s: %v", addr, err)
		case <-hup:
			growExport(disk, log)
		case sig := <-sigs:
			log.Info("shutting down", "signal", sig.String())
			running = false
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() {
		// A second signal while draining forces the exit.
		select {
		case <-sigs:
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("shutdown: clients did not finish in time: %v", err)
	}
	<-served
	if err := disk.Flush(context.Background()); err != nil {
		return fmt.Errorf("flushing %s: %v", path, err)
	}
	log.Info("stopped")
	return nil
}

// growExport serves the disk's size now if it grew (SIGHUP), and logs one
// line either way. A disk never shrinks under its clients.
func growExport(disk *nbd.File, log *slog.Logger) {
	from := disk.Size()
	have, err := disk.StorageSize()
	switch {
	case err != nil:
		log.Error("cannot read the disk's size", "err", err)
	case have < from:
		log.Warn(fmt.Sprintf("the disk shrank from %d to %d bytes: the export keeps %d", from, have, from))
	case have == from:
		log.Info(fmt.Sprintf("the disk is still %d bytes", from))
	default:
		if err := disk.Grow(have); err != nil {
			log.Error("cannot grow the export", "err", err)
			return
		}
		log.Info(fmt.Sprintf("grew the export from %d to %d bytes", from, have))
	}
}
