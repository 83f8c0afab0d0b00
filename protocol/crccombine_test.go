package protocol

import (
	"hash/crc32"
	"math/rand/v2"
	"testing"
)

// crcCombine agrees with a CRC computed over the whole, for empty, short,
// odd and large second parts.
func TestCRCCombine(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 1<<20+4099)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	for _, tc := range []struct{ lenA, lenB int }{
		{0, 0}, {20, 0}, {0, 20}, {1, 1}, {20, 4096}, {44, 65536}, {44, 1 << 20}, {3, 1<<20 + 4096}, {7, 12345},
	} {
		a, b := buf[:tc.lenA], buf[tc.lenA:tc.lenA+tc.lenB]
		want := crc32.Update(0, castagnoli, buf[:tc.lenA+tc.lenB])
		got := crcCombine(crc32.Update(0, castagnoli, a), crc32.Update(0, castagnoli, b), len(b))
		if got != want {
			t.Errorf("lenA %d lenB %d: combined %#08x, whole %#08x", tc.lenA, tc.lenB, got, want)
		}
	}
	for range 200 {
		la, lb := rng.IntN(100), rng.IntN(len(buf)-100)
		want := crc32.Update(0, castagnoli, buf[:la+lb])
		got := crcCombine(crc32.Update(0, castagnoli, buf[:la]), crc32.Update(0, castagnoli, buf[la:la+lb]), lb)
		if got != want {
			t.Fatalf("lenA %d lenB %d: combined %#08x, whole %#08x", la, lb, got, want)
		}
	}
}

func BenchmarkCRCCombine1MiB(b *testing.B) {
	for b.Loop() {
		crcCombine(0x12345678, 0x9abcdef0, 1<<20)
	}
}
