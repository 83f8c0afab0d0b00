package nbd

import (
	"math/bits"
	"sync"
)

// Payload buffers come from one sync.Pool per power-of-two size class, from
// 4 KiB up to MaxBlockSize, so a steady stream of requests allocates nothing.
// Pools hold *[]byte so that Put does not allocate.
const (
	minClassShift = 12 // 4 KiB
	maxClassShift = 25 // 32 MiB == MaxBlockSize
)

var bufPools [maxClassShift - minClassShift + 1]sync.Pool

func sizeClass(n int) int {
	if n <= 1<<minClassShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minClassShift
}

// getBuf returns a buffer of length n (0 < n <= MaxBlockSize) and the handle
// to give back to putBuf. The contents are undefined.
func getBuf(n int) *[]byte {
	c := sizeClass(n)
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n, 1<<(c+minClassShift))
	return &b
}

// putBuf returns a buffer from getBuf. The caller must not use it after.
func putBuf(p *[]byte) {
	c := sizeClass(cap(*p))
	if cap(*p) != 1<<(c+minClassShift) {
		return
	}
	bufPools[c].Put(p)
}
