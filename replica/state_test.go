package replica_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/urbd/urbd/replica"
)

// st builds a State for the tables: role, peer role, connection and disk.
func st(role, peerRole replica.Role, conn replica.ConnState, disk replica.DiskState) replica.State {
	return replica.State{Name: "r0", Role: role, PeerRole: peerRole, Conn: conn, Disk: disk, PeerDisk: replica.UpToDate}
}

// checkRefusal checks a refusal: nil when want is nil, otherwise an error
// wrapping want whose message names the resource and contains every hint
// (what the operator should do).
func checkRefusal(t *testing.T, err, want error, hints ...string) {
	t.Helper()
	if want == nil {
		if err != nil {
			t.Fatalf("refused: %v", err)
		}
		return
	}
	if !errors.Is(err, want) {
		t.Fatalf("error %v, want one wrapping %v", err, want)
	}
	for _, h := range hints {
		if !strings.Contains(err.Error(), h) {
			t.Fatalf("error %q does not say %q", err, h)
		}
	}
}

func TestStateCanPromote(t *testing.T) {
	P, S, U := replica.Primary, replica.Secondary, replica.RoleUnknown
	tests := []struct {
		story string
		s     replica.State
		force bool
		want  error
		hints []string
	}{
		{"an UpToDate secondary with a secondary peer", st(S, S, replica.Connected, replica.UpToDate), false, nil, nil},
		{"an UpToDate secondary alone", st(S, U, replica.WFConnection, replica.UpToDate), false, nil, nil},
		{"an UpToDate standalone secondary", st(S, U, replica.StandAlone, replica.UpToDate), false, nil, nil},
		{"already Primary is a no-op", st(P, S, replica.Connected, replica.UpToDate), false, nil, nil},
		{"already Primary even if Inconsistent", st(P, S, replica.Connected, replica.Inconsistent), false, nil, nil},
		{"the connected peer is Primary", st(S, P, replica.Connected, replica.UpToDate), false, replica.ErrPeerPrimary, []string{"urbd secondary r0", "other node"}},
		{"the peer is Primary, force does not help", st(S, P, replica.Connected, replica.UpToDate), true, replica.ErrPeerPrimary, []string{"demote the peer"}},
		{"the peer is Primary while we are SyncSource", st(S, P, replica.SyncSource, replica.UpToDate), true, replica.ErrPeerPrimary, nil},
		{"a stale peer role does not count when disconnected", st(S, P, replica.WFConnection, replica.UpToDate), false, nil, nil},
		{"SyncTarget must finish first", st(S, S, replica.SyncTarget, replica.Inconsistent), false, replica.ErrSyncing, []string{"SyncTarget", "wait"}},
		{"SyncTarget even with force", st(S, S, replica.SyncTarget, replica.Inconsistent), true, replica.ErrSyncing, nil},
		{"Behind a demoted Ahead peer, even with force", st(S, S, replica.Behind, replica.Outdated), true, replica.ErrSyncing, []string{"Behind", "disconnect first"}},
		{"Inconsistent needs force", st(S, S, replica.Connected, replica.Inconsistent), false, replica.ErrNotUpToDate, []string{"Inconsistent", "urbd primary --force r0"}},
		{"Outdated needs force", st(S, U, replica.WFConnection, replica.Outdated), false, replica.ErrNotUpToDate, []string{"Outdated", "--force"}},
		{"Inconsistent with force wins", st(S, S, replica.Connected, replica.Inconsistent), true, nil, nil},
		{"Outdated alone with force", st(S, U, replica.StandAlone, replica.Outdated), true, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.story, func(t *testing.T) {
			checkRefusal(t, tt.s.CanPromote(tt.force), tt.want, tt.hints...)
		})
	}
}

func TestStateCanDemote(t *testing.T) {
	P, S := replica.Primary, replica.Secondary
	tests := []struct {
		story   string
		s       replica.State
		force   bool
		clients int
		want    error
		hints   []string
	}{
		{"a primary without clients", st(P, S, replica.Connected, replica.UpToDate), false, 0, nil, nil},
		{"a primary with a client", st(P, S, replica.Connected, replica.UpToDate), false, 1, replica.ErrClientsAttach, []string{"(1)", "detach", "urbd secondary --force r0"}},
		{"a primary with clients, alone", st(P, replica.RoleUnknown, replica.WFConnection, replica.UpToDate), false, 3, replica.ErrClientsAttach, []string{"(3)"}},
		{"force with clients", st(P, S, replica.Connected, replica.UpToDate), true, 2, nil, nil},
		{"already Secondary with clients is a no-op", st(S, P, replica.Connected, replica.UpToDate), false, 5, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.story, func(t *testing.T) {
			checkRefusal(t, tt.s.CanDemote(tt.force, tt.clients), tt.want, tt.hints...)
		})
	}
}

func TestStateCanServe(t *testing.T) {
	tests := []struct {
		story string
		s     replica.State
		want  error
		hints []string
	}{
		{"a primary serves", st(replica.Primary, replica.Secondary, replica.Connected, replica.UpToDate), nil, nil},
		{"a primary alone serves", st(replica.Primary, replica.RoleUnknown, replica.StandAlone, replica.UpToDate), nil, nil},
		{"a secondary refuses", st(replica.Secondary, replica.Primary, replica.Connected, replica.UpToDate), replica.ErrIsSecondary, []string{"Secondary", "urbd primary r0"}},
		{"a secondary alone refuses", st(replica.Secondary, replica.RoleUnknown, replica.WFConnection, replica.UpToDate), replica.ErrIsSecondary, []string{"urbd primary r0"}},
	}
	for _, tt := range tests {
		t.Run(tt.story, func(t *testing.T) {
			checkRefusal(t, tt.s.CanServe(), tt.want, tt.hints...)
		})
	}
}

func TestStateCanDiscard(t *testing.T) {
	tests := []struct {
		story string
		s     replica.State
		want  error
		hints []string
	}{
		{"a split-brain secondary may discard", replica.State{Name: "r0", Role: replica.Secondary, Conn: replica.StandAlone, SplitBrain: true}, nil, nil},
		{"a connected secondary may discard", st(replica.Secondary, replica.Primary, replica.Connected, replica.UpToDate), nil, nil},
		{"a primary may not", st(replica.Primary, replica.RoleUnknown, replica.StandAlone, replica.UpToDate), replica.ErrDiscardPrimary, []string{"demote", "urbd secondary r0"}},
	}
	for _, tt := range tests {
		t.Run(tt.story, func(t *testing.T) {
			checkRefusal(t, tt.s.CanDiscard(), tt.want, tt.hints...)
		})
	}
}

// TestStateRefusalsAreDistinct: every refusal sentinel is its own error, so
// callers can tell them apart with errors.Is.
func TestStateRefusalsAreDistinct(t *testing.T) {
	all := []error{replica.ErrPeerPrimary, replica.ErrNotUpToDate, replica.ErrClientsAttach, replica.ErrIsSecondary,
		replica.ErrSyncing, replica.ErrNotConnected, replica.ErrPeerLost, replica.ErrSplitBrain, replica.ErrRefused, replica.ErrDiscardPrimary}
	for i, a := range all {
		if !strings.HasPrefix(a.Error(), "replica: ") {
			t.Errorf("%q lacks the package prefix", a)
		}
		for j, b := range all {
			if i != j && errors.Is(a, b) {
				t.Errorf("%v matches %v", a, b)
			}
		}
	}
}

func TestStateNames(t *testing.T) {
	tests := []struct{ got, want string }{
		{replica.StandAlone.String(), "StandAlone"},
		{replica.WFConnection.String(), "WFConnection"},
		{replica.Connected.String(), "Connected"},
		{replica.SyncSource.String(), "SyncSource"},
		{replica.SyncTarget.String(), "SyncTarget"},
		{replica.VerifyS.String(), "VerifyS"},
		{replica.VerifyT.String(), "VerifyT"},
		{replica.ConnState(99).String(), "ConnState(99)"},
		{replica.Primary.String(), "Primary"},
		{replica.Secondary.String(), "Secondary"},
		{replica.RoleUnknown.String(), "Unknown"},
		{replica.DUnknown.String(), "DUnknown"},
		{replica.Inconsistent.String(), "Inconsistent"},
		{replica.Outdated.String(), "Outdated"},
		{replica.UpToDate.String(), "UpToDate"},
		{replica.DiskState(42).String(), "DiskState(42)"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
	for _, d := range []replica.DiskState{replica.DUnknown, replica.Inconsistent, replica.Outdated, replica.UpToDate} {
		if got := replica.ParseDiskState(d.String()); got != d {
			t.Errorf("ParseDiskState(%q) = %v", d, got)
		}
	}
	for _, s := range []string{"", "uptodate", "UpToDate ", "DiskState(42)"} {
		if got := replica.ParseDiskState(s); got != replica.Inconsistent {
			t.Errorf("ParseDiskState(%q) = %v, want the safe Inconsistent", s, got)
		}
	}
	if !replica.Connected.Connected() || !replica.VerifyT.Connected() || replica.WFConnection.Connected() || replica.StandAlone.Connected() {
		t.Error("ConnState.Connected is wrong")
	}
}
