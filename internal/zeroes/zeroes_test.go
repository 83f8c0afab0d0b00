package zeroes

import (
	"reflect"
	"testing"
)

func TestIs(t *testing.T) {
	b := make([]byte, 3<<20+5)
	if !Is(b) || !Is(nil) {
		t.Fatal("zeroes not seen as zeroes")
	}
	for _, i := range []int{0, 1<<20 - 1, 1 << 20, len(b) - 1} {
		b[i] = 1
		if Is(b) {
			t.Errorf("a byte at %d not seen", i)
		}
		b[i] = 0
	}
}

// TestSplit: a buffer is cut into data and zero pieces on 64 KiB steps;
// zero runs shorter than a step, or not covering one, stay in the data,
// and the pieces cover the buffer in order.
func TestSplit(t *testing.T) {
	const k = 64 << 10
	run := func(size int, nonZero ...int) []byte {
		b := make([]byte, size)
		for _, i := range nonZero {
			b[i] = 1
		}
		return b
	}
	tests := []struct {
		name string
		b    []byte
		want []Piece
	}{
		{"all zeroes", run(16 * k), []Piece{{0, 16 * k, true}}},
		{"all data", run(2*k, 0, k), []Piece{{0, 2 * k, false}}},
		{"one byte in the middle", run(16*k, 5*k+7), []Piece{{0, 5 * k, true}, {5 * k, k, false}, {6 * k, 10 * k, true}}},
		{"zeroes shorter than a step stay data", run(3*k, k-1, k+k/2, 2*k+5), []Piece{{0, 3 * k, false}}},
		{"a short tail", run(k+100, 0), []Piece{{0, k, false}, {k, 100, true}}},
		{"data at both ends", run(4*k, 0, 4*k-1), []Piece{{0, k, false}, {k, 2 * k, true}, {3 * k, k, false}}},
		{"shorter than a step", run(4096), []Piece{{0, 4096, true}}},
		{"empty", nil, nil},
	}
	for _, tc := range tests {
		if got := Split(tc.b, k); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}
