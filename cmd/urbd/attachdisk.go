package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/urbd/urbd/daemon"
)

func init() {
	commands = append(commands, attachDiskCommand)
}

var attachDiskCommand = &cli.Command{
	Name:      "attach-disk",
	Usage:     "give a node whose disk failed its repaired or replaced disk back, online",
	ArgsUsage: "NAME",
	Description: `After the node's disk failed, repair or replace it at the same path (--disk of urbd up;
the same size exactly, e.g. lvcreate -L with the old size and the old name), then run
urbd attach-disk NAME on that node. The daemon opens the path again.

On a Diskless Primary (its disk was detached), connected to a peer that is UpToDate, the
peer's data is copied to the new disk in the background while the application keeps
running: the status shows the progress, and the node stays Diskless (reads what is not
copied yet from the peer) until the copy is done and flushed; then it is UpToDate. A copy
cut short by a lost peer starts over when the peer is back; if the new disk fails a write,
the node stays Diskless and the reason says why: run it again on a working disk.

On a Secondary whose disk failed (Inconsistent after an I/O error, perhaps StandAlone, or
Diskless after a demotion), the new disk gets a full resync from the peer: the node
connects again and is Inconsistent until the resync is done. A disk that works (UpToDate
or Outdated) is never replaced.
Example: urbd attach-disk r0`,
	Action: func(c *cli.Context) error {
		res, err := resourceName(c)
		if err != nil {
			return err
		}
		resp, err := callDaemon(c, res, daemon.Request{Cmd: "attach-disk"})
		if err != nil {
			return err
		}
		fmt.Printf("%s: %s\n", res, resp.Message)
		return nil
	},
}
