package substitute

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"cairn/internal/nar"
	"cairn/internal/narinfo"
	"cairn/internal/nixhash"
	"cairn/internal/storepath"
)

// narOfFile is the NAR of one regular file holding data.
func narOfFile(tb testing.TB, data []byte) []byte {
	var b bytes.Buffer
	w := nar.NewWriter(&b)
	if err := w.WriteHeader(&nar.Header{Type: nar.TypeRegular, Size: int64(len(data))}); err != nil {
		tb.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		tb.Fatal(err)
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	return b.Bytes()
}

// writeCache writes a binary cache of content-addressed single-file paths
// (as nix-store --add makes them), so no signature is needed, and returns
// their paths.
func writeCache(tb testing.TB, dir, compression string, contents [][]byte) []storepath.StorePath {
	if err := os.MkdirAll(filepath.Join(dir, "nar"), 0o755); err != nil {
		tb.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "nix-cache-info"), []byte("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n"), 0o644)
	sd, _ := storepath.ParseStoreDir("/nix/store")
	var paths []storepath.StorePath
	for i, data := range contents {
		n := narOfFile(tb, data)
		narHash := nixhash.Sum(nixhash.SHA256, n)
		p, err := sd.MakeSourcePath(fmt.Sprintf("bench-%d", i), narHash, nil, false)
		if err != nil {
			tb.Fatal(err)
		}
		file := n
		ext := ""
		if compression == "zstd" {
			enc, _ := zstd.NewWriter(nil)
			file = enc.EncodeAll(n, nil)
			ext = ".zst"
		}
		fileHash := nixhash.Sum(nixhash.SHA256, file)
		url := "nar/" + fileHash.Nix32() + ".nar" + ext
		if err := os.WriteFile(filepath.Join(dir, url), file, 0o644); err != nil {
			tb.Fatal(err)
		}
		ca, err := nixhash.ParseContentAddress("fixed:r:sha256:" + narHash.Nix32())
		if err != nil {
			tb.Fatal(err)
		}
		ni := &narinfo.NarInfo{StorePath: p, URL: url, Compression: compression, FileHash: fileHash,
			FileSize: uint64(len(file)), NarHash: narHash, NarSize: uint64(len(n)), CA: ca}
		text, err := ni.MarshalText()
		if err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p.HashPart()+".narinfo"), text, 0o644); err != nil {
			tb.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

// peakHeap samples the heap while f runs and returns the largest HeapInuse
// seen above the start.
func peakHeap(f func()) uint64 {
	var start runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&start)
	done := make(chan struct{})
	peak := make(chan uint64)
	go func() {
		var m runtime.MemStats
		var max uint64
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				peak <- max
				return
			case <-tick.C:
			}
			runtime.ReadMemStats(&m)
			if m.HeapInuse > start.HeapInuse && m.HeapInuse-start.HeapInuse > max {
				max = m.HeapInuse - start.HeapInuse
			}
		}
	}()
	f()
	close(done)
	return <-peak
}

// BenchmarkSubstituteSmall substitutes 200 small paths (1 KiB each) from a
// file:// cache into a fresh store per iteration.
func BenchmarkSubstituteSmall(b *testing.B) {
	const n = 200
	contents := make([][]byte, n)
	total := 0
	for i := range contents {
		contents[i] = bytes.Repeat([]byte(fmt.Sprintf("small %d\n", i)), 128)
		total += len(contents[i])
	}
	cache := filepath.Join(b.TempDir(), "cache")
	paths := writeCache(b, cache, "none", contents)
	b.SetBytes(int64(total))
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		st, _ := newStoreB(b)
		c, _ := NewCache("file://"+cache, Options{})
		cfg := Config{Caches: []*Cache{c}, RequireSigs: true}
		sub := New(st, DefaultJobs)
		b.StartTimer()
		if err := sub.Realise(context.Background(), cfg, paths, nil); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		st.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "paths/s")
}

// BenchmarkSubstituteBig substitutes one 64 MiB file (zstd and none) and
// reports the peak heap growth.
func BenchmarkSubstituteBig(b *testing.B) {
	data := make([]byte, 64<<20)
	for i := range data {
		data[i] = byte(i*7 + i>>12) // compressible but not trivially
	}
	for _, comp := range []string{"none", "zstd"} {
		b.Run(comp, func(b *testing.B) {
			cache := filepath.Join(b.TempDir(), "cache")
			paths := writeCache(b, cache, comp, [][]byte{data})
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			var peak uint64
			for b.Loop() {
				b.StopTimer()
				st, _ := newStoreB(b)
				c, _ := NewCache("file://"+cache, Options{})
				cfg := Config{Caches: []*Cache{c}, RequireSigs: true}
				sub := New(st, DefaultJobs)
				b.StartTimer()
				p := peakHeap(func() {
					if err := sub.Realise(context.Background(), cfg, paths, nil); err != nil {
						b.Fatal(err)
					}
				})
				peak = max(peak, p)
				b.StopTimer()
				st.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MiB")
		})
	}
}
