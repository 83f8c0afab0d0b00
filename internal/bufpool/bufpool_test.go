package bufpool

import "testing"

func TestSizeClass(t *testing.T) {
	for _, tc := range []struct{ n, class, capacity int }{
		{1, 0, 4096}, {4096, 0, 4096}, {4097, 1, 8192}, {65536, 4, 65536},
		{65537, 5, 131072}, {MaxSize, maxClassShift - minClassShift, MaxSize},
	} {
		if c := sizeClass(tc.n); c != tc.class {
			t.Errorf("sizeClass(%d) = %d, want %d", tc.n, c, tc.class)
		}
		p := Get(tc.n)
		if len(*p) != tc.n || cap(*p) != tc.capacity {
			t.Errorf("Get(%d): len %d cap %d, want cap %d", tc.n, len(*p), cap(*p), tc.capacity)
		}
		Put(p)
	}
}
