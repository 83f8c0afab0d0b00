package main

import (
	"context"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/urbd/urbd/daemon"
	"github.com/urbd/urbd/internal/units"
)

// controlCommand builds a command that sends one request to the running
// daemon of NAME and prints its one-line answer.
func controlCommand(name, usage, desc string, flags []cli.Flag, build func(*cli.Context) (daemon.Request, error)) *cli.Command {
	return &cli.Command{
		Name:        name,
		Usage:       usage,
		ArgsUsage:   "NAME",
		Description: desc,
		Flags:       flags,
		Action: func(c *cli.Context) error {
			res, err := resourceName(c)
			if err != nil {
				return err
			}
			req, err := build(c)
			if err != nil {
				return err
			}
			resp, err := callDaemon(c, res, req)
			if err != nil {
				return err
			}
			fmt.Printf("%s: %s\n", res, resp.Message)
			return nil
		},
	}
}

// callDaemon sends req to the daemon of resource name, waiting at most a
// minute for its answer.
func callDaemon(c *cli.Context, name string, req daemon.Request) (*daemon.Response, error) {
	ctx, cancel := context.WithTimeout(c.Context, 60*time.Second)
	defer cancel()
	return daemon.Call(ctx, runDir(c), name, req)
}

func plain(cmd string) func(*cli.Context) (daemon.Request, error) {
	return func(c *cli.Context) (daemon.Request, error) {
		return daemon.Request{Cmd: cmd, Force: c.Bool("force"), Discard: c.Bool("discard-my-data")}, nil
	}
}

func init() {
	commands = append(commands,
		controlCommand("primary", "promote the resource: serve NBD clients",
			`Refused while the peer is Primary, or while the local disk is not UpToDate unless --force.
Example: urbd primary r0; on a new resource: urbd primary --force r0 (this node's data wins).`,
			[]cli.Flag{&cli.BoolFlag{Name: "force", Usage: "promote even if the local disk is not UpToDate"}}, plain("primary")),
		controlCommand("secondary", "demote the resource: stop serving NBD clients",
			`Refused while NBD clients are attached unless --force, which flushes and disconnects them.
Example: urbd secondary r0`,
			[]cli.Flag{&cli.BoolFlag{Name: "force", Usage: "flush and disconnect attached NBD clients"}}, plain("secondary")),
		controlCommand("connect", "leave StandAlone and connect to the peer",
			`After a split brain, run on the node whose changes are to be thrown away:
   urbd connect --discard-my-data r0
It becomes SyncTarget for the union of both nodes' changes.`,
			[]cli.Flag{&cli.BoolFlag{Name: "discard-my-data", Usage: "resolve a split brain: this node's changes are dropped"}}, plain("connect")),
		controlCommand("disconnect", "drop the peer connection and stay StandAlone",
			`Refused while a Diskless Primary reaches its data over the connection (on either node) unless --force.
Example: urbd disconnect r0`,
			[]cli.Flag{&cli.BoolFlag{Name: "force", Usage: "disconnect even if a Diskless Primary loses access to its data (its I/O fails)"}}, plain("disconnect")),
		controlCommand("invalidate", "discard this node's data and resync all of it from the peer",
			"Needs a connected peer with an UpToDate disk. Example: urbd invalidate r0", nil, plain("invalidate")),
		controlCommand("invalidate-remote", "discard the peer's data and resync all of it from this node",
			`Run on the Primary, connected to its peer with no resync or verify running; the application
keeps writing meanwhile. Example: urbd invalidate-remote r0`, nil, plain("invalidate-remote")),
		controlCommand("pause-sync", "pause resyncs: the running one and any that starts, until resume-sync",
			`Application writes go on and are replicated; only the copying of out-of-sync blocks stops.
Either node may pause; both then show PausedSyncS or PausedSyncT. Example: urbd pause-sync r0`, nil, plain("pause-sync")),
		controlCommand("resume-sync", "lift this node's pause-sync",
			"A pause set on the peer stays until it is lifted there. Example: urbd resume-sync r0", nil, plain("resume-sync")),
		controlCommand("verify", "compare every block with the peer by checksum and resync the differences",
			`Runs in the background; urbd status shows VerifyS and its progress, and its reason what the
verify found. Blocks a disk cannot read are rewritten from the other node's copy on the way.
--start and --stop verify a part of the disk (a night's share of a large one); a verify that
stopped early (the peer lost, an error) says where, and --resume goes on from there.
Examples: urbd verify r0; urbd verify --start 100GiB --stop 200GiB r0; urbd verify --resume r0`,
			[]cli.Flag{
				&cli.StringFlag{Name: "start", Usage: "verify from this offset on, e.g. 100GiB (rounded down to a bitmap block)"},
				&cli.StringFlag{Name: "stop", Usage: "verify up to this offset, e.g. 200GiB (rounded up to a bitmap block); default: the end of the disk"},
				&cli.BoolFlag{Name: "resume", Usage: "go on where the last verify of this node stopped early"},
			},
			func(c *cli.Context) (daemon.Request, error) {
				req := daemon.Request{Cmd: "verify", Resume: c.Bool("resume")}
				if req.Resume && (c.IsSet("start") || c.IsSet("stop")) {
					return req, fmt.Errorf("--resume goes on where the last verify stopped: it takes no --start or --stop")
				}
				for _, f := range []struct {
					name string
					to   *int64
				}{{"start", &req.Start}, {"stop", &req.Stop}} {
					if !c.IsSet(f.name) {
						continue
					}
					v, err := units.ParseSize(c.String(f.name))
					if err != nil {
						return req, fmt.Errorf("--%s: %w", f.name, err)
					}
					*f.to = v
				}
				if c.IsSet("stop") && req.Stop == 0 {
					return req, fmt.Errorf("--stop 0 verifies nothing")
				}
				return req, nil
			}),
		controlCommand("resume-io", "release writes held for the peer (fencing failed, or on-peer-loss suspend)",
			`Use it once you know the peer is not Primary and will not be promoted: this node then goes on
alone until the peer is back. Example: urbd resume-io r0`, nil, plain("resume-io")),
		controlCommand("down", "stop the resource's daemon cleanly", "Example: urbd down r0", nil, plain("down")),
		controlCommand("adjust", "change settings of a running resource",
			`Without flags, the daemon reads its resource file (urbd up --config) again, as drbdadm adjust
does: a new protocol, resync-rate, on-peer-loss, ko-count, disk-timeout, on-io-error,
read-balancing, on-congestion with its thresholds, auto-promote and new handlers apply at once,
csums-alg from the next resync on, a
new timeout, after-sb-0pri, after-sb-1pri, addresses, secret-file and TLS files (read again
each time) and tcp-congestion from the next connection on, fencing from the next peer loss on,
nbd and metrics-listen at once, and the reply names the other settings that changed (disk,
meta, bitmap-block, al-extents), which apply at the next start. With flags, only those
settings change, until the next adjust or start. A new protocol applies to the writes that
start after it; the peer is told without reconnecting.
Examples: urbd adjust r0; urbd adjust --resync-rate 200MiB r0; urbd adjust --protocol A r0`,
			[]cli.Flag{
				&cli.StringFlag{Name: "protocol", Usage: "A, B or C (see urbd up --help)"},
				&cli.StringFlag{Name: "resync-rate", Usage: "new resync rate per second, e.g. 50MiB; 0 = unlimited"},
				&cli.StringFlag{Name: "on-peer-loss", Usage: "continue or suspend (see urbd up --help)"},
				&cli.StringFlag{Name: "timeout", Usage: "peer timeout, e.g. 10s, for the next connection on"},
				&cli.StringFlag{Name: "disk-timeout", Usage: "detach the Primary's disk (a Secondary leaves its Primary) when a request waits this long, e.g. 30s; 0 = off; for the requests that start after it (see urbd up --help)"},
				&cli.StringFlag{Name: "ko-count", Usage: "drop a peer that leaves a write unanswered this many timeouts, at once; 0 = never (see urbd up --help)"},
				&cli.StringFlag{Name: "on-io-error", Usage: "detach or pass_on (see urbd up --help)"},
				&cli.StringFlag{Name: "after-sb-0pri", Usage: "split-brain policy with no Primary, for the next connection on (see urbd up --help)"},
				&cli.StringFlag{Name: "after-sb-1pri", Usage: "split-brain policy with one Primary, for the next connection on (see urbd up --help)"},
				&cli.StringFlag{Name: "fencing", Usage: "dont-care, resource-only or resource-and-stonith, from the next peer loss on (needs a fence-peer handler)"},
				&cli.StringFlag{Name: "csums-alg", Usage: "sha256 or none, from the next resync on (see urbd up --help)"},
				&cli.StringFlag{Name: "read-balancing", Usage: "prefer-local, prefer-remote, round-robin, least-pending, when-congested-remote or 32K- to 1M-striping, from the next read on (see urbd up --help)"},
				&cli.StringFlag{Name: "on-congestion", Usage: "block, pull-ahead or disconnect, from the next write on (see urbd up --help)"},
				&cli.StringFlag{Name: "congestion-fill", Usage: "write data in flight to the peer at which on-congestion acts, e.g. 8MiB; 0 = off"},
				&cli.StringFlag{Name: "congestion-extents", Usage: "activity-log extents in use at which on-congestion acts, e.g. 1237; 0 = off"},
				&cli.StringFlag{Name: "auto-promote", Usage: "yes or no, from the next NBD client on (see urbd up --help)"},
			},
			func(c *cli.Context) (daemon.Request, error) {
				// The values go as typed: the daemon checks them, with the
				// same messages as urbd up, and a bad one changes nothing.
				settings := map[string]string{}
				for _, k := range []string{"protocol", "resync-rate", "on-peer-loss", "timeout", "ko-count", "disk-timeout", "on-io-error", "after-sb-0pri", "after-sb-1pri", "fencing", "csums-alg", "read-balancing", "on-congestion", "congestion-fill", "congestion-extents", "auto-promote"} {
					if c.IsSet(k) {
						settings[k] = c.String(k)
					}
				}
				return daemon.Request{Cmd: "adjust", Settings: settings}, nil
			}),
	)
}
