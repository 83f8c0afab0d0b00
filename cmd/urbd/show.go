package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/urbd/urbd/daemon"
)

var showCommand = &cli.Command{
	Name:      "show",
	Usage:     "print the settings of a running resource, and what its resource file would change",
	ArgsUsage: "NAME",
	Description: `As drbdsetup show: the settings the daemon uses now, by their names in the resource
file, one per line (handlers as "handler EVENT"). For a daemon started with --config, a last
line says which settings the file has changed since: those urbd adjust applies at once, and
those that wait for the next start.
Example: urbd show r0; urbd show --json r0`,
	Flags:  []cli.Flag{&cli.BoolFlag{Name: "json", Usage: `print {"settings": [{"key": ..., "value": ...}, ...], "pending": "..."}`}},
	Action: runShow,
}

func init() { commands = append(commands, showCommand) }

func runShow(c *cli.Context) error {
	name, err := resourceName(c)
	if err != nil {
		return err
	}
	resp, err := callDaemon(c, name, daemon.Request{Cmd: "show"})
	if err != nil {
		return err
	}
	if c.Bool("json") {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Settings []daemon.Setting `json:"settings"`
			Pending  string           `json:"pending,omitempty"`
		}{resp.Settings, resp.Message})
	}
	width := 0
	for _, s := range resp.Settings {
		width = max(width, len(s.Key))
	}
	fmt.Printf("%s:\n", name)
	for _, s := range resp.Settings {
		fmt.Printf("  %-*s  %s\n", width, s.Key, s.Value)
	}
	if resp.Message != "" {
		fmt.Printf("%s: %s\n", name, resp.Message)
	}
	return nil
}
