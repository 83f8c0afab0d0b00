package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"github.com/urbd/urbd/status"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"
)

// ackLog records, per 4 KiB block, the last write a client saw acknowledged
// and the write still in flight, so a survivor's disk can be checked against
// "every acknowledged write is there".
type ackLog struct {
	mu       sync.Mutex
	acked    map[int64][]byte // block offset -> content last acknowledged
	inflight map[int64][]byte // block offset -> content sent, not answered
}

// blockContent is a recognisable 4 KiB pattern for writer w's seq-th write.
func blockContent(w, seq int, off int64) []byte {
	b := make([]byte, 4096+24)
	for i := 0; i < 4096; i += 24 {
		binary.LittleEndian.PutUint64(b[i:], uint64(w))
		binary.LittleEndian.PutUint64(b[i+8:], uint64(seq))
		binary.LittleEndian.PutUint64(b[i+16:], uint64(off))
	}
	return b[:4096]
}

// writeUntilError runs writers synchronous clients against n, each writing
// random blocks of its own region, until a write fails or stop is closed.
func writeUntilError(t *testing.T, n *node, writers int, region int64, stop <-chan struct{}, log *ackLog) *sync.WaitGroup {
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		cl, err := n.client()
		must(t, err)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cl.Close()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for seq := 0; ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				off := int64(w)*region + rng.Int64N(region/4096)*4096
				data := blockContent(w, seq, off)
				log.mu.Lock()
				log.inflight[off] = data
				log.mu.Unlock()
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				err := cl.Write(ctx, data, off, false)
				cancel()
				if err != nil {
					return
				}
				log.mu.Lock()
				log.acked[off] = data
				delete(log.inflight, off)
				log.mu.Unlock()
			}
		}()
	}
	return &wg
}

// checkAcked fails unless every acknowledged block is on disk (or the write
// in flight to the same block replaced it).
func checkAcked(t *testing.T, disk string, log *ackLog) int {
	t.Helper()
	f, err := os.ReadFile(disk)
	must(t, err)
	log.mu.Lock()
	defer log.mu.Unlock()
	for off, want := range log.acked {
		got := f[off : off+4096]
		if bytes.Equal(got, want) {
			continue
		}
		if fl, ok := log.inflight[off]; ok && bytes.Equal(got, fl) {
			continue
		}
		t.Fatalf("acknowledged write at %d lost: block holds writer %d seq %d, want seq %d",
			off, binary.LittleEndian.Uint64(got), binary.LittleEndian.Uint64(got[8:]), binary.LittleEndian.Uint64(want[8:]))
	}
	return len(log.acked)
}

// TestPrimaryCrashLosesNoAckedWrite: kill -9 of the primary under a
// concurrent write load; the secondary is promoted and holds every write the
// clients saw acknowledged (protocol C).
func TestPrimaryCrashLosesNoAckedWrite(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	c.startBoth()
	log := &ackLog{acked: map[int64][]byte{}, inflight: map[int64][]byte{}}
	stop := make(chan struct{})
	wg := writeUntilError(t, c.a, 16, 4<<20, stop, log)
	time.Sleep(1500 * time.Millisecond)
	c.a.kill9()
	wg.Wait()
	close(stop)
	c.b.waitFor("peer loss", 10*time.Second, func(s statusT) bool { return s.ConnState == "WFConnection" })
	c.b.ctl("primary", "r0")
	// The survivor serves the data: read it back through NBD, then check the file.
	cl, err := c.b.client()
	must(t, err)
	cl.Close()
	if n := checkAcked(t, c.b.disk, log); n < 100 {
		t.Fatalf("only %d writes were acknowledged before the crash: load too light to prove anything", n)
	}

	// The old primary returns as Secondary and resyncs from the new primary.
	c.a.start()
	c.b.waitInSync(60 * time.Second)
	cmpFiles(t, c.a.disk, c.b.disk)
}

type statusT = status.Resource

// TestCrashedPrimaryResyncsByChecksum: kill -9 of a connected primary under
// load leaves its activity-log extents marked; on return the marked blocks
// are compared by checksum and only differing ones are sent, so the resync
// moves far less than the marked amount, and the disks end identical.
func TestCrashedPrimaryResyncsByChecksum(t *testing.T) {
	c := newCluster(t, clusterOpts{size: 1 << 30})
	c.startBoth()
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=64M", "--io_size=16M")
	c.a.kill9()
	c.b.waitFor("peer loss", 10*time.Second, func(s statusT) bool { return s.ConnState == "WFConnection" })
	c.a.start()
	st := c.a.waitFor("resync of the recovered extents", 30*time.Second, func(s statusT) bool {
		return s.ConnState == "SyncSource" || (s.ConnState == "Connected" && s.OutOfSyncKiB == 0)
	})
	after := c.a.waitInSync(60 * time.Second)
	logs, _ := os.ReadFile(c.a.logPath)
	if !bytes.Contains(logs, []byte("by_checksum=true")) {
		t.Fatalf("resync after a crash did not compare checksums (status %+v):\n%s", st, logs)
	}
	if !bytes.Contains(logs, []byte("bytes=67108864")) {
		t.Fatalf("expected the 16 hot 4 MiB extents (64 MiB) to be marked after the crash:\n%s", logs)
	}
	if after.NetSendKiB > 1<<10 {
		t.Fatalf("checksum resync sent %d KiB; the disks were already equal", after.NetSendKiB)
	}
	cmpFiles(t, c.a.disk, c.b.disk)
}
