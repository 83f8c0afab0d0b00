// Command urbd is the userspace replicated block device: one binary whose
// subcommands export a disk over NBD, replicate it to a peer, and control the
// running daemon. Each subcommand lives in its own file and registers itself
// in commands; this file only wires them into the application.
package main

import (
	"fmt"
	"os"
	"runtime/debug"
	"sort"
	"strings"

	"github.com/urfave/cli/v2"
)

// version is the urbd release, shown by --version and in the status file.
const version = "0.1"

// commands is filled by the init functions of the files beside this one.
var commands []*cli.Command

// runDirFlag is the global --run-dir: where control sockets and status files live.
var runDirFlag = &cli.StringFlag{
	Name:    "run-dir",
	Usage:   "directory for control sockets and status files",
	Value:   "/run/urbd",
	EnvVars: []string{"URBD_RUN_DIR"},
}

func main() {
	tuneGC()
	os.Exit(run(os.Args))
}

// gcPercent is the garbage collector's target unless GOGC is set. The data
// path reuses its buffers, and the heap is small (bitmaps, metadata, pooled
// payload buffers), so collecting less often costs little memory and saves
// CPU that a replicated write or a resync would otherwise wait for.
const gcPercent = 400

func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
}

func run(args []string) int {
	sort.Slice(commands, func(i, j int) bool { return commands[i].Name < commands[j].Name })
	for _, c := range commands {
		c.Before = chain(refuseTrailingFlags, c.Before)
		c.Flags = append(c.Flags, &cli.StringFlag{Name: "run-dir", Usage: "directory for control sockets and status files (default: the global --run-dir)"})
	}
	app := &cli.App{
		Name:                   "urbd",
		Usage:                  "userspace replicated block device: NBD export mirrored synchronously to a peer",
		Version:                version,
		Flags:                  []cli.Flag{runDirFlag},
		Commands:               commands,
		UseShortOptionHandling: true,
		HideHelpCommand:        true,
		ExitErrHandler:         func(*cli.Context, error) {},
	}
	if err := app.Run(args); err != nil {
		fmt.Fprintf(os.Stderr, "urbd: %v\n", oneLine(err))
		if ec, ok := err.(cli.ExitCoder); ok && ec.ExitCode() != 0 {
			return ec.ExitCode()
		}
		return 1
	}
	return 0
}

// refuseTrailingFlags rejects "urbd primary r0 --force": urfave/cli stops
// parsing flags at the first argument, and a silently dropped flag is worse
// than an error.
func refuseTrailingFlags(c *cli.Context) error {
	args := c.Args().Slice()
	for i, a := range args {
		if i > 0 && strings.HasPrefix(a, "-") && a != "-" {
			return fmt.Errorf("flag %s after the resource name: put flags first, e.g. urbd %s %s %s",
				a, c.Command.Name, a, args[0])
		}
	}
	return nil
}

func chain(fns ...cli.BeforeFunc) cli.BeforeFunc {
	return func(c *cli.Context) error {
		for _, f := range fns {
			if f == nil {
				continue
			}
			if err := f(c); err != nil {
				return err
			}
		}
		return nil
	}
}

func oneLine(err error) string {
	return strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", "; ")
}

// runDir is the --run-dir given after the command, or else the global one
// (which carries the default and URBD_RUN_DIR).
func runDir(c *cli.Context) string {
	for _, ctx := range c.Lineage() {
		if ctx == nil {
			continue
		}
		if v := ctx.String("run-dir"); v != "" {
			return v
		}
	}
	return runDirFlag.Value
}

// resourceName returns the single NAME argument of a command.
func resourceName(c *cli.Context) (string, error) {
	if c.NArg() != 1 {
		return "", fmt.Errorf("%s needs exactly one resource name, e.g. urbd %s r0", c.Command.Name, c.Command.Name)
	}
	return c.Args().First(), nil
}
