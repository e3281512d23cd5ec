package local

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"cairn/internal/store"
	"cairn/internal/storepath"
)

// TestBatchHoldingLocks: a build that holds its outputs' locks adds them
// through a batch told so; without it the commit waits for the lock it
// already holds (a flock is per open file) until its context ends.
func TestBatchHoldingLocks(t *testing.T) {
	s, _ := newStore(t)
	src := filepath.Join(t.TempDir(), "out")
	os.WriteFile(src, []byte("an output\n"), 0o644)
	data := narOf(t, src)
	info := infoFor(t, s.StoreDir(), "held-out", data)
	locks, err := s.LockStorePaths(context.Background(), []storepath.StorePath{info.Path})
	if err != nil {
		t.Fatal(err)
	}
	defer locks.Unlock(true)

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	b := s.NewBatch()
	if err := b.AddNar(ctx, info, bytes.NewReader(data), store.AddNarOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(ctx); err == nil {
		t.Fatal("a commit took a lock its process holds")
	}

	b = s.NewBatch()
	b.HoldingLocks(info.Path)
	if err := b.AddNar(context.Background(), info, bytes.NewReader(data), store.AddNarOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.IsValidPath(context.Background(), info.Path); err != nil || !ok {
		t.Errorf("%s valid: %v, %v", info.Path, ok, err)
	}
}
