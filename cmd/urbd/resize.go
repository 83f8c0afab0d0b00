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
	Description: `Grow the disk on both nodes first (lvextend -L +10G vg/r0 on each), then run
urbd resize NAME on the Primary (or on either node when both are Secondary), connected,
with both disks UpToDate. The resource takes the smaller of the two disks' sizes: writes
wait while each node grows its metadata (milliseconds), the nodes reconnect once, and the
resync copies only the new part. New NBD connections see the new size; urbd attach
processes on this machine are told (SIGHUP) and grow their /dev/nbdN, so the file system
can grow online (resize2fs /dev/nbd0). Refused, changing nothing, when a disk has not grown.
Example: urbd resize r0`,
	Action: func(c *cli.Context) error {
		res, err := resourceName(c)
		if err != nil {
			return err
		}
		resp, err := callDaemon(c, res, daemon.Request{Cmd: "resize"})
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
