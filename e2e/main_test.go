// Package e2e tests urbd the way users run it: the real binary, real NBD
// clients (nbdinfo, qemu-io, nbdcopy, fio, nbdfuse), real processes in network
// namespaces, and a real Linux kernel in a VM. Tests need root and the packages
// of scripts/install-deps.sh; they fail, never skip, when those are missing.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// urbdBin is the urbd binary built once for the whole suite.
var urbdBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "urbd-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(2)
	}
	urbdBin = filepath.Join(dir, "urbd")
	build := exec.Command("go", "build", "-o", urbdBin, "../cmd/urbd")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building urbd:", err)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireRoot fails the test unless it runs as root (CI does).
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (network namespaces, loop devices, FUSE)")
	}
}

// requireCmds fails the test when a command it needs is not installed.
func requireCmds(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Fatalf("%s is not installed: run scripts/install-deps.sh", n)
		}
	}
}
