package config

import (
	"github.com/urbd/urbd/replica"

	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/urbd/urbd/internal/units"
)

// The value types below decode and check one setting each. The TOML library
// turns their UnmarshalText errors into errors carrying the key's line.

// sizeValue is a byte count such as "4KiB" or 4096.
type sizeValue struct {
	n   int64
	set bool
}

func (v *sizeValue) UnmarshalText(b []byte) error {
	n, err := units.ParseSize(string(b))
	if err != nil {
		return err
	}
	v.n, v.set = n, true
	return nil
}

// countValue is a plain count such as 3389.
type countValue struct {
	n   int64
	set bool
}

func (v *countValue) UnmarshalText(b []byte) error {
	n, err := strconv.ParseInt(string(b), 10, 32)
	if err != nil {
		return fmt.Errorf("invalid number %q: use a whole number such as 3389", b)
	}
	v.n, v.set = n, true
	return nil
}

// rateValue is a rate in bytes per second such as "100MiB" or "100MiB/s".
type rateValue struct {
	n   int64
	set bool
}

func (v *rateValue) UnmarshalText(b []byte) error {
	n, err := units.ParseRate(string(b))
	if err != nil {
		return err
	}
	if n <= 0 {
		return fmt.Errorf("invalid rate %q: must be more than 0, e.g. 100MiB", b)
	}
	v.n, v.set = n, true
	return nil
}

// durationValue is a Go duration such as "6s" or "1m30s".
type durationValue struct {
	d   time.Duration
	set bool
}

func (v *durationValue) UnmarshalText(b []byte) error {
	d, err := time.ParseDuration(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("invalid duration %q: use a number with a unit, e.g. 6s, 500ms, 1m", b)
	}
	if d <= 0 {
		return fmt.Errorf("invalid duration %q: must be more than 0", b)
	}
	v.d, v.set = d, true
	return nil
}

// diskTimeoutValue is a disk-timeout (replica.ParseDiskTimeout): a
// duration such as "30s", or 0 for off.
type diskTimeoutValue struct {
	d   time.Duration
	set bool
}

func (v *diskTimeoutValue) UnmarshalText(b []byte) error {
	d, err := replica.ParseDiskTimeout(string(b))
	if err != nil {
		return err
	}
	v.d, v.set = d, true
	return nil
}

// protocolValue is the replication protocol: A, B or C.
type protocolValue struct{ s string }

func (v *protocolValue) UnmarshalText(b []byte) error {
	s := strings.ToUpper(strings.TrimSpace(string(b)))
	switch s {
	case "A", "B", "C":
		v.s = s
		return nil
	}
	return fmt.Errorf("invalid protocol %q: use A, B or C", b)
}

// peerLossValue is the on-peer-loss policy.
type peerLossValue struct{ s string }

// On-peer-loss policies.
const (
	OnPeerLossContinue = "continue"
	OnPeerLossSuspend  = "suspend"
)

func (v *peerLossValue) UnmarshalText(b []byte) error {
	s := strings.ToLower(strings.TrimSpace(string(b)))
	switch s {
	case OnPeerLossContinue, OnPeerLossSuspend:
		v.s = s
		return nil
	}
	return fmt.Errorf("invalid on-peer-loss %q: use continue or suspend", b)
}

// policyValue is a policy name, lowercased, that check accepts (fencing,
// after-sb-0pri, after-sb-1pri, on-io-error: replica's parsers decide).
type policyValue struct{ s string }

func (v *policyValue) set(b []byte, check func(string) error) error {
	s := strings.ToLower(strings.TrimSpace(string(b)))
	if err := check(s); err != nil {
		return err
	}
	v.s = s
	return nil
}

// fencingValue is the fencing policy (replica.ParseFencing's names).
type fencingValue struct{ policyValue }

func (v *fencingValue) UnmarshalText(b []byte) error {
	return v.set(b, func(s string) error { _, err := replica.ParseFencing(s); return err })
}

// afterSB0Value is an after-sb-0pri policy (replica.ParseAfterSB0's names).
type afterSB0Value struct{ policyValue }

func (v *afterSB0Value) UnmarshalText(b []byte) error {
	return v.set(b, func(s string) error { _, err := replica.ParseAfterSB0(s); return err })
}

// afterSB1Value is an after-sb-1pri policy (replica.ParseAfterSB1's names).
type afterSB1Value struct{ policyValue }

func (v *afterSB1Value) UnmarshalText(b []byte) error {
	return v.set(b, func(s string) error { _, err := replica.ParseAfterSB1(s); return err })
}

// onIOErrorValue is an on-io-error policy (replica.ParseOnIOError's names).
type onIOErrorValue struct{ policyValue }

func (v *onIOErrorValue) UnmarshalText(b []byte) error {
	return v.set(b, func(s string) error { _, err := replica.ParseOnIOError(s); return err })
}

// readBalancingValue is a read-balancing policy, kept as
// replica.ReadBalancing.String spells it.
type readBalancingValue struct{ s string }

func (v *readBalancingValue) UnmarshalText(b []byte) error {
	p, err := replica.ParseReadBalancing(strings.TrimSpace(string(b)))
	if err != nil {
		return err
	}
	v.s = p.String()
	return nil
}

// csumsAlgValue is a csums-alg (replica.ParseCsumsAlg's names).
type csumsAlgValue struct{ policyValue }

func (v *csumsAlgValue) UnmarshalText(b []byte) error {
	return v.set(b, func(s string) error { _, err := replica.ParseCsumsAlg(s); return err })
}

// congestionValue is a tcp-congestion name (replica.ParseCongestion's).
type congestionValue struct{ policyValue }

func (v *congestionValue) UnmarshalText(b []byte) error {
	return v.set(b, func(s string) error { _, err := replica.ParseCongestion(s); return err })
}

// onCongestionValue is an on-congestion policy (replica.ParseOnCongestion's
// names).
type onCongestionValue struct{ policyValue }

func (v *onCongestionValue) UnmarshalText(b []byte) error {
	return v.set(b, func(s string) error { _, err := replica.ParseOnCongestion(s); return err })
}

// autoPromoteValue is auto-promote: "yes" or "no", or a TOML boolean.
type autoPromoteValue struct{ policyValue }

func (v *autoPromoteValue) UnmarshalTOML(data any) error {
	switch x := data.(type) {
	case bool:
		v.s = map[bool]string{true: "yes", false: "no"}[x]
		return nil
	case string:
		return v.set([]byte(x), func(s string) error { _, err := replica.ParseAutoPromote(s); return err })
	}
	return fmt.Errorf("auto-promote %v: use yes or no", data)
}
