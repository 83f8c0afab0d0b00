// Package units parses and prints the sizes and rates of urbd's command line:
// "4096", "4KiB", "64MiB", "1GiB" (powers of 1024; "K", "KB", "M", "MB", "G",
// "GB", "T" are accepted as the same), and rates as a size per second with an
// optional "/s" suffix.
package units

import (
	"fmt"
	"strconv"
	"strings"
)

var suffixes = []struct {
	names []string
	mult  int64
}{
	{[]string{"tib", "t", "tb"}, 1 << 40},
	{[]string{"gib", "g", "gb"}, 1 << 30},
	{[]string{"mib", "m", "mb"}, 1 << 20},
	{[]string{"kib", "k", "kb"}, 1 << 10},
	{[]string{"b", ""}, 1},
}

// ParseSize parses a byte count such as "4096", "4KiB" or "1GiB".
func ParseSize(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	for _, suf := range suffixes {
		for _, name := range suf.names {
			if !strings.HasSuffix(t, name) {
				continue
			}
			num := strings.TrimSpace(strings.TrimSuffix(t, name))
			if num == "" {
				continue
			}
			n, err := strconv.ParseFloat(num, 64)
			if err != nil || n < 0 {
				continue
			}
			v := n * float64(suf.mult)
			if v > float64(1<<62) {
				return 0, fmt.Errorf("size %q is too large", s)
			}
			return int64(v), nil
		}
	}
	return 0, fmt.Errorf("invalid size %q: use a number of bytes or a suffix, e.g. 4096, 4KiB, 64MiB, 1GiB", s)
}

// ParseRate parses a rate in bytes per second such as "100MiB" or "100MiB/s".
func ParseRate(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSpace(s), "/s")
	n, err := ParseSize(t)
	if err != nil {
		return 0, fmt.Errorf("invalid rate %q: use a size per second, e.g. 250KiB, 100MiB", s)
	}
	return n, nil
}

// FormatSize prints n bytes with the largest binary suffix that keeps it exact
// to one decimal, e.g. 4096 -> "4KiB", 1610612736 -> "1.5GiB".
func FormatSize(n int64) string {
	for _, suf := range suffixes[:4] {
		if n >= suf.mult {
			v := float64(n) / float64(suf.mult)
			if v == float64(int64(v)) {
				return fmt.Sprintf("%d%s", int64(v), suffixName(suf.mult))
			}
			return fmt.Sprintf("%.1f%s", v, suffixName(suf.mult))
		}
	}
	return strconv.FormatInt(n, 10)
}

func suffixName(mult int64) string {
	switch mult {
	case 1 << 40:
		return "TiB"
	case 1 << 30:
		return "GiB"
	case 1 << 20:
		return "MiB"
	default:
		return "KiB"
	}
}
