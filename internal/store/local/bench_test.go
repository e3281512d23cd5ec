package local

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"cairn/internal/nixhash"
	"cairn/internal/store"
	"cairn/internal/storepath"
)

// BenchmarkAddTree adds a 10 MiB tree of 100 files (one file changes per
// iteration, so every add is new) through nar.Dump → pipe → restore.
func BenchmarkAddTree(b *testing.B) {
	s, _ := newStore(b)
	src := filepath.Join(b.TempDir(), "tree")
	data := make([]byte, 100<<10)
	for i := range data {
		data[i] = byte(i * 7)
	}
	for i := range 100 {
		p := filepath.Join(src, fmt.Sprintf("d%d", i%10), fmt.Sprintf("f%d", i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, data, 0o644)
	}
	ctx := context.Background()
	b.SetBytes(100 * int64(len(data)))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		os.WriteFile(filepath.Join(src, "stamp"), []byte(fmt.Sprint(i)), 0o644)
		if _, err := s.AddPaths(ctx, []string{src}, nixhash.Recursive, nixhash.SHA256); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAdd2000Files adds 2000 small files in one call.
func BenchmarkAdd2000Files(b *testing.B) {
	s, _ := newStore(b)
	dir := b.TempDir()
	srcs := make([]string, 2000)
	for i := range srcs {
		srcs[i] = filepath.Join(dir, fmt.Sprintf("file-%04d", i))
	}
	ctx := context.Background()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		for j, p := range srcs {
			os.WriteFile(p, []byte(fmt.Sprintf("iteration %d file %d\n", i, j)), 0o644)
		}
		b.StartTimer()
		if _, err := s.AddPaths(ctx, srcs, nixhash.Recursive, nixhash.SHA256); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(srcs)), "ns/file")
}

// syntheticStore registers n paths (database rows only) where path i refers to
// i-1, i-2 and i/2, so the closure of the last path is the whole store.
func syntheticStore(b *testing.B, n int) (*Store, []storepath.StorePath) {
	s, _ := newStore(b)
	paths := make([]storepath.StorePath, n)
	infos := make([]*store.PathInfo, n)
	for i := range n {
		name := fmt.Sprintf("pkg-%d", i)
		p, err := s.StoreDir().MakeStorePath("output:out", nixhash.Sum(nixhash.SHA256, []byte(name)), name)
		if err != nil {
			b.Fatal(err)
		}
		paths[i] = p
		info := &store.PathInfo{Path: p, NarHash: nixhash.Sum(nixhash.SHA256, []byte(p.String())), NarSize: 1000 + uint64(i)}
		for _, j := range []int{i - 1, i - 2, i / 2} {
			if j >= 0 && j != i {
				info.References = append(info.References, paths[j])
			}
		}
		infos[i] = info
	}
	if err := s.RegisterValidPaths(context.Background(), infos); err != nil {
		b.Fatal(err)
	}
	return s, paths
}

// BenchmarkQueryPathInfos4000 reads the info of 4000 paths in one call.
func BenchmarkQueryPathInfos4000(b *testing.B) {
	s, paths := syntheticStore(b, 4000)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.QueryPathInfos(ctx, paths); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkQueryPathInfo4000 reads the info of 4000 paths one call each.
func BenchmarkQueryPathInfo4000(b *testing.B) {
	s, paths := syntheticStore(b, 4000)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		for _, p := range paths {
			if _, err := s.QueryPathInfo(ctx, p); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkClosure10000 computes the closure of a path that reaches all of a
// 10,000-path store, in one recursive query.
func BenchmarkClosure10000(b *testing.B) {
	s, paths := syntheticStore(b, 10000)
	ctx := context.Background()
	top := []storepath.StorePath{paths[len(paths)-1]}
	b.ReportAllocs()
	for b.Loop() {
		cl, err := s.QueryClosure(ctx, top, false)
		if err != nil {
			b.Fatal(err)
		}
		if len(cl) != len(paths) {
			b.Fatalf("closure has %d paths, want %d", len(cl), len(paths))
		}
	}
}

// BenchmarkAddCAOneByOne adds small flat files one call each, as a daemon
// serving AddToStore does: one batch, sync and transaction per path.
func BenchmarkAddCAOneByOne(b *testing.B) {
	s, _ := newStore(b)
	ctx := context.Background()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		data := fmt.Sprintf("one by one %d\n", i)
		if _, err := s.AddCA(ctx, fmt.Sprintf("f%d", i), nixhash.Recursive, nixhash.SHA256, nil, narOfFile(data)); err != nil {
			b.Fatal(err)
		}
	}
}

// narOfFile is the NAR of one regular file holding data.
func narOfFile(data string) *bytes.Reader {
	b := narFileHeader(nil, int64(len(data)), false)
	b = append(b, data...)
	return bytes.NewReader(narFileTrailer(b, int64(len(data))))
}
