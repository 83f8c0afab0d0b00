package status

import (
	"strconv"
	"strings"
)

// An event line, as `urbd events` prints it, in the shape of DRBD's
// `drbdsetup events2`: a kind, the object, then key:value fields:
//
//	exists resource name:r0 role:Primary peer-role:Secondary cstate:Connected disk:UpToDate peer-disk:UpToDate protocol:C suspended:no split-brain:no blocked:no reason:"promoted by operator"
//	exists -
//	change resource name:r0 cstate:WFConnection peer-role:Unknown peer-disk:DUnknown reason:"peer lost: ..."
//	change resource name:r0 blocked:peer
//	destroy resource name:r0
//	create resource name:r0 role:Secondary peer-role:Unknown cstate:WFConnection ...
//
// "exists" describes a resource as it is when the stream starts (every
// field), "exists -" ends that first listing, "change" gives the fields
// that differ from the resource's previous line, "destroy" says its
// daemon went away, and "create" describes, with every field, a resource
// whose daemon started after the listing. blocked is the status's fifth
// flag in a word: no, or what requests have waited on for 2 s with none
// completing, disk, peer or both; unlike the other fields it follows
// time, not a state change, and changes at most once a second. Values
// never contain spaces, except the reason, which is quoted as a Go string
// literal and always comes last.
const (
	EventExists  = "exists"
	EventChange  = "change"
	EventDestroy = "destroy"
	EventCreate  = "create"
)

// eventFields are the fields of a resource line, in the order printed.
var eventFields = []struct {
	key string
	get func(*Resource) string
}{
	{"role", func(r *Resource) string { return r.Role }},
	{"peer-role", func(r *Resource) string { return r.PeerRole }},
	{"cstate", func(r *Resource) string { return r.ConnState }},
	{"disk", func(r *Resource) string { return r.DiskState }},
	{"peer-disk", func(r *Resource) string { return r.PeerDisk }},
	{"protocol", func(r *Resource) string { return r.Protocol }},
	{"suspended", func(r *Resource) string { return yesNo(r.Suspended) }},
	{"split-brain", func(r *Resource) string { return yesNo(r.SplitBrain) }},
	{"blocked", (*Resource).BlockedOn},
	{"reason", func(r *Resource) string { return strconv.Quote(r.Reason) }},
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// EventLine formats one event line for cur: an "exists" line with every
// field when prev is nil, otherwise a "change" line with the fields that
// differ from prev, or "" when none does. The line has no newline.
func EventLine(prev, cur *Resource) string {
	kind := EventExists
	if prev != nil {
		kind = EventChange
	}
	return eventLine(kind, prev, cur)
}

// CreateLine is the "create" line, with every field, of a resource whose
// daemon started after the listing.
func CreateLine(cur *Resource) string { return eventLine(EventCreate, nil, cur) }

func eventLine(kind string, prev, cur *Resource) string {
	var b strings.Builder
	b.WriteString(kind + " resource name:" + cur.Name)
	changed := false
	for _, f := range eventFields {
		v := f.get(cur)
		if prev != nil && f.get(prev) == v {
			continue
		}
		changed = true
		b.WriteString(" " + f.key + ":" + v)
	}
	if !changed {
		return ""
	}
	return b.String()
}

// DestroyLine is the line that says resource name's daemon went away.
func DestroyLine(name string) string { return EventDestroy + " resource name:" + name }
