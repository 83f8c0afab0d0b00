package replica

import "testing"

// TestCopyMark: the mark moves over each run of chunks done from the start,
// whatever order they complete in, and stops at the disk's end.
func TestCopyMark(t *testing.T) {
	ref := &diskRef{}
	m := &copyMark{ref: ref, chunk: 10, size: 45, done: map[int64]bool{}}
	for _, step := range []struct{ off, want int64 }{
		{20, 0}, {0, 10}, {10, 30}, {40, 30}, {30, 45},
	} {
		m.chunkDone(step.off)
		if got := ref.copied.Load(); got != step.want {
			t.Fatalf("after the chunk at %d: mark %d, want %d", step.off, got, step.want)
		}
	}
}
