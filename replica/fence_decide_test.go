package replica

import (
	"errors"
	"testing"
)

// TestDecideFence: what each fence-peer exit code means under each policy
// (DRBD's codes; exit 5 releases writes only with resource-only and an
// UpToDate local disk).
func TestDecideFence(t *testing.T) {
	cases := []struct {
		code        int
		err         error
		policy      Fencing
		local       DiskState
		fenced      bool
		peerDisk    DiskState
		outdateSelf bool
	}{
		{3, nil, FenceResourceAndStonith, UpToDate, true, Inconsistent, false},
		{4, nil, FenceResourceAndStonith, UpToDate, true, Outdated, false},
		{4, nil, FenceResourceOnly, UpToDate, true, Outdated, false},
		{5, nil, FenceResourceOnly, UpToDate, true, Outdated, false},
		{5, nil, FenceResourceOnly, Outdated, false, DUnknown, false},
		{5, nil, FenceResourceAndStonith, UpToDate, false, DUnknown, false},
		{6, nil, FenceResourceOnly, UpToDate, false, DUnknown, true},
		{6, nil, FenceResourceAndStonith, UpToDate, false, DUnknown, true},
		{7, nil, FenceResourceAndStonith, UpToDate, true, Outdated, false},
		{0, nil, FenceResourceAndStonith, UpToDate, false, DUnknown, false},
		{1, nil, FenceResourceOnly, UpToDate, false, DUnknown, false},
		{-1, errors.New("killed at its timeout"), FenceResourceOnly, UpToDate, false, DUnknown, false},
	}
	for _, c := range cases {
		got := decideFence(c.code, c.err, c.policy, c.local)
		if got.fenced != c.fenced || got.peerDisk != c.peerDisk || got.outdateSelf != c.outdateSelf || got.what == "" {
			t.Errorf("exit %d (%v) with %s, local %s: %+v; want fenced %v, peer %s, outdate self %v",
				c.code, c.err, c.policy, c.local, got, c.fenced, c.peerDisk, c.outdateSelf)
		}
	}
}

// TestParseFencing: the policy names round-trip, and anything else is
// refused with the valid names.
func TestParseFencing(t *testing.T) {
	for _, f := range []Fencing{FenceDontCare, FenceResourceOnly, FenceResourceAndStonith} {
		if got, err := ParseFencing(f.String()); err != nil || got != f {
			t.Errorf("ParseFencing(%q) = %v, %v", f.String(), got, err)
		}
	}
	if _, err := ParseFencing("stonith"); err == nil {
		t.Error("ParseFencing accepted stonith")
	}
}
