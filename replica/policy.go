package replica

import (
	"fmt"
	"strings"
)

// The policies set by name (fencing, after-sb-0pri, after-sb-1pri,
// on-io-error) are small integers indexing a list of DRBD's names; the first
// name is the default.

// policyName is the name of value v in names.
func policyName(names []string, v uint8) string {
	if int(v) < len(names) {
		return names[v]
	}
	return fmt.Sprintf("unknown(%d)", v)
}

// parsePolicy returns the index of s in names; "" is the default (index 0).
// what names the setting in the error.
func parsePolicy(what string, names []string, s string) (uint8, error) {
	if s == "" {
		return 0, nil
	}
	for i, n := range names {
		if n == s {
			return uint8(i), nil
		}
	}
	last := len(names) - 1
	return 0, fmt.Errorf("unknown %s policy %q: use %s or %s", what, s, strings.Join(names[:last], ", "), names[last])
}
