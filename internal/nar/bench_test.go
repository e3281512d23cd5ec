package nar

import (
	"bytes"
	"io"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
)

// writeOnly hides io.Discard's ReadFrom so copies go through a caller's buffer,
// as they do into a hash.
type writeOnly struct{}

func (writeOnly) Write(p []byte) (int, error) { return len(p), nil }

// bigNAR is a directory of files, each of size bytes.
func bigNAR(b *testing.B, files int, size int) []byte {
	nodes := []node{dir("")}
	data := string(bytes.Repeat([]byte("0123456789abcdef"), size/16))
	for i := 0; i < files; i++ {
		nodes = append(nodes, file("f"+strconv.Itoa(100000+i), data))
	}
	return writeNAR(b, nodes...)
}

func benchRead(b *testing.B, data []byte) {
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r := NewReader(bytes.NewReader(data))
		for {
			h, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			if h.Type == TypeRegular {
				if _, err := io.CopyBuffer(writeOnly{}, r, buf); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
}

// BenchmarkReaderLargeFiles: 8 files of 8 MiB, parsed and read from memory.
func BenchmarkReaderLargeFiles(b *testing.B) { benchRead(b, bigNAR(b, 8, 8<<20)) }

// BenchmarkReaderSmallFiles: 20000 files of 512 bytes.
func BenchmarkReaderSmallFiles(b *testing.B) { benchRead(b, bigNAR(b, 20000, 512)) }

func BenchmarkWriterLargeFiles(b *testing.B) {
	content := bytes.Repeat([]byte("x"), 8<<20)
	size := len(bigNAR(b, 8, 8<<20))
	out := bytes.NewBuffer(make([]byte, 0, size))
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		out.Reset()
		w := NewWriter(out)
		w.WriteHeader(&Header{Type: TypeDirectory})
		for j := 0; j < 8; j++ {
			w.WriteHeader(&Header{Path: "f" + strconv.Itoa(100000+j), Type: TypeRegular, Size: int64(len(content))})
			for off := 0; off < len(content); off += 1 << 20 {
				w.Write(content[off : off+1<<20])
			}
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWriterSmallFiles(b *testing.B) {
	content := bytes.Repeat([]byte("x"), 512)
	size := len(bigNAR(b, 20000, 512))
	out := bytes.NewBuffer(make([]byte, 0, size))
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		out.Reset()
		w := NewWriter(out)
		w.WriteHeader(&Header{Type: TypeDirectory})
		for j := 0; j < 20000; j++ {
			w.WriteHeader(&Header{Path: "f" + strconv.Itoa(100000+j), Type: TypeRegular, Size: int64(len(content))})
			w.Write(content)
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDumpGoTree dumps $GOROOT/src (warm page cache) into a plain writer.
func BenchmarkDumpGoTree(b *testing.B) {
	src := filepath.Join(runtime.GOROOT(), "src")
	var n countWriter
	if err := Dump(&n, src, DumpOptions{}); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(n))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := Dump(writeOnly{}, src, DumpOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }
