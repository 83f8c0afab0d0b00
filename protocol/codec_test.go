package protocol

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"reflect"
	"testing"
)

// sampleMessages holds at least one message of every kind, the way Recv
// returns them (pointers, nil for empty slices).
func sampleMessages() []Message {
	var sums [3]Sum
	for i := range sums {
		sums[i][0], sums[i][31] = byte(i+1), 0xee
	}
	return []Message{
		&Hello{Version: Version, Resource: "r0", Size: 1 << 30, NodeID: 42, BitmapBlock: 4096},
		&Hello{Version: 8, Resource: string(bytes.Repeat([]byte{'x'}, MaxResource))},
		&Refuse{Code: RefuseSize, Reason: "disk size mismatch: local 1 bytes, peer 2 bytes"},
		&Refuse{Code: 300},
		&AuthChallenge{Mode: AuthHMAC, Nonce: [NonceLen]byte{1, 2, 3, 31: 9}},
		&AuthChallenge{Mode: AuthNone},
		&AuthResponse{MAC: [MACLen]byte{0: 0xff, 31: 1}},
		&AuthOK{},
		&StreamOpen{Stream: StreamResync},
		&State{Role: RolePrimary, Disk: DiskUpToDate, Flags: FlagDiscardMyData | 1<<31, OutOfSync: 1<<40 + 7,
			UUIDs: UUIDs{Current: 1, Bitmap: 2, History: [2]uint64{3, 1<<64 - 1}}},
		&Ping{Seq: 1},
		&PingAck{Seq: 1<<64 - 1},
		&SyncStart{Direction: VerifyTarget, BitmapBlock: 4096, TotalBits: 262144},
		&SyncDone{Flags: SyncAborted},
		&Bitmap{FirstWord: 2, TotalBits: 64*4 + 1, Words: []uint64{0xdeadbeef, 1, 1 << 63}, Last: true},
		&Bitmap{TotalBits: 0, Words: nil},
		&Resize{Op: ResizeQuery, Size: 2 << 30},
		&Resize{Op: ResizeAnswer, Size: 1<<40 + 4096, Reason: "the disk is still 1073741824 bytes"},
		&Resize{Op: ResizeCommit, Flags: ResizeAssumeClean, Size: 1<<64 - 1},
		&Write{Seq: 9, Offset: 1 << 40, Flags: FlagFUA, Length: 5, Data: []byte("hello")},
		&Write{Seq: 10, Offset: 4096, Flags: FlagTrim, Length: 1 << 31},
		&Write{Seq: 11, Offset: 0, Flags: FlagZero | FlagNoHole | FlagFUA, Length: 8192},
		&Write{Seq: 12},
		&Ack{Seq: 9, Type: AckReceived},
		&Ack{Seq: 9, Type: AckDone, Err: CodeIO},
		&Flush{Seq: 13},
		&FlushAck{Seq: 13, Err: CodeNoSpace},
		&Read{Seq: 14, Offset: 1 << 30, Length: 4096},
		&Read{Seq: 15, Offset: 1<<64 - 1, Length: MaxData},
		&ReadReply{Seq: 14, Data: []byte("sector bytes")},
		&ReadReply{Seq: 15, Err: CodeIO},
		&ReadReply{Seq: 16, Zero: true},
		&ResyncData{Seq: 1, Offset: 65536, Data: bytes.Repeat([]byte{7}, 4096)},
		&ResyncData{Seq: 2},
		&ResyncAck{Seq: 1, Offset: 65536, Length: 4096, Err: CodeInvalid},
		&ChecksumRequest{Seq: 3, Offset: 0, Length: 1 << 20, BlockSize: 4096},
		&ChecksumReply{Seq: 3, Offset: 0, BlockSize: 4096, Sums: sums[:]},
		&ChecksumReply{Seq: 4, BlockSize: 1},
		&ResyncZero{Seq: 5, Offset: 1 << 40, Length: 1 << 20},
		&ResyncZero{Seq: 6, Offset: 1<<64 - 1, Length: MaxData},
	}
}

func mustFrame(t testing.TB, seq uint32, m Message) []byte {
	t.Helper()
	b, err := AppendFrame(nil, seq, m)
	if err != nil {
		t.Fatalf("AppendFrame(%T): %v", m, err)
	}
	return b
}

// reseal recomputes the CRC of a frame whose header or payload a test edited.
func reseal(f []byte) []byte {
	crc := crc32.Update(0, castagnoli, f[:16])
	crc = crc32.Update(crc, castagnoli, f[HeaderLen:])
	binary.BigEndian.PutUint32(f[16:20], crc)
	return f
}

func TestRoundTrip(t *testing.T) {
	for _, m := range sampleMessages() {
		t.Run(m.Kind().String(), func(t *testing.T) {
			f := mustFrame(t, 77, m)
			got, h, n, err := DecodeFrame(append(f, 0xaa, 0xbb)) // trailing bytes belong to the next frame
			if err != nil {
				t.Fatalf("DecodeFrame: %v", err)
			}
			if n != len(f) || h.Seq != 77 || h.Kind != m.Kind() || int(h.Length) != len(f)-HeaderLen {
				t.Fatalf("n=%d header=%+v, frame of %d bytes", n, h, len(f))
			}
			if !reflect.DeepEqual(got, m) {
				t.Fatalf("round trip:\n got %#v\nwant %#v", got, m)
			}
			if max, _ := maxPayloadFor(m.Kind()); h.Length > max {
				t.Fatalf("length %d over the kind's limit %d", h.Length, max)
			}
		})
	}
}

// A value (not pointer) message encodes to the same bytes as its pointer.
func TestValueAndPointerEncodeAlike(t *testing.T) {
	for _, m := range sampleMessages() {
		v := reflect.ValueOf(m).Elem().Interface().(Message)
		if a, b := mustFrame(t, 1, m), mustFrame(t, 1, v); !bytes.Equal(a, b) {
			t.Errorf("%v: value and pointer encodings differ", m.Kind())
		}
	}
}

func TestDecodeTruncated(t *testing.T) {
	for _, m := range sampleMessages() {
		f := mustFrame(t, 0, m)
		for cut := 0; cut < len(f); cut++ {
			_, _, _, err := DecodeFrame(f[:cut])
			if !errors.Is(err, ErrTruncated) {
				t.Fatalf("%v cut at %d of %d: %v, want ErrTruncated", m.Kind(), cut, len(f), err)
			}
		}
	}
}

func TestDecodeCorruptionCaught(t *testing.T) {
	// Flipping any single bit of any frame must be detected: the header
	// checks or the CRC catch it, nothing decodes silently.
	for _, m := range sampleMessages() {
		f := mustFrame(t, 3, m)
		for i := 0; i < len(f); i++ {
			for bit := 0; bit < 8; bit++ {
				g := bytes.Clone(f)
				g[i] ^= 1 << bit
				got, _, _, err := DecodeFrame(g)
				if err == nil {
					t.Fatalf("%v: flip byte %d bit %d decoded as %#v", m.Kind(), i, bit, got)
				}
			}
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	base := func() []byte { return mustFrame(t, 0, &Ping{Seq: 5}) }
	tests := []struct {
		name string
		edit func([]byte) []byte
		want error
	}{
		{"bad magic", func(f []byte) []byte { f[0] = 'X'; return f }, ErrBadMagic},
		{"payload bit flip", func(f []byte) []byte { f[HeaderLen] ^= 1; return f }, ErrChecksum},
		{"crc bit flip", func(f []byte) []byte { f[19] ^= 0x80; return f }, ErrChecksum},
		{"seq changed", func(f []byte) []byte { f[11] = 9; return f }, ErrChecksum},
		{"version 1", func(f []byte) []byte { f[4] = 1; return reseal(f) }, ErrVersion},
		{"version 7 (the previous one)", func(f []byte) []byte { f[4] = 7; return reseal(f) }, ErrVersion},
		{"version 0", func(f []byte) []byte { f[4] = 0; return reseal(f) }, ErrVersion},
		{"unknown kind 0", func(f []byte) []byte { f[5] = 0; return reseal(f) }, ErrUnknownKind},
		{"unknown kind 7", func(f []byte) []byte { f[5] = 7; return reseal(f) }, ErrUnknownKind},
		{"unknown kind 255", func(f []byte) []byte { f[5] = 255; return reseal(f) }, ErrUnknownKind},
		{"reserved flags", func(f []byte) []byte { f[7] = 1; return reseal(f) }, ErrMalformed},
		{"ping length 9", func(f []byte) []byte {
			binary.BigEndian.PutUint32(f[12:], 9)
			return reseal(append(f, 0))
		}, ErrTooLarge},
		{"ping length 7", func(f []byte) []byte {
			binary.BigEndian.PutUint32(f[12:], 7)
			return reseal(f[:len(f)-1])
		}, ErrMalformed},
		{"length 4 GiB", func(f []byte) []byte { binary.BigEndian.PutUint32(f[12:], 1<<32-1); return f }, ErrTooLarge},
		{"write over MaxPayload", func([]byte) []byte {
			f := mustFrame(t, 0, &Write{Length: 1, Data: []byte{1}})
			binary.BigEndian.PutUint32(f[12:], MaxPayload+1)
			return f
		}, ErrTooLarge},
		{"readreply over MaxData", func([]byte) []byte {
			f := mustFrame(t, 0, &ReadReply{Data: []byte{1}})
			binary.BigEndian.PutUint32(f[12:], readReplyFixed+MaxData+1)
			return f
		}, ErrTooLarge},
		{"read length 25", func([]byte) []byte {
			f := mustFrame(t, 0, &Read{Length: 1})
			binary.BigEndian.PutUint32(f[12:], rangeLen+1)
			return reseal(append(f, 0))
		}, ErrTooLarge},
		{"bitmap over 1 MiB", func([]byte) []byte {
			f := mustFrame(t, 0, &Bitmap{TotalBits: 64})
			binary.BigEndian.PutUint32(f[12:], 1<<20+8)
			return f
		}, ErrTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, _, err := DecodeFrame(tc.edit(base()))
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// rawFrame builds a frame with an arbitrary payload and a valid CRC.
func rawFrame(k Kind, payload []byte) []byte {
	f := make([]byte, HeaderLen, HeaderLen+len(payload))
	copy(f, magic[:])
	f[4] = Version
	f[5] = byte(k)
	binary.BigEndian.PutUint32(f[12:], uint32(len(payload)))
	return reseal(append(f, payload...))
}

// payloadOf returns the payload of m's encoding for editing.
func payloadOf(t *testing.T, m Message) []byte {
	return mustFrame(t, 0, m)[HeaderLen:]
}

func TestDecodeMalformedPayloads(t *testing.T) {
	edit := func(m Message, f func(p []byte) []byte) func(*testing.T) []byte {
		return func(t *testing.T) []byte { return f(payloadOf(t, m)) }
	}
	tests := []struct {
		name    string
		kind    Kind
		payload func(*testing.T) []byte
	}{
		{"hello name longer than payload", KindHello, edit(&Hello{Resource: "r0"}, func(p []byte) []byte { p[25] = 3; return p })},
		{"hello name over limit", KindHello, edit(&Hello{Resource: "r0"}, func(p []byte) []byte { p[24] = 1; return p })},
		{"hello trailing byte", KindHello, edit(&Hello{Resource: "r0"}, func(p []byte) []byte { return append(p, 0) })},
		{"refuse reason over limit", KindRefuse, edit(&Refuse{Reason: "x"}, func(p []byte) []byte { p[4] = 0xff; return p })},
		{"challenge mode 2", KindAuthChallenge, edit(&AuthChallenge{}, func(p []byte) []byte { p[0] = 2; return p })},
		{"challenge short", KindAuthChallenge, edit(&AuthChallenge{}, func(p []byte) []byte { return p[:32] })},
		{"stream id 3", KindStreamOpen, edit(&StreamOpen{}, func(p []byte) []byte { p[0] = 3; return p })},
		{"state role 2", KindState, edit(&State{}, func(p []byte) []byte { p[0] = 2; return p })},
		{"state disk 5", KindState, edit(&State{}, func(p []byte) []byte { p[1] = 5; return p })},
		{"state pad", KindState, edit(&State{}, func(p []byte) []byte { p[2] = 1; return p })},
		{"syncstart direction 4", KindSyncStart, edit(&SyncStart{}, func(p []byte) []byte { p[0] = 4; return p })},
		{"syncstart pad", KindSyncStart, edit(&SyncStart{}, func(p []byte) []byte { p[3] = 1; return p })},
		{"bitmap count over payload", KindBitmap, edit(&Bitmap{TotalBits: 128, Words: []uint64{1}}, func(p []byte) []byte { p[23] = 2; return p })},
		{"bitmap count over limit", KindBitmap, edit(&Bitmap{TotalBits: 1 << 40}, func(p []byte) []byte {
			binary.BigEndian.PutUint32(p[20:], MaxBitmapWords+1)
			return p
		})},
		{"bitmap past total bits", KindBitmap, edit(&Bitmap{FirstWord: 1, TotalBits: 128, Words: []uint64{1}}, func(p []byte) []byte { p[15] = 64; return p })},
		{"bitmap first word huge", KindBitmap, edit(&Bitmap{TotalBits: 64, Words: []uint64{1}}, func(p []byte) []byte {
			binary.BigEndian.PutUint64(p[0:], 1<<64-1)
			return p
		})},
		{"resize op 3", KindResize, edit(&Resize{}, func(p []byte) []byte { p[0] = 3; return p })},
		{"resize pad", KindResize, edit(&Resize{}, func(p []byte) []byte { p[1] = 1; return p })},
		{"resize reason over limit", KindResize, edit(&Resize{Reason: "x"}, func(p []byte) []byte { p[2] = 0xff; return p })},
		{"resize unknown flag", KindResize, edit(&Resize{}, func(p []byte) []byte { p[7] |= 2; return p })},
		{"resize reason longer than payload", KindResize, edit(&Resize{Reason: "x"}, func(p []byte) []byte { p[3] = 2; return p })},
		{"bitmap last 2", KindBitmap, edit(&Bitmap{TotalBits: 64}, func(p []byte) []byte { p[16] = 2; return p })},
		{"write length mismatch", KindWrite, edit(&Write{Length: 2, Data: []byte{1, 2}}, func(p []byte) []byte { p[23] = 3; return p })},
		{"write unknown flag", KindWrite, edit(&Write{Length: 0}, func(p []byte) []byte { p[16] = 0x80; return p })},
		{"write trim and zero", KindWrite, edit(&Write{Flags: FlagTrim, Length: 4096}, func(p []byte) []byte { p[19] |= byte(FlagZero); return p })},
		{"write nohole without zero", KindWrite, edit(&Write{Flags: FlagTrim, Length: 4096}, func(p []byte) []byte { p[19] |= byte(FlagNoHole); return p })},
		{"write trim with data", KindWrite, edit(&Write{Flags: FlagTrim, Length: 1}, func(p []byte) []byte { return append(p, 0) })},
		{"write short", KindWrite, edit(&Write{}, func(p []byte) []byte { return p[:23] })},
		{"ack type 0", KindAck, edit(&Ack{Type: AckDone}, func(p []byte) []byte { p[8] = 0; return p })},
		{"ack type 3", KindAck, edit(&Ack{Type: AckDone}, func(p []byte) []byte { p[8] = 3; return p })},
		{"ack pad", KindAck, edit(&Ack{Type: AckDone}, func(p []byte) []byte { p[9] = 1; return p })},
		{"flushack short", KindFlushAck, edit(&FlushAck{}, func(p []byte) []byte { return p[:11] })},
		{"read pad", KindRead, edit(&Read{Length: 1}, func(p []byte) []byte { p[23] = 1; return p })},
		{"read zero length", KindRead, edit(&Read{Length: 1}, func(p []byte) []byte { p[19] = 0; return p })},
		{"read length over MaxData", KindRead, edit(&Read{Length: 1}, func(p []byte) []byte {
			binary.BigEndian.PutUint32(p[16:], MaxData+1)
			return p
		})},
		{"read short", KindRead, edit(&Read{Length: 1}, func(p []byte) []byte { return p[:20] })},
		{"readreply unknown flag", KindReadReply, edit(&ReadReply{}, func(p []byte) []byte { p[12] = 1; return p })},
		{"readreply unknown flag with data", KindReadReply, edit(&ReadReply{Data: []byte{1}}, func(p []byte) []byte { p[15] = 0x80; return p })},
		{"readreply error with data", KindReadReply, edit(&ReadReply{Data: []byte{1, 2}}, func(p []byte) []byte { p[11] = byte(CodeIO); return p })},
		{"readreply zero with error", KindReadReply, edit(&ReadReply{Zero: true}, func(p []byte) []byte { p[11] = byte(CodeIO); return p })},
		{"readreply zero with data", KindReadReply, edit(&ReadReply{Data: []byte{1}}, func(p []byte) []byte { p[15] = 1; return p })},
		{"readreply short", KindReadReply, edit(&ReadReply{Err: CodeIO}, func(p []byte) []byte { return p[:15] })},
		{"resynczero pad", KindResyncZero, edit(&ResyncZero{Length: 1}, func(p []byte) []byte { p[23] = 1; return p })},
		{"resynczero zero length", KindResyncZero, edit(&ResyncZero{Length: 1}, func(p []byte) []byte { p[19] = 0; return p })},
		{"resynczero length over MaxData", KindResyncZero, edit(&ResyncZero{Length: 1}, func(p []byte) []byte {
			binary.BigEndian.PutUint32(p[16:], MaxData+1)
			return p
		})},
		{"resynczero short", KindResyncZero, edit(&ResyncZero{Length: 1}, func(p []byte) []byte { return p[:20] })},
		{"resyncdata short", KindResyncData, edit(&ResyncData{}, func(p []byte) []byte { return p[:15] })},
		{"checksum request zero block", KindChecksumRequest, edit(&ChecksumRequest{BlockSize: 1}, func(p []byte) []byte { p[23] = 0; return p })},
		{"checksum request too many blocks", KindChecksumRequest, edit(&ChecksumRequest{BlockSize: 1}, func(p []byte) []byte {
			binary.BigEndian.PutUint32(p[16:], MaxSums+1)
			return p
		})},
		{"checksum reply zero block", KindChecksumReply, edit(&ChecksumReply{BlockSize: 1}, func(p []byte) []byte { p[19] = 0; return p })},
		{"checksum reply count over payload", KindChecksumReply, edit(&ChecksumReply{BlockSize: 1}, func(p []byte) []byte { p[23] = 1; return p })},
		{"checksum reply count over limit", KindChecksumReply, edit(&ChecksumReply{BlockSize: 1}, func(p []byte) []byte {
			binary.BigEndian.PutUint32(p[20:], MaxSums+1)
			return p
		})},
		{"authok with payload", KindAuthOK, func(*testing.T) []byte { return nil }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.payload(t)
			if tc.kind == KindAuthOK {
				// AuthOK's limit is 0: one byte is too large, not malformed.
				_, _, _, err := DecodeFrame(rawFrame(KindAuthOK, []byte{0}))
				if !errors.Is(err, ErrTooLarge) {
					t.Fatalf("got %v, want ErrTooLarge", err)
				}
				return
			}
			_, _, _, err := DecodeFrame(rawFrame(tc.kind, p))
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v, want ErrMalformed", err)
			}
		})
	}
}

func TestEncodeRefusesInvalid(t *testing.T) {
	tests := []struct {
		name string
		m    Message
		want error
	}{
		{"resource too long", &Hello{Resource: string(make([]byte, MaxResource+1))}, ErrInvalid},
		{"write length mismatch", &Write{Length: 3, Data: []byte{1}}, ErrInvalid},
		{"write trim with data", &Write{Flags: FlagTrim, Length: 1, Data: []byte{1}}, ErrInvalid},
		{"write unknown flag", &Write{Flags: 1 << 9}, ErrInvalid},
		{"write too large", &Write{Length: MaxData + 1, Data: make([]byte, MaxData+1)}, ErrInvalid},
		{"resync too large", &ResyncData{Data: make([]byte, MaxData+1)}, ErrInvalid},
		{"read zero length", &Read{Offset: 4096}, ErrInvalid},
		{"read too long", Read{Length: MaxData + 1}, ErrInvalid},
		{"resynczero zero length", &ResyncZero{Offset: 4096}, ErrInvalid},
		{"resynczero too long", ResyncZero{Length: MaxData + 1}, ErrInvalid},
		{"readreply error with data", &ReadReply{Err: CodeIO, Data: []byte{1}}, ErrInvalid},
		{"readreply too large", &ReadReply{Data: make([]byte, MaxData+1)}, ErrInvalid},
		{"readreply zero with error", &ReadReply{Err: CodeIO, Zero: true}, ErrInvalid},
		{"readreply zero with data", &ReadReply{Zero: true, Data: []byte{1}}, ErrInvalid},
		{"ack type 0", &Ack{}, ErrInvalid},
		{"state role", &State{Role: 9}, ErrInvalid},
		{"syncstart direction", SyncStart{Direction: 9}, ErrInvalid},
		{"bitmap past total", &Bitmap{TotalBits: 64, Words: []uint64{1, 2}}, ErrInvalid},
		{"bitmap too many words", &Bitmap{TotalBits: 1 << 40, Words: make([]uint64, MaxBitmapWords+1)}, ErrInvalid},
		{"checksum zero block", &ChecksumRequest{Length: 1}, ErrInvalid},
		{"checksum reply too many", &ChecksumReply{BlockSize: 1, Sums: make([]Sum, MaxSums+1)}, ErrInvalid},
		{"stream id", &StreamOpen{Stream: 3}, ErrInvalid},
		{"auth mode", &AuthChallenge{Mode: 5}, ErrInvalid},
		{"foreign type", foreign{}, ErrUnknownKind},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := AppendFrame([]byte{1, 2}, 0, tc.m)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if !bytes.Equal(out, []byte{1, 2}) {
				t.Fatalf("dst changed on error: %v", out)
			}
		})
	}
}

// foreign is a Message type this package cannot encode.
type foreign struct{}

func (foreign) Kind() Kind { return KindPing }

func TestRefuseReasonCut(t *testing.T) {
	long := string(bytes.Repeat([]byte{'a'}, MaxReason+100))
	m, _, _, err := DecodeFrame(mustFrame(t, 0, &Refuse{Code: 1, Reason: long}))
	if err != nil {
		t.Fatal(err)
	}
	if r := m.(*Refuse); len(r.Reason) != MaxReason {
		t.Fatalf("reason of %d bytes", len(r.Reason))
	}
}

func TestRefuseErr(t *testing.T) {
	tests := []struct {
		code uint32
		want error
	}{
		{RefuseVersion, ErrVersion},
		{RefuseResource, ErrResourceMismatch},
		{RefuseSize, ErrSizeMismatch},
		{RefuseBitmapBlock, ErrBitmapBlockMismatch},
		{RefuseAuth, ErrAuth},
		{RefuseProtocol, ErrMalformed},
		{RefuseSplitBrain, nil},
		{1000, nil},
	}
	for _, tc := range tests {
		err := (&Refuse{Code: tc.code, Reason: "why"}).Err()
		if !errors.Is(err, ErrRefused) {
			t.Errorf("code %d: %v does not wrap ErrRefused", tc.code, err)
		}
		if tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("code %d: %v does not wrap %v", tc.code, err, tc.want)
		}
		if want := "protocol: refused by peer: why"; err.Error() != want {
			t.Errorf("code %d: %q, want %q", tc.code, err, want)
		}
		var re *RefusedError
		if !errors.As(err, &re) || re.Code != tc.code {
			t.Errorf("code %d: errors.As gives %+v", tc.code, re)
		}
	}
}

func TestKindString(t *testing.T) {
	if got := KindWrite.String(); got != "Write" {
		t.Fatalf("KindWrite.String() = %q", got)
	}
	if got := Kind(200).String(); got != "Kind(200)" {
		t.Fatalf("Kind(200).String() = %q", got)
	}
	for _, m := range sampleMessages() {
		if _, ok := maxPayloadFor(m.Kind()); !ok {
			t.Errorf("%v has no length limit", m.Kind())
		}
	}
}

func TestCloneDoesNotAlias(t *testing.T) {
	buf := []byte("abcd")
	w := (&Write{Length: 4, Data: buf}).Clone()
	r := (&ResyncData{Data: buf}).Clone()
	rr := (&ReadReply{Data: buf}).Clone()
	buf[0] = 'X'
	if w.Data[0] != 'a' || r.Data[0] != 'a' || rr.Data[0] != 'a' {
		t.Fatal("Clone aliases the original data")
	}
}

// No kind's limit exceeds MaxPayload, the documented largest payload.
func TestKindLimitsWithinMaxPayload(t *testing.T) {
	for k := range kindNames {
		max, ok := maxPayloadFor(k)
		if !ok || max > MaxPayload {
			t.Errorf("%v: limit %d (ok %v), MaxPayload %d", k, max, ok, MaxPayload)
		}
	}
}

// The payload decoder itself rejects a ReadReply with more than MaxData
// bytes, even though the header's length limit stops such a frame first.
func TestDecodeReadReplyDataLimit(t *testing.T) {
	p := make([]byte, readReplyFixed+MaxData+1)
	if _, err := decodePayload(KindReadReply, p, nil); !errors.Is(err, ErrMalformed) {
		t.Fatalf("got %v, want ErrMalformed", err)
	}
	if _, err := decodePayload(KindReadReply, p[:readReplyFixed+MaxData], nil); err != nil {
		t.Fatalf("MaxData bytes: %v", err)
	}
}

// DecodeFrame returns ReadReply.Data aliasing its input, like Write.Data.
func TestDecodeReadReplyAliases(t *testing.T) {
	f := mustFrame(t, 0, &ReadReply{Seq: 1, Data: []byte("abcd")})
	m, _, _, err := DecodeFrame(f)
	if err != nil {
		t.Fatal(err)
	}
	f[len(f)-4] = 'X'
	if d := m.(*ReadReply).Data; string(d) != "Xbcd" {
		t.Fatalf("Data %q does not alias the frame", d)
	}
}

// FuzzDecode: DecodeFrame never panics, never reads past its input, and
// whatever it accepts re-encodes to the very same bytes.
func FuzzDecode(f *testing.F) {
	for i, m := range sampleMessages() {
		b, err := AppendFrame(nil, uint32(i), m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte("URBD"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, h, n, err := DecodeFrame(b)
		if err != nil {
			if m != nil || n != 0 {
				t.Fatalf("error %v with message %v, n %d", err, m, n)
			}
			return
		}
		if n > len(b) || n != HeaderLen+int(h.Length) {
			t.Fatalf("consumed %d of %d, header %+v", n, len(b), h)
		}
		again, err := AppendFrame(nil, h.Seq, m)
		if err != nil {
			t.Fatalf("decoded %#v does not re-encode: %v", m, err)
		}
		if !bytes.Equal(again, b[:n]) {
			t.Fatalf("re-encoding differs:\n in %x\nout %x", b[:n], again)
		}
	})
}

// TestGoldenFrames pins the wire format to the examples in SPEC.md.
func TestGoldenFrames(t *testing.T) {
	tests := []struct {
		seq uint32
		m   Message
		hex string
	}{
		{0, &Ping{Seq: 1}, "55524244081100000000000000000008" + "8037b58c" + "0000000000000001"},
		{5, &Ack{Seq: 7, Type: AckDone}, "555242440821000000000005" + "00000010784bc3d9" + "0000000000000007" + "0200000000000000"},
		{6, &Read{Seq: 8, Offset: 1 << 20, Length: 4096}, "555242440824000000000006" + "00000018fb549dd2" + "0000000000000008" + "0000000000100000" + "0000100000000000"},
	}
	for _, tc := range tests {
		got := hex.EncodeToString(mustFrame(t, tc.seq, tc.m))
		if got != tc.hex {
			t.Errorf("%v:\n got %s\nwant %s", tc.m.Kind(), got, tc.hex)
		}
	}
}
