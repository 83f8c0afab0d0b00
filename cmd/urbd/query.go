package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/urbd/urbd/status"
)

// DRBD's one-word queries (drbdadm role, cstate, dstate) and waits
// (wait-connect, wait-sync), for scripts and cluster managers: each prints
// one line and says by its exit code whether it succeeded.

// queryCommand builds a command that prints one field of NAME's status.
func queryCommand(name, usage, example string, field func(status.Resource) string) *cli.Command {
	return &cli.Command{
		Name:        name,
		Usage:       usage,
		ArgsUsage:   "NAME",
		Description: "As drbdadm " + name + ". Example: urbd " + name + " r0 prints " + example,
		Action: func(c *cli.Context) error {
			r, err := resourceStatus(c)
			if err != nil {
				return err
			}
			fmt.Println(field(r))
			return nil
		},
	}
}

// resourceStatus asks the daemon of the resource named on the command line
// for its status.
func resourceStatus(c *cli.Context) (status.Resource, error) {
	name, err := resourceName(c)
	if err != nil {
		return status.Resource{}, err
	}
	rs, err := collect(c.Context, runDir(c), name)
	if err != nil {
		return status.Resource{}, err
	}
	return rs[0], nil
}

// connectedStates are the connection states in which the peer is connected.
var connectedStates = []string{"Connected", "SyncSource", "SyncTarget", "PausedSyncS", "PausedSyncT", "VerifyS", "VerifyT", "Ahead", "Behind"}

// Conditions of the wait commands.
func isConnected(r status.Resource) bool { return slices.Contains(connectedStates, r.ConnState) }
func isInSync(r status.Resource) bool {
	return r.ConnState == "Connected" && r.DiskState == "UpToDate" && r.PeerDisk == "UpToDate"
}

// waitCommand builds a command that waits until NAME's status satisfies
// cond. It fails at once on a StandAlone resource, which does not connect
// on its own, and after --timeout.
func waitCommand(name, usage, what string, cond func(status.Resource) bool) *cli.Command {
	return &cli.Command{
		Name:      name,
		Usage:     usage,
		ArgsUsage: "NAME",
		Description: "Exits 0 once the resource is " + what + `; exits 1 at once if it is StandAlone
(it connects only after urbd connect), or after --timeout. Example: urbd ` + name + ` --timeout 5m r0`,
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "timeout", Usage: "give up after this long; 0 = wait for ever"},
		},
		Action: func(c *cli.Context) error {
			ctx := c.Context
			if d := c.Duration("timeout"); d > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, d)
				defer cancel()
			}
			for {
				r, err := resourceStatus(c)
				if err != nil {
					return err
				}
				switch {
				case cond(r):
					fmt.Printf("%s: %s\n", r.Name, summary(r))
					return nil
				case r.ConnState == "StandAlone":
					return fmt.Errorf("%s: StandAlone, it will not become %s without urbd connect (%s)", r.Name, what, summary(r))
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("%s: not %s after %s (%s)", r.Name, what, c.Duration("timeout"), summary(r))
				case <-time.After(100 * time.Millisecond):
				}
			}
		},
	}
}

// summary is the status line's states and reason, for the wait commands.
func summary(r status.Resource) string {
	s := fmt.Sprintf("cs:%s ro:%s/%s ds:%s/%s", r.ConnState, r.Role, r.PeerRole, r.DiskState, r.PeerDisk)
	if r.Reason != "" {
		s += "; " + r.Reason
	}
	return s
}

func init() {
	commands = append(commands,
		queryCommand("role", "print this node's and the peer's role", "Primary/Secondary",
			func(r status.Resource) string { return r.Role + "/" + r.PeerRole }),
		queryCommand("cstate", "print the connection state", "Connected",
			func(r status.Resource) string { return r.ConnState }),
		queryCommand("dstate", "print this node's and the peer's disk state", "UpToDate/UpToDate",
			func(r status.Resource) string { return r.DiskState + "/" + r.PeerDisk }),
		queryCommand("get-gi", "print this node's generation UUIDs: CURRENT:BITMAP:HISTORY1:HISTORY2", "7F2B3A6B8E6B4E3C:0000000000000000:...",
			func(r status.Resource) string { return r.UUIDs }),
		queryCommand("show-gi", "explain both nodes' generation UUIDs, which choose the resync direction",
			"both nodes' UUIDs (the peer's while connected), field by field",
			func(r status.Resource) string { return strings.TrimSuffix(showGI(r), "\n") }),
		waitCommand("wait-connect", "wait until the peer is connected", "connected", isConnected),
		waitCommand("wait-sync", "wait until connected with both disks UpToDate (no resync left)", "in sync", isInSync),
	)
}

// showGI explains the generation UUIDs of r and of its peer, if known.
func showGI(r status.Resource) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: cs:%s ro:%s/%s ds:%s/%s\n", r.Name, r.ConnState, r.Role, r.PeerRole, r.DiskState, r.PeerDisk)
	for _, side := range []struct{ who, gi string }{{"this node", r.UUIDs}, {"the peer", r.PeerUUIDs}} {
		if side.gi == "" {
			fmt.Fprintf(&b, "%-10s unknown (not connected)\n", side.who+":")
			continue
		}
		fmt.Fprintf(&b, "%-10s %s\n", side.who+":", side.gi)
		f := strings.Split(side.gi, ":")
		if len(f) != 4 {
			continue
		}
		fmt.Fprintf(&b, "           current  %s  the data generation this disk holds\n", f[0])
		fmt.Fprintf(&b, "           bitmap   %s  the generation its bitmap counts changes since (0: none)\n", f[1])
		fmt.Fprintf(&b, "           history  %s  %s  older generations, newest first\n", f[2], f[3])
	}
	return b.String()
}
