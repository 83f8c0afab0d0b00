package config

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The systemd units that run a resource file's resources live in scripts/.
var unitFiles = []string{"urbd@.service", "urbd-attach@.service", "urbd-verify@.service", "urbd-verify@.timer"}

// unitSettings parses a unit file into section -> key -> values.
func unitSettings(t *testing.T, path string) map[string]map[string][]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string][]string{}
	section := ""
	for i, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "" || l[0] == '#' || l[0] == ';':
		case l[0] == '[' && strings.HasSuffix(l, "]"):
			section = l[1 : len(l)-1]
			out[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not a key=value line in a section: %q", path, i+1, l)
			}
			out[section][k] = append(out[section][k], v)
		}
	}
	return out
}

func TestUnitSettings(t *testing.T) {
	daemon := unitSettings(t, filepath.Join("..", "scripts", unitFiles[0]))
	attach := unitSettings(t, filepath.Join("..", "scripts", unitFiles[1]))
	verify := unitSettings(t, filepath.Join("..", "scripts", unitFiles[2]))
	timer := unitSettings(t, filepath.Join("..", "scripts", unitFiles[3]))
	for _, tc := range []struct {
		unit             map[string]map[string][]string
		section, key, is string
	}{
		{daemon, "Service", "Type", "simple"},
		{daemon, "Service", "ExecStart", "/usr/local/bin/urbd up --config /etc/urbd/urbd.toml %i"},
		{daemon, "Service", "ExecStop", "/usr/local/bin/urbd down %i"},
		{daemon, "Service", "ExecReload", "/usr/local/bin/urbd adjust %i"},
		{daemon, "Service", "Restart", "on-failure"},
		{daemon, "Service", "RestartSec", "2s"},
		{daemon, "Service", "RuntimeDirectory", "urbd"},
		{daemon, "Service", "RuntimeDirectoryPreserve", "yes"},
		{daemon, "Service", "LimitNOFILE", "65536"},
		{daemon, "Install", "WantedBy", "multi-user.target"},
		{attach, "Unit", "Requires", "urbd@%i.service"},
		{attach, "Unit", "After", "urbd@%i.service"},
		{attach, "Service", "EnvironmentFile", "/etc/urbd/attach-%i.env"},
		{attach, "Service", "Type", "notify"},
		{attach, "Service", "Restart", "on-failure"},
		{verify, "Unit", "Requires", "urbd@%i.service"},
		{verify, "Service", "Type", "oneshot"},
		{verify, "Service", "ExecStart", "/usr/local/bin/urbd verify %i"},
		{timer, "Timer", "Persistent", "true"},
		{timer, "Install", "WantedBy", "timers.target"},
	} {
		got := tc.unit[tc.section][tc.key]
		if len(got) != 1 || got[0] != tc.is {
			t.Errorf("[%s] %s = %q, want %q", tc.section, tc.key, got, tc.is)
		}
	}
	// urbd refuses flags after the resource name: none may follow %i.
	for _, u := range []map[string]map[string][]string{daemon, attach, verify} {
		for _, key := range []string{"ExecStart", "ExecStop", "ExecReload"} {
			for _, cmd := range u["Service"][key] {
				f := strings.Fields(cmd)
				for i, a := range f {
					if a == "%i" && i != len(f)-1 {
						t.Errorf("%s=%s: arguments after the resource name", key, cmd)
					}
				}
			}
		}
	}
}

// TestUnitsVerify runs systemd-analyze verify on instances of both
// templates, with the urbd binary replaced by a stub (verify checks that
// commands exist). Any warning fails the test.
func TestUnitsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatalf("systemd-analyze not found (package systemd): %v", err)
	}
	dir := t.TempDir()
	stub := filepath.Join(dir, "urbd")
	if err := os.WriteFile(stub, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, u := range unitFiles {
		data, err := os.ReadFile(filepath.Join("..", "scripts", u))
		if err != nil {
			t.Fatal(err)
		}
		data = bytes.ReplaceAll(data, []byte("/usr/local/bin/urbd"), []byte(stub))
		if err := os.WriteFile(filepath.Join(dir, u), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(analyze, "verify", "--man=no",
		filepath.Join(dir, "urbd@r0.service"), filepath.Join(dir, "urbd-attach@r0.service"),
		filepath.Join(dir, "urbd-verify@r0.service"), filepath.Join(dir, "urbd-verify@r0.timer"))
	cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+dir+":", "SYSTEMD_LOG_COLOR=0")
	var stderr bytes.Buffer
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	err = cmd.Run()
	if err != nil || stderr.Len() > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, stderr.String())
	}
}
