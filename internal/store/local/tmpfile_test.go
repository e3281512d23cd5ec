package local

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"cairn/internal/nixhash"
	"cairn/internal/storepath"
)

// prepared adds the files at srcs to a new batch and returns it with how many
// entries the slots hold before its commit.
func prepared(t *testing.T, s *Store, srcs ...string) (*Batch, int) {
	t.Helper()
	b := s.NewBatch()
	for _, src := range srcs {
		if _, err := b.AddPath(context.Background(), src, nixhash.Recursive, nixhash.SHA256); err != nil {
			t.Fatal(err)
		}
	}
	left, err := TempLeftovers(s.RealStoreDir())
	if err != nil {
		t.Fatal(err)
	}
	return b, len(left)
}

// sources writes n files with distinct contents into a new directory.
func sources(t *testing.T, prefix string, n int) []string {
	t.Helper()
	dir := t.TempDir()
	srcs := make([]string, n)
	for i := range srcs {
		srcs[i] = filepath.Join(dir, fmt.Sprintf("%s%d", prefix, i))
		if err := os.WriteFile(srcs[i], []byte(fmt.Sprintf("%s %d\n", prefix, i)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return srcs
}

// checkAdded checks that each source's path is valid with the source's
// contents, and that nothing is left open or in the temporaries.
func checkAdded(t *testing.T, s *Store, srcs []string) {
	t.Helper()
	ctx := context.Background()
	for _, src := range srcs {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		p, err := s.StoreDir().MakeFixedOutputPath(filepath.Base(src), nixhash.ContentAddress{Method: nixhash.Recursive, Hash: narHashOf(t, src)}, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		if valid, err := s.IsValidPath(ctx, p); err != nil || !valid {
			t.Errorf("%s: valid %v, %v", p, valid, err)
		}
		got, err := os.ReadFile(s.RealPath(p))
		if err != nil || string(got) != string(data) {
			t.Errorf("%s holds %q, %v; want %q", p, got, err, data)
		}
	}
	if n := s.tmpfiles.open.Load(); n != 0 {
		t.Errorf("%d unnamed files still open", n)
	}
	if left := leftoverTemps(t, s.RealStoreDir()); len(left) != 0 {
		t.Errorf("temporaries left: %v", left)
	}
}

func narHashOf(t *testing.T, src string) nixhash.Hash {
	t.Helper()
	h := nixhash.NewHasher(nixhash.SHA256)
	h.Write(narOf(t, src))
	return h.Sum()
}

// TestUnnamedFiles: after the first file (named, which tells whether linking
// works), files wait for their commit without a name in the slots, and are
// linked into the store dir at commit; a discarded batch leaves nothing.
func TestUnnamedFiles(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	srcs := sources(t, "f", 4)
	b, slots := prepared(t, s, srcs...)
	if st := s.tmpfiles.state.Load(); st != tmpfileYes {
		t.Fatalf("unnamed files state %d, want %d (yes)", st, tmpfileYes)
	}
	if slots != 1 {
		t.Errorf("%d slot entries before the commit, want 1 (the first file)", slots)
	}
	if n := s.tmpfiles.open.Load(); n != 3 {
		t.Errorf("%d unnamed files open, want 3", n)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	checkAdded(t, s, srcs)

	gone := sources(t, "g", 3)
	b, _ = prepared(t, s, gone...)
	b.Discard()
	if n := s.tmpfiles.open.Load(); n != 0 {
		t.Errorf("%d unnamed files open after Discard", n)
	}
	if left := leftoverTemps(t, s.RealStoreDir()); len(left) != 0 {
		t.Errorf("temporaries left after Discard: %v", left)
	}
}

// TestUnnamedOverLeftover: an unnamed file whose store path is taken by an
// invalid leftover replaces it, as a named one does.
func TestUnnamedOverLeftover(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	srcs := sources(t, "f", 3)
	p, err := s.StoreDir().MakeFixedOutputPath("f2", nixhash.ContentAddress{Method: nixhash.Recursive, Hash: narHashOf(t, srcs[2])}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.RealPath(p), []byte("a crashed writer's half\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	b, slots := prepared(t, s, srcs...)
	if slots != 1 {
		t.Fatalf("%d slot entries before the commit, want 1", slots)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	checkAdded(t, s, srcs)
}

// TestNamedFallback: a store whose file system takes no unnamed files, or
// that holds maxUnnamed open already, names every slot.
func TestNamedFallback(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		name  string
		state int32
		open  int32
	}{
		{"unsupported", tmpfileNo, 0},
		{"too many open", tmpfileYes, maxUnnamed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newStore(t)
			s.tmpfiles.state.Store(tt.state)
			s.tmpfiles.open.Store(tt.open)
			srcs := sources(t, "f", 3)
			b, slots := prepared(t, s, srcs...)
			if slots != 3 {
				t.Errorf("%d slot entries before the commit, want 3", slots)
			}
			if err := b.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			s.tmpfiles.open.Add(-tt.open)
			checkAdded(t, s, srcs)
		})
	}
}

// TestUnnamedDerivation: a derivation added as an unnamed file has its
// outputs registered (read through its descriptor).
func TestUnnamedDerivation(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	if _, err := s.AddText(ctx, "first", "the named one\n", nil); err != nil {
		t.Fatal(err)
	}
	text, err := os.ReadFile("../../derivation/testdata/golden/3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple.drv")
	if err != nil {
		t.Fatal(err)
	}
	b := s.NewBatch()
	info, err := b.AddCA(ctx, "simple.drv", nixhash.Text, nixhash.SHA256, nil, bytes.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if n := s.tmpfiles.open.Load(); n != 1 {
		t.Fatalf("%d unnamed files open, want 1", n)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if want := "/nix/store/3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple.drv"; info.Path.String() != want {
		t.Fatalf("path %s, want %s", info.Path, want)
	}
	outs, err := s.QueryDerivationOutputs(ctx, info.Path)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := storepath.Parse("/nix/store/94f9f6i31zwzwbf0kclq1naqxxi4c7v9-simple")
	if len(outs) != 1 || outs["out"] != want {
		t.Errorf("outputs %v, want out = %s", outs, want)
	}
}
