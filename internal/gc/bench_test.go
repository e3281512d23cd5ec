package gc

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cairn/internal/gcroots"
	"cairn/internal/nixhash"
	"cairn/internal/protocol"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
)

// benchStore fills a store with chains of 10 text paths (each refers to the
// one before), chains paths in all; chain k is rooted when live(k). tag makes
// the contents (and so the paths) differ between fills.
func benchStore(b *testing.B, st *local.Store, roots *gcroots.Roots, chains int, tag string, live func(int) bool) {
	b.Helper()
	ctx := context.Background()
	batch := st.NewBatch()
	var tops []storepath.StorePath
	for k := range chains {
		var prev []storepath.StorePath
		for i := range 10 {
			text := fmt.Sprintf("%s chain %d link %d %s\n", tag, k, i, strings.Join(strs(prev), " "))
			info, err := batch.AddCA(ctx, fmt.Sprintf("p-%d-%d", k, i), nixhash.Text, nixhash.SHA256, prev, strings.NewReader(text))
			if err != nil {
				b.Fatal(err)
			}
			prev = []storepath.StorePath{info.Path}
		}
		tops = append(tops, prev[0])
		if batch.Len() >= 1000 {
			if err := batch.Commit(ctx); err != nil {
				b.Fatal(err)
			}
			batch = st.NewBatch()
		}
	}
	if err := batch.Commit(ctx); err != nil {
		b.Fatal(err)
	}
	for k, p := range tops {
		if live(k) {
			if err := os.Symlink(p.String(), filepath.Join(roots.StateDir(), "gcroots", fmt.Sprintf("%s-%d", tag, k))); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func strs(ps []storepath.StorePath) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

// BenchmarkMark10000 finds the dead among 10,000 paths (half of them live):
// roots, one read of the graph, the mark (nix-store --gc --print-dead).
func BenchmarkMark10000(b *testing.B) {
	st, roots := openStore(b, filepath.Join(b.TempDir(), "root"))
	benchStore(b, st, roots, 1000, "x", func(k int) bool { return k%2 == 0 })
	b.ReportAllocs()
	for b.Loop() {
		res, err := Collect(context.Background(), st, roots, Options{Action: protocol.GCReturnDead, MaxFreed: NoLimit, KeepDerivations: true,
			RuntimeRoots: noRuntimeRoots})
		if err != nil || len(res.Paths) != 5000 {
			b.Fatalf("%d dead, %v", len(res.Paths), err)
		}
	}
}

// BenchmarkCollect10000 collects a store of 10,000 paths of which 5,000 are
// dead (mark and sweep; refilling the dead half between rounds is not timed).
func BenchmarkCollect10000(b *testing.B) {
	st, roots := openStore(b, filepath.Join(b.TempDir(), "root"))
	benchStore(b, st, roots, 500, "live", func(int) bool { return true })
	b.ReportAllocs()
	round := 0
	for b.Loop() {
		b.StopTimer()
		round++
		benchStore(b, st, roots, 500, fmt.Sprint("dead", round), func(int) bool { return false })
		b.StartTimer()
		res, err := Collect(context.Background(), st, roots, Options{Action: protocol.GCDeleteDead, MaxFreed: NoLimit, KeepDerivations: true,
			RuntimeRoots: noRuntimeRoots})
		if err != nil || len(res.Paths) != 5000 {
			b.Fatalf("%d deleted, %v", len(res.Paths), err)
		}
	}
}

func noRuntimeRoots(context.Context, storepath.StoreDir) ([]RuntimeRoot, error) { return nil, nil }
