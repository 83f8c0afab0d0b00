// Package bufpool recycles payload buffers: one sync.Pool per power-of-two
// size class, from 4 KiB up to 32 MiB, so a steady stream of requests
// allocates nothing. Pools hold *[]byte so that Put does not allocate.
package bufpool

import (
	"math/bits"
	"sync"
)

const (
	minClassShift = 12 // 4 KiB
	maxClassShift = 25 // 32 MiB

	// MaxSize is the largest buffer Get returns.
	MaxSize = 1 << maxClassShift
)

var pools [maxClassShift - minClassShift + 1]sync.Pool

func sizeClass(n int) int {
	if n <= 1<<minClassShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minClassShift
}

// Get returns a buffer of length n (0 < n <= MaxSize) and the handle to give
// back to Put. The contents are undefined.
func Get(n int) *[]byte {
	c := sizeClass(n)
	if p, ok := pools[c].Get().(*[]byte); ok {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n, 1<<(c+minClassShift))
	return &b
}

// Put returns a buffer from Get. The caller must not use it after.
func Put(p *[]byte) {
	c := sizeClass(cap(*p))
	if cap(*p) != 1<<(c+minClassShift) {
		return
	}
	pools[c].Put(p)
}
