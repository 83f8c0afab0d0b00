package config

import (
	"strconv"
	"strings"
)

// lineIndex maps TOML key paths to the line where they first appear, so
// that errors found after decoding (unknown keys, missing nodes, duplicate
// addresses) can name a line. The TOML library reports lines only for its
// own errors; this scanner is a lenient approximation that understands table
// headers, dotted and quoted keys, comments and multi-line strings. Keys it
// cannot see (inside inline tables or arrays) fall back to the nearest
// enclosing key it saw.
type lineIndex map[string]int

func pathKey(path []string) string { return strings.Join(path, "\x00") }

// line returns the line of path, or of its longest prefix that has one, or
// 0 when nothing matches.
func (ix lineIndex) line(path ...string) int {
	for n := len(path); n > 0; n-- {
		if l, ok := ix[pathKey(path[:n])]; ok {
			return l
		}
	}
	return 0
}

func (ix lineIndex) record(path []string, line int) {
	for n := 1; n <= len(path); n++ {
		k := pathKey(path[:n])
		if _, ok := ix[k]; !ok {
			ix[k] = line
		}
	}
}

// indexLines scans src line by line. It never fails: what it does not
// understand it skips.
func indexLines(src string) lineIndex {
	ix := lineIndex{}
	var table []string
	inMulti := "" // the delimiter of the multi-line string being skipped
	for i, raw := range strings.Split(src, "\n") {
		lineNo := i + 1
		s := raw
		if inMulti != "" {
			// Whatever follows the closing delimiter on the same line is a
			// comma or a comment in any sensible file.
			if strings.Contains(s, inMulti) {
				inMulti = ""
			}
			continue
		}
		s = strings.TrimLeft(s, " \t")
		switch {
		case s == "" || s[0] == '#':
			continue
		case strings.HasPrefix(s, "[["):
			if key, rest, ok := parseKey(s[2:]); ok && strings.HasPrefix(strings.TrimLeft(rest, " \t"), "]]") {
				table = key
				ix.record(table, lineNo)
			}
			continue
		case s[0] == '[':
			if key, rest, ok := parseKey(s[1:]); ok && strings.HasPrefix(strings.TrimLeft(rest, " \t"), "]") {
				table = key
				ix.record(table, lineNo)
			}
			continue
		}
		key, rest, ok := parseKey(s)
		if !ok {
			continue
		}
		rest = strings.TrimLeft(rest, " \t")
		if !strings.HasPrefix(rest, "=") {
			continue
		}
		full := append(append([]string(nil), table...), key...)
		ix.record(full, lineNo)
		inMulti = openMultiline(rest[1:])
	}
	return ix
}

// openMultiline reports the delimiter of a multi-line string that value
// opens and does not close on the same line, or "".
func openMultiline(value string) string {
	v := strings.TrimLeft(value, " \t")
	for _, d := range []string{`"""`, `'''`} {
		if strings.HasPrefix(v, d) && !strings.Contains(v[3:], d) {
			return d
		}
	}
	return ""
}

// parseKey reads a possibly dotted, possibly quoted TOML key at the start of
// s and returns its segments and the text after it.
func parseKey(s string) (key []string, rest string, ok bool) {
	for {
		s = strings.TrimLeft(s, " \t")
		if s == "" {
			return nil, "", false
		}
		var seg string
		switch s[0] {
		case '"':
			end := 1
			for end < len(s) && s[end] != '"' {
				if s[end] == '\\' {
					end++
				}
				end++
			}
			if end >= len(s) {
				return nil, "", false
			}
			q := s[:end+1]
			if u, err := strconv.Unquote(q); err == nil {
				seg = u
			} else {
				seg = q[1 : len(q)-1]
			}
			s = s[end+1:]
		case '\'':
			end := strings.IndexByte(s[1:], '\'')
			if end < 0 {
				return nil, "", false
			}
			seg = s[1 : end+1]
			s = s[end+2:]
		default:
			end := 0
			for end < len(s) && isBare(s[end]) {
				end++
			}
			if end == 0 {
				return nil, "", false
			}
			seg = s[:end]
			s = s[end:]
		}
		key = append(key, seg)
		s = strings.TrimLeft(s, " \t")
		if strings.HasPrefix(s, ".") {
			s = s[1:]
			continue
		}
		return key, s, true
	}
}

func isBare(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}
