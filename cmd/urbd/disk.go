package main

import (
	"github.com/urbd/urbd/daemon"
	"github.com/urfave/cli/v2"
)

func init() {
	commands = append(commands,
		controlCommand("attach-disk", "give a node whose disk failed its repaired or replaced disk back, online",
			`After the node's disk failed, or urbd detach-disk took it out, repair or replace it at the
same path (--disk of urbd up; the same size exactly, e.g. lvcreate -L with the old size and the
old name), then run urbd attach-disk NAME on that node. The daemon opens the path again.

On a Diskless Primary, connected to a peer that is UpToDate, the peer's data is copied to the
new disk in the background while the application keeps running: the status shows the
progress, and the node stays Diskless (reads what is not copied yet from the peer) until the
copy is done and flushed; then it is UpToDate. A copy cut short by a lost peer goes on where it
stopped when the peer is back (from the start if the peer was promoted and written meanwhile);
if the new disk fails a write, the node stays Diskless and the reason says why: run it again on
a working disk.

On a Secondary whose disk failed (Inconsistent after an I/O error, perhaps StandAlone, or
Diskless), the new disk gets a full resync from the peer: the node connects again and is
Inconsistent until the resync is done. A disk that works (UpToDate or Outdated) is never
replaced.

With --same-disk, the node takes back the very disk urbd detach-disk took out, unchanged, and
only the blocks written since are copied: a Secondary is resynced by the peer (as after a
reconnect) and is Outdated until then; a Primary, still Diskless, copies the blocks it wrote
through the peer meanwhile. Refused unless this daemon detached that disk while it was
UpToDate or Outdated (and a Primary was not demoted since), and unless the disk has the size
and the sampled contents it had then; nothing may write it meanwhile. A restarted daemon
resyncs any disk in full.
Example: urbd attach-disk r0; urbd attach-disk --same-disk r0`,
			[]cli.Flag{&cli.BoolFlag{Name: "same-disk", Usage: "the disk detach-disk took out, unchanged: resync only what changed"}},
			func(c *cli.Context) (daemon.Request, error) {
				return daemon.Request{Cmd: "attach-disk", SameDisk: c.Bool("same-disk")}, nil
			}),
		controlCommand("detach-disk", "take a working disk out of service to replace it, online (DRBD's detach)",
			`Takes the node's disk out of service and closes it, so that it can be replaced (a disk that
reports errors ahead of failing, a move to another volume); then urbd attach-disk NAME takes
the new one at the same path.

On a Primary connected to an UpToDate peer, with no resync or verify running, the node goes
Diskless: every read, write and flush goes to the peer and the application sees nothing.

On a Secondary, the node goes Diskless and StandAlone; the Primary goes on alone. Its metadata
says Inconsistent, so attach-disk, or a daemon restarted on the new disk, resyncs all of it.
On either node, attach-disk --same-disk takes the same disk back and copies only what changed
meanwhile.

Refused, with nothing changed, on a node that is Diskless already, on a Primary whose peer
does not hold all of its data, and on a Secondary whose peer is a Diskless Primary (its disk
holds the only copy).
Example: urbd detach-disk r0`, nil, plain("detach-disk")),
	)
}
