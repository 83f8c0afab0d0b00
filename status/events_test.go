package status

import "testing"

func TestEventLine(t *testing.T) {
	r := Resource{Name: "r0", Role: "Primary", PeerRole: "Secondary", ConnState: "Connected", DiskState: "UpToDate",
		PeerDisk: "UpToDate", Protocol: "C", Reason: "promoted by operator"}
	want := `exists resource name:r0 role:Primary peer-role:Secondary cstate:Connected disk:UpToDate peer-disk:UpToDate protocol:C suspended:no split-brain:no blocked:no reason:"promoted by operator"`
	if got := EventLine(nil, &r); got != want {
		t.Errorf("exists:\n got %s\nwant %s", got, want)
	}
	next := r
	next.ConnState, next.PeerRole, next.PeerDisk, next.Suspended = "WFConnection", "Unknown", "DUnknown", true
	next.Reason = `peer lost: "read: connection reset"`
	next.NetSendKiB = 123 // counters are not events
	want = `change resource name:r0 peer-role:Unknown cstate:WFConnection peer-disk:DUnknown suspended:yes reason:"peer lost: \"read: connection reset\""`
	if got := EventLine(&r, &next); got != want {
		t.Errorf("change:\n got %s\nwant %s", got, want)
	}
	counters := next
	counters.OutOfSyncKiB = 4
	if got := EventLine(&next, &counters); got != "" {
		t.Errorf("a change of counters only: %q, want no line", got)
	}
	// blocked follows the two stall measures; their seconds are not events.
	for _, c := range []struct {
		disk, peer int64
		want       string
	}{
		{3, 0, "change resource name:r0 blocked:disk"},
		{0, 2, "change resource name:r0 blocked:peer"},
		{5, 7, "change resource name:r0 blocked:both"},
		{0, 0, ""},
	} {
		cur := counters
		cur.DiskBlockedSeconds, cur.PeerBlockedSeconds = c.disk, c.peer
		prev := cur // a second earlier
		if c.disk > 0 {
			prev.DiskBlockedSeconds--
		}
		if c.peer > 0 {
			prev.PeerBlockedSeconds--
		}
		if got := EventLine(&counters, &cur); got != c.want {
			t.Errorf("blocked %ds on the disk, %ds on the peer: %q, want %q", c.disk, c.peer, got, c.want)
		}
		if got := EventLine(&prev, &cur); got != "" {
			t.Errorf("blocked %ds on the disk, %ds on the peer, a second later: %q, want no line", c.disk, c.peer, got)
		}
	}
	if got, want := CreateLine(&r), "create"+EventLine(nil, &r)[len("exists"):]; got != want {
		t.Errorf("create:\n got %s\nwant %s", got, want)
	}
	if got := DestroyLine("r0"); got != "destroy resource name:r0" {
		t.Errorf("destroy: %q", got)
	}
}
