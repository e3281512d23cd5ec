package gc

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestAutoRules: nothing below min-free's interval or above min-free; one
// collection at a time however many adds wait for it; after one, the next
// only once the space available falls by more than 3%.
func TestAutoRules(t *testing.T) {
	st, roots := openStore(t, filepath.Join(t.TempDir(), "root"))
	free := filepath.Join(t.TempDir(), "free")
	setFree := func(n int) { os.WriteFile(free, []byte(strconv.Itoa(n)), 0o644) }
	t.Setenv(FreeSpaceFileEnv, free)
	var mu sync.Mutex
	var runs int
	a := &Auto{Store: st, Roots: roots, MinFree: 1000, MaxFree: 2000}
	// tell hears of each collection started.
	tell := func(string) {
		mu.Lock()
		runs++
		mu.Unlock()
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return runs }
	ctx := context.Background()

	setFree(5000) // above min-free
	a.Check(ctx, true, tell)
	if n := count(); n != 0 {
		t.Fatalf("collected with space to spare: %d", n)
	}
	setFree(500)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { a.Check(ctx, true, tell) })
	}
	wg.Wait()
	if n := count(); n != 1 {
		t.Fatalf("8 adds at once ran %d collections, want 1", n)
	}
	setFree(490) // within 3% of what the last collection left
	a.Check(ctx, true, tell)
	setFree(480) // 4% less: due again
	a.Check(ctx, true, tell)
	if n := count(); n != 2 {
		t.Fatalf("%d collections, want 2", n)
	}
	a.CheckInterval = time.Hour
	setFree(100)
	a.Check(ctx, true, tell)
	if n := count(); n != 2 {
		t.Errorf("collected within min-free-check-interval: %d", n)
	}
	var nilAuto *Auto
	nilAuto.Check(ctx, true, nil) // min-free 0: never
}

// BenchmarkAutoCheck is what an add pays when no collection is due: the
// check within min-free-check-interval.
func BenchmarkAutoCheck(b *testing.B) {
	st, roots := openStore(b, filepath.Join(b.TempDir(), "root"))
	a := &Auto{Store: st, Roots: roots, MinFree: 1, MaxFree: 2, CheckInterval: 5 * time.Second}
	ctx := context.Background()
	a.Check(ctx, true, nil)
	for b.Loop() {
		a.Check(ctx, true, nil)
	}
}
