package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/urbd/urbd/daemon"
	"github.com/urbd/urbd/replica"
)

// defaultConfig is the resource file the systemd units use; urbd outdate
// reads it to find the metadata of a stopped resource.
const defaultConfig = "/etc/urbd/urbd.toml"

var outdateCommand = &cli.Command{
	Name:      "outdate",
	Usage:     "mark this node's disk Outdated: it then refuses promotion without --force",
	ArgsUsage: "NAME",
	Description: `What a fence-peer handler runs on the peer of a Primary that lost it (exit 4 once it
succeeds). With the daemon running, it asks the daemon, which refuses on a Primary and while
connected. With the daemon stopped, it changes the metadata itself: the directory of --meta, or
that of this node in --config (default ` + defaultConfig + ` when it exists); refused if the
daemon stopped cleanly as Primary. Example: urbd outdate r0`,
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "meta", Usage: "metadata directory, used when the daemon is stopped"},
		&cli.StringFlag{Name: "config", Usage: "resource file naming this node's metadata, used when the daemon is stopped (default: " + defaultConfig + " when it exists)"},
		&cli.StringFlag{Name: "node", Usage: "this node's name in --config (default: the hostname)"},
	},
	Action: runOutdate,
}

func init() { commands = append(commands, outdateCommand) }

func runOutdate(c *cli.Context) error {
	name, err := resourceName(c)
	if err != nil {
		return err
	}
	resp, err := callDaemon(c, name, daemon.Request{Cmd: "outdate"})
	if err == nil {
		fmt.Printf("%s: %s\n", name, resp.Message)
		return nil
	}
	if !errors.Is(err, daemon.ErrNotRunning) {
		return err
	}
	meta, err := stoppedMeta(c, name)
	if err != nil {
		return fmt.Errorf("%s: no daemon is running (no %s) and %w", name, daemon.SocketPath(runDir(c), name), err)
	}
	disk, err := replica.OutdateStopped(name, meta)
	if err != nil {
		return err
	}
	fmt.Printf("%s: %s (daemon stopped; metadata in %s)\n", name, disk, meta)
	return nil
}

// stoppedMeta finds the metadata directory of a resource whose daemon is
// not running: --meta, or this node's entry in the resource file.
func stoppedMeta(c *cli.Context, name string) (string, error) {
	if m := c.String("meta"); m != "" {
		return m, nil
	}
	path := c.String("config")
	if path == "" {
		if _, err := os.Stat(defaultConfig); err != nil {
			return "", errors.New("no metadata is named: give --meta DIR or --config FILE")
		}
		path = defaultConfig
	}
	r, err := loadResource(c, path, name)
	if err != nil {
		return "", err
	}
	return r.Meta, nil
}
