package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"
)

// demoScriptEnv names the environment variable that points urbd demo at its
// script, overriding the search.
const demoScriptEnv = "URBD_DEMO_SCRIPT"

var demoCommand = &cli.Command{
	Name:  "demo",
	Usage: "two nodes on loopback, a guided tour (needs root)",
	Description: `Runs scripts/demo.sh with this binary: two urbd nodes on 127.0.0.1 with sparse
disk files in a temporary directory, ext4 on the primary's export (nbdfuse and a
loop device), a link cut, the bitmap resync with its progress bar, a failover to
the other node, and a byte-for-byte comparison of both disks. Everything is
removed at the end and on Ctrl-C. Takes well under two minutes.

The script is looked for in --script, $URBD_DEMO_SCRIPT, next to the binary
(../scripts/demo.sh, as in the source tree's bin/urbd, or
../share/urbd/demo.sh), then in ./scripts/demo.sh.
Examples: sudo urbd demo; sudo urbd demo --non-interactive`,
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "script", Usage: "path of demo.sh"},
		&cli.BoolFlag{Name: "non-interactive", Usage: "no pauses between steps; exit non-zero if the end state is wrong"},
	},
	Action: runDemo,
}

func init() { commands = append(commands, demoCommand) }

// runDemo replaces this process with bash running the demo script, so that
// Ctrl-C, the exit code and the terminal belong to the script alone.
func runDemo(c *cli.Context) error {
	if c.NArg() != 0 {
		return fmt.Errorf("demo takes no arguments: urbd demo [--non-interactive]")
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("demo: finding the urbd binary: %w", err)
	}
	if s, err := filepath.EvalSymlinks(self); err == nil {
		self = s
	}
	script, err := findDemoScript(c.String("script"), os.Getenv(demoScriptEnv), self)
	if err != nil {
		return err
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		return fmt.Errorf("demo: bash is not installed: apt-get install bash")
	}
	env := withEnv(os.Environ(), "URBD", self)
	if c.Bool("non-interactive") {
		env = withEnv(env, "URBD_DEMO_NONINTERACTIVE", "1")
	}
	if err := syscall.Exec(bash, []string{"bash", script}, env); err != nil {
		return fmt.Errorf("demo: running %s: %w", script, err)
	}
	return nil // not reached: Exec replaced the process
}

// withEnv returns env with key set to value, replacing any earlier entries
// for key (a process may see either of two duplicates).
func withEnv(env []string, key, value string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return append(out, key+"="+value)
}

// errNoDemoScript is returned when demo.sh is found in none of the places
// searched.
var errNoDemoScript = errors.New("demo script not found")

// findDemoScript returns the first existing regular file among: the --script
// flag, the URBD_DEMO_SCRIPT environment variable, ../scripts/demo.sh and
// ../share/urbd/demo.sh relative to the binary's directory, and
// scripts/demo.sh in the working directory. An explicit flag or variable
// that names no file is an error rather than a reason to look elsewhere.
func findDemoScript(flag, env, self string) (string, error) {
	for _, explicit := range []string{flag, env} {
		if explicit == "" {
			continue
		}
		if fi, err := os.Stat(explicit); err != nil || !fi.Mode().IsRegular() {
			return "", fmt.Errorf("%w at %s: pass the path of scripts/demo.sh with --script or URBD_DEMO_SCRIPT", errNoDemoScript, explicit)
		}
		return explicit, nil
	}
	dir := filepath.Dir(self)
	candidates := []string{
		filepath.Join(dir, "..", "scripts", "demo.sh"),
		filepath.Join(dir, "..", "share", "urbd", "demo.sh"),
		filepath.Join("scripts", "demo.sh"),
	}
	for _, p := range candidates {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			if abs, err := filepath.Abs(p); err == nil {
				p = abs
			}
			return p, nil
		}
	}
	return "", fmt.Errorf("%w next to %s or in ./scripts: run make demo in the source tree, or urbd demo --script PATH/demo.sh", errNoDemoScript, self)
}
