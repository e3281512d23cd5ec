package local

import (
	"bytes"
	"context"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"cairn/internal/nixhash"
	"cairn/internal/store"
	"cairn/internal/storepath"
	"cairn/internal/testutil/nixtest"
)

// sparesMade returns how many spare lock files the store has made: a batch
// that locks its paths makes the first ones.
func sparesMade(s *Store) int {
	s.tempMu.Lock()
	defer s.tempMu.Unlock()
	return s.spareSeq
}

// addAll adds srcs through AddPaths and checks them.
func addAll(t *testing.T, s *Store, srcs []string) {
	t.Helper()
	if _, err := s.AddPaths(context.Background(), srcs, nixhash.Recursive, nixhash.SHA256); err != nil {
		t.Fatal(err)
	}
	checkAdded(t, s, srcs)
}

// TestSoleAdds: a process alone with the store adds without path locks; one
// that shares it (another open store, even in the same process, or Nix
// holding the big lock) or holds a path lock of its own locks every path.
// Afterwards the big lock is shared again: another opener gets it.
func TestSoleAdds(t *testing.T) {
	t.Run("alone", func(t *testing.T) {
		s, root := newStore(t)
		addAll(t, s, sources(t, "f", 2*maxSpareLocks+5))
		if n := sparesMade(s); n != 0 {
			t.Errorf("%d spare lock files made by a sole add, want 0", n)
		}
		bigLockShared(t, root)
	})
	t.Run("another store open", func(t *testing.T) {
		s, root := newStore(t)
		openRoot(t, root)
		addAll(t, s, sources(t, "f", 10))
		if sparesMade(s) == 0 {
			t.Error("no path locks taken beside another open store")
		}
	})
	t.Run("nix holds the big lock", func(t *testing.T) {
		s, root := newStore(t)
		f, err := os.Open(filepath.Join(root, "nix/var/nix/db/big-lock"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := unix.Flock(int(f.Fd()), unix.LOCK_SH); err != nil {
			t.Fatal(err)
		}
		addAll(t, s, sources(t, "f", 10))
		if sparesMade(s) == 0 {
			t.Error("no path locks taken beside a holder of the big lock")
		}
		// The refused conversion gave the store its shared lock back.
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err == nil {
			t.Error("the big lock is free while the store is open")
		}
	})
	t.Run("a path lock held", func(t *testing.T) {
		s, root := newStore(t)
		held := sources(t, "held", 1)
		infos, err := s.AddPaths(context.Background(), held, nixhash.Recursive, nixhash.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		locks, err := s.LockStorePaths(context.Background(), []storepath.StorePath{infos[0].Path})
		if err != nil {
			t.Fatal(err)
		}
		before := sparesMade(s)
		addAll(t, s, sources(t, "f", 10))
		if sparesMade(s) <= before {
			t.Error("no path locks taken while this process holds one")
		}
		locks.Unlock(false)
		bigLockShared(t, root)
	})
}

// bigLockShared checks that the store at root holds its big lock shared:
// another shared holder gets it, an exclusive one does not.
func bigLockShared(t *testing.T, root string) {
	t.Helper()
	f, err := os.Open(filepath.Join(root, "nix/var/nix/db/big-lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		t.Errorf("shared big lock refused: %v", err)
	}
	unix.Flock(int(f.Fd()), unix.LOCK_UN)
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err == nil {
		t.Error("exclusive big lock granted while the store is open")
	}
}

// TestNixWaitsForSoleAdds: Nix processes that start while a Cairn process
// adds many paths, mostly with the store to itself, wait for the big lock
// between its batches and succeed, adding some of the same paths; every path
// is registered once and both verifiers accept the store.
func TestNixWaitsForSoleAdds(t *testing.T) {
	nixtest.Require(t, "nix-store")
	if testing.Short() {
		t.Skip("runs Nix many times")
	}
	root := filepath.Join(t.TempDir(), "root")
	openRoot(t, root).Close()
	srcs := sources(t, "f", 1500)
	cairn := helperCmd(t, "add", root, "", "CAIRN_HELPER_FILES="+strings.Join(srcs, ","))
	var cairnOut, cairnErr bytes.Buffer
	cairn.Stdout, cairn.Stderr = &cairnOut, &cairnErr
	if err := cairn.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cairn.Wait() }()
	pathOf := map[string]string{}
	waited := 0
	var cairnDone error
	for i, running := 0, true; running || i < 3; i++ {
		select {
		case cairnDone = <-done:
			running = false
		default:
		}
		src := srcs[(i*97)%len(srcs)]
		cmd := exec.Command("nix-store", "--store", storeURL(root), "--add", src)
		cmd.Env = nixtest.Env()
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("nix-store --add %s: %v\n%s", src, err, stderr.String())
		}
		if strings.Contains(stderr.String(), "waiting for the big Nix store lock") {
			waited++
		}
		pathOf[src] = strings.TrimSpace(string(out))
	}
	if cairnDone != nil {
		t.Fatalf("cairn: %v\n%s", cairnDone, cairnErr.String())
	}
	t.Logf("%d Nix runs, %d waited for the big lock", len(pathOf), waited)
	printed := strings.Fields(cairnOut.String())
	if len(printed) != len(srcs) {
		t.Fatalf("cairn printed %d paths for %d sources", len(printed), len(srcs))
	}
	all := map[string]bool{}
	for i, p := range printed {
		if q, ok := pathOf[srcs[i]]; ok && q != p {
			t.Errorf("%s added by Nix as %s and by Cairn as %s", srcs[i], q, p)
		}
		all[p] = true
	}
	checkRegisteredOnce(t, root, slices.Collect(maps.Keys(all)))
}

// TestSoleImport: an import into a store nobody else has open registers its
// batch without path locks; beside another open store it locks every path.
// Both give the same valid paths.
func TestSoleImport(t *testing.T) {
	ctx := context.Background()
	from, _ := newStore(t)
	infos, err := from.AddPaths(ctx, sources(t, "f", maxSpareLocks+10), nixhash.Recursive, nixhash.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	var stream bytes.Buffer
	if err := from.Export(ctx, &stream, pathsOf(infos)); err != nil {
		t.Fatal(err)
	}
	for _, shared := range []bool{false, true} {
		s, root := newStore(t)
		if shared {
			openRoot(t, root)
		}
		got, err := s.Import(ctx, bytes.NewReader(stream.Bytes()))
		if err != nil {
			t.Fatal(err)
		}
		want := pathStrings(pathsOf(infos))
		slices.Sort(want)
		imported := pathStrings(got)
		slices.Sort(imported)
		if !slices.Equal(imported, want) {
			t.Errorf("imported %d paths, not the %d exported", len(imported), len(want))
		}
		for _, p := range got {
			if valid, err := s.IsValidPath(ctx, p); err != nil || !valid {
				t.Errorf("%s: valid %v, %v", p, valid, err)
			}
		}
		if made := sparesMade(s); (made == 0) == shared {
			t.Errorf("shared %v: %d spare lock files made", shared, made)
		}
	}
}

func pathsOf(infos []*store.PathInfo) []storepath.StorePath {
	ps := make([]storepath.StorePath, len(infos))
	for i, info := range infos {
		ps[i] = info.Path
	}
	return ps
}
