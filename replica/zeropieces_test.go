package replica

import (
	"reflect"
	"testing"
)

// TestZeroPieces: a resync run is cut into data and zero pieces on 64 KiB
// steps; zero runs shorter than a step, or not covering one, stay in the
// data, and the pieces cover the run in order.
func TestZeroPieces(t *testing.T) {
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
		want []piece
	}{
		{"all zeroes", run(16 * k), []piece{{0, 16 * k, true}}},
		{"all data", run(2*k, 0, k), []piece{{0, 2 * k, false}}},
		{"one byte in the middle", run(16*k, 5*k+7), []piece{{0, 5 * k, true}, {5 * k, k, false}, {6 * k, 10 * k, true}}},
		{"zeroes shorter than a step stay data", run(3*k, k-1, k+k/2, 2*k+5), []piece{{0, 3 * k, false}}},
		{"a short tail", run(k+100, 0), []piece{{0, k, false}, {k, 100, true}}},
		{"data at both ends", run(4*k, 0, 4*k-1), []piece{{0, k, false}, {k, 2 * k, true}, {3 * k, k, false}}},
		{"shorter than a step", run(4096), []piece{{0, 4096, true}}},
	}
	for _, tc := range tests {
		if got := zeroPieces(tc.b, k); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestZeroSums: the sums of a hole are the sums of its zeroes, a short last
// block included.
func TestZeroSums(t *testing.T) {
	for _, tc := range []struct{ length, bs int64 }{{1 << 20, 4096}, {1<<20 - 100, 4096}, {4096, 4096}, {100, 4096}, {1 << 20, 65536}} {
		if got, want := zeroSums(tc.length, tc.bs), blockSums(make([]byte, tc.length), tc.bs); !reflect.DeepEqual(got, want) {
			t.Errorf("zeroSums(%d, %d) differs from the sums of that many zeroes", tc.length, tc.bs)
		}
	}
}
