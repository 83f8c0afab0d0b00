package replica

import (
	"reflect"
	"testing"
)

// TestZeroSums: the sums of a hole are the sums of its zeroes, a short last
// block included.
func TestZeroSums(t *testing.T) {
	for _, tc := range []struct{ length, bs int64 }{{1 << 20, 4096}, {1<<20 - 100, 4096}, {4096, 4096}, {100, 4096}, {1 << 20, 65536}} {
		if got, want := zeroSums(tc.length, tc.bs), blockSums(make([]byte, tc.length), tc.bs); !reflect.DeepEqual(got, want) {
			t.Errorf("zeroSums(%d, %d) differs from the sums of that many zeroes", tc.length, tc.bs)
		}
	}
}
