package daemon

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/urbd/urbd/replica"
)

// TestPeerCongestion: without --tcp-congestion the peer connection asks for
// cubic, or keeps the kernel's default with a warning where this process
// may not use cubic; a name the operator gave must be usable; system means
// the kernel's default.
func TestPeerCongestion(t *testing.T) {
	refuse := map[string]bool{}
	checkCongestion = func(name string) error {
		if refuse[name] {
			return errors.New("tcp-congestion " + name + ": not allowed for this process")
		}
		if name == "nosuch" {
			return replica.CheckCongestion(name) // the kernel's own refusal
		}
		return nil
	}
	t.Cleanup(func() { checkCongestion = replica.CheckCongestion })

	for _, tc := range []struct {
		configured string
		refused    string
		want       string
		wantErr    string
		wantWarn   bool
	}{
		{configured: "", want: "cubic"},
		{configured: "", refused: "cubic", want: "", wantWarn: true},
		{configured: "system", want: ""},
		{configured: "Reno", want: "reno"},
		{configured: "reno", refused: "reno", wantErr: "--tcp-congestion reno: not allowed"},
		{configured: "nosuch", wantErr: "--tcp-congestion nosuch: not available"},
		{configured: "cu bic", wantErr: `--tcp-congestion "cu bic": use a congestion control`},
	} {
		clear(refuse)
		if tc.refused != "" {
			refuse[tc.refused] = true
		}
		var logs bytes.Buffer
		got, err := peerCongestion(tc.configured, slog.New(slog.NewTextHandler(&logs, nil)))
		switch {
		case tc.wantErr != "":
			if err == nil || !strings.HasPrefix(err.Error(), tc.wantErr) {
				t.Errorf("%q (refused %q): %q, %v; want the error %q...", tc.configured, tc.refused, got, err, tc.wantErr)
			}
		case err != nil || got != tc.want:
			t.Errorf("%q (refused %q): %q, %v; want %q", tc.configured, tc.refused, got, err, tc.want)
		}
		if warned := strings.Contains(logs.String(), "level=WARN"); warned != tc.wantWarn {
			t.Errorf("%q (refused %q): warned %v, want %v: %s", tc.configured, tc.refused, warned, tc.wantWarn, logs.String())
		}
	}
}
