package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/urbd/urbd/daemon"
	"github.com/urbd/urbd/status"
)

var statusCommand = &cli.Command{
	Name:      "status",
	Usage:     "show resources: roles, connection, disks, resync progress",
	ArgsUsage: "[NAME]",
	Description: `Without NAME, every resource running on this host. The text is in the shape of
DRBD 8.4's /proc/drbd; --json gives the same facts with stable field names;
--watch shows a live view refreshed every second.
Examples: urbd status; urbd status --json r0; urbd status --watch`,
	Flags: []cli.Flag{
		&cli.BoolFlag{Name: "json", Usage: "print JSON"},
		&cli.BoolFlag{Name: "watch", Usage: "live view, refreshed every second (Ctrl-C to quit)"},
	},
	Action: runStatus,
}

func init() { commands = append(commands, statusCommand) }

func runStatus(c *cli.Context) error {
	if c.NArg() > 1 {
		return fmt.Errorf("status takes at most one resource name")
	}
	runDir := runDir(c)
	if !c.Bool("watch") {
		rs, err := collect(c.Context, runDir, c.Args().First())
		if err != nil {
			return err
		}
		if c.Bool("json") {
			return status.WriteJSON(os.Stdout, rs)
		}
		return status.WriteText(os.Stdout, daemon.Version, rs)
	}
	for {
		rs, err := collect(c.Context, runDir, c.Args().First())
		if err != nil && c.Args().First() != "" {
			return err
		}
		width := 80
		if ws, err := unix.IoctlGetWinsize(int(os.Stdout.Fd()), unix.TIOCGWINSZ); err == nil && ws.Col > 0 {
			width = int(ws.Col)
		}
		status.RenderWatch(os.Stdout, time.Now(), rs, width)
		select {
		case <-c.Context.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

// collect asks the daemons for their status: one resource, or all of them.
func collect(ctx context.Context, runDir, name string) ([]status.Resource, error) {
	names := []string{name}
	if name == "" {
		var err error
		if names, err = daemon.Resources(runDir); err != nil {
			return nil, err
		}
	}
	var rs []status.Resource
	for i, n := range names {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := daemon.Call(cctx, runDir, n, daemon.Request{Cmd: "status"})
		cancel()
		if err != nil {
			if name != "" {
				return nil, err
			}
			continue
		}
		r := *resp.Status
		r.Minor = i
		rs = append(rs, r)
	}
	return rs, nil
}
