package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/urbd/urbd/daemon"
)

func init() {
	commands = append(commands, resizeCommand)
}

var resizeCommand = &cli.Command{
	Name:      "resize",
	Usage:     "grow a running resource to its grown disks (after lvextend on both nodes)",
	ArgsUsage: "NAME",
	Description: `Grow the disk on both nodes first, by the same amount (lvextend -L +10G vg/r0 on
each), then run urbd resize NAME on the Primary (or on either node when both are Secondary),
connected, with both disks UpToDate. Writes wait while each node grows its metadata
(milliseconds), the nodes reconnect once, and the resync copies only the new part. With
--assume-clean (both new parts hold the same bytes, e.g. the zeroes of new thin volumes)
nothing is marked, the nodes stay connected and nothing is resynced; urbd verify finds any
difference. New NBD connections see the new size; urbd attach processes on this machine are
told (SIGHUP) and grow their /dev/nbdN, so the file system can grow online (resize2fs
/dev/nbd0). Refused, changing nothing, when a disk has not grown or the two differ.
Examples: urbd resize r0; urbd resize --assume-clean r0`,
	Flags: []cli.Flag{
		&cli.BoolFlag{Name: "assume-clean", Usage: "the new parts are equal on both nodes (zeroes): resync nothing"},
	},
	Action: func(c *cli.Context) error {
		res, err := resourceName(c)
		if err != nil {
			return err
		}
		resp, err := callDaemon(c, res, daemon.Request{Cmd: "resize", AssumeClean: c.Bool("assume-clean")})
		if err != nil {
			return err
		}
		msg := resp.Message
		if n := signalAttaches(runDir(c)); n > 0 {
			msg += fmt.Sprintf("; told %d urbd attach process(es) to grow their device", n)
		}
		fmt.Printf("%s: %s\n", res, msg)
		return nil
	},
}
