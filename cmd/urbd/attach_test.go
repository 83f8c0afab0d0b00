package main

import (
	"net"
	"path/filepath"
	"testing"
)

func TestSdNotifySendsState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify.sock")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	if err := sdNotify("READY=1"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := ln.Read(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Fatalf("got %q, %v", buf[:n], err)
	}
}

func TestSdNotifyWithoutSystemdIsANoOp(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if err := sdNotify("READY=1"); err != nil {
		t.Fatalf("sdNotify without NOTIFY_SOCKET: %v", err)
	}
}

func TestAttachPIDFileIsPerDevice(t *testing.T) {
	a, b := attachPIDFile("/run/urbd", 0), attachPIDFile("/run/urbd", 1)
	if a == b || filepath.Dir(a) != "/run/urbd/attach" {
		t.Fatalf("pid files %q and %q", a, b)
	}
}
