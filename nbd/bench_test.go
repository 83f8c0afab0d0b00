package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
)

// nullBackend does no I/O: benchmarks measure the server alone.
type nullBackend struct{ size int64 }

func (n nullBackend) Size() int64                                      { return n.size }
func (nullBackend) ReadAt(context.Context, []byte, int64) error        { return nil }
func (nullBackend) WriteAt(context.Context, []byte, int64, bool) error { return nil }
func (nullBackend) Trim(context.Context, int64, int64, bool) error     { return nil }
func (nullBackend) WriteZeroes(context.Context, int64, int64, bool, bool) error {
	return nil
}
func (nullBackend) Flush(context.Context) error { return nil }

// benchmarkServer pipelines b.N requests of size bs through a unix socket,
// sending them in batches of 32 while another goroutine reads the replies
// (the server's in-flight bound provides the back-pressure), and reports
// time and allocations per request.
func benchmarkServer(b *testing.B, cmd uint16, bs int) {
	dir, err := os.MkdirTemp("", "nbdb")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ln, err := Listen("unix:" + filepath.Join(dir, "s.sock"))
	if err != nil {
		b.Fatal(err)
	}
	exp := &Export{Backend: nullBackend{size: 1 << 30}}
	srv := &Server{
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Lookup: func(string) (*Export, error) { return exp, nil },
	}
	go srv.Serve(context.Background(), ln)
	defer srv.Shutdown(context.Background())

	nc, err := net.Dial("unix", filepath.Join(dir, "s.sock"))
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	br := bufio.NewReaderSize(nc, 1<<20)
	bw := bufio.NewWriterSize(nc, 1<<20)
	// Handshake by hand: flags, NBD_OPT_EXPORT_NAME "".
	if _, err := io.ReadFull(br, make([]byte, 18)); err != nil {
		b.Fatal(err)
	}
	hs := binary.BigEndian.AppendUint32(nil, FlagCFixedNewstyle|FlagCNoZeroes)
	hs = binary.BigEndian.AppendUint64(hs, MagicOption)
	hs = binary.BigEndian.AppendUint32(hs, OptExportName)
	hs = binary.BigEndian.AppendUint32(hs, 0)
	nc.Write(hs)
	if _, err := io.ReadFull(br, make([]byte, 10)); err != nil {
		b.Fatal(err)
	}

	const qd = 32
	payload := make([]byte, bs)
	req := make([]byte, RequestHeaderLen)
	binary.BigEndian.PutUint32(req, MagicRequest)
	binary.BigEndian.PutUint16(req[6:], cmd)
	binary.BigEndian.PutUint32(req[24:], uint32(bs))
	done := make(chan error, 1)
	go func() {
		hdr := make([]byte, ReplyHeaderLen)
		data := make([]byte, bs)
		for i := 0; i < b.N; i++ {
			if _, err := io.ReadFull(br, hdr); err != nil {
				done <- err
				return
			}
			if cmd == CmdRead {
				if _, err := io.ReadFull(br, data); err != nil {
					done <- err
					return
				}
			}
		}
		done <- nil
	}()
	b.SetBytes(int64(bs))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		binary.BigEndian.PutUint64(req[8:], uint64(i))
		binary.BigEndian.PutUint64(req[16:], uint64(i%qd)*uint64(bs))
		bw.Write(req)
		if cmd == CmdWrite {
			bw.Write(payload)
		}
		if i%qd == qd-1 || i == b.N-1 {
			bw.Flush()
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

func BenchmarkServerWrite4K(b *testing.B) { benchmarkServer(b, CmdWrite, 4096) }
func BenchmarkServerRead4K(b *testing.B)  { benchmarkServer(b, CmdRead, 4096) }
func BenchmarkServerWrite1M(b *testing.B) { benchmarkServer(b, CmdWrite, 1<<20) }
