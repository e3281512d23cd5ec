package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"cairn/internal/gcroots"
	"cairn/internal/nixhash"
	"cairn/internal/store"
	"cairn/internal/storepath"
	"cairn/internal/testutil/nixtest"
)

// TestDeleteMatchesNix deletes the same paths from a Cairn store and from a
// Nix store holding the same paths (nix-store --delete), and compares what is
// refused, what is deleted, the space freed and the databases afterwards.
func TestDeleteMatchesNix(t *testing.T) {
	nixtest.Require(t, "nix-store")
	ctx := context.Background()
	s, root := newStore(t)
	f := addFixture(t, s)
	ns := nixCopy(t, s)

	nixDelete := func(paths ...storepath.StorePath) (string, error) {
		args := []string{"--store", ns.URL(), "--delete"}
		for _, p := range paths {
			args = append(args, p.String())
		}
		cmd := exec.Command("nix-store", args...)
		cmd.Env = nixtest.Env()
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return string(out), fmt.Errorf("%w: %s", err, stderr.String())
		}
		return string(out), nil
	}
	tests := []struct {
		name    string
		paths   []storepath.StorePath
		inUse   bool
		deleted []storepath.StorePath
	}{
		{"referenced", []storepath.StorePath{f.file}, true, nil},
		{"referrer and referenced", []storepath.StorePath{f.file, f.tree}, false, []storepath.StorePath{f.tree, f.file}},
		{"plain", []storepath.StorePath{f.twinA}, false, []storepath.StorePath{f.twinA}},
		{"again", []storepath.StorePath{f.twinA}, false, []storepath.StorePath{f.twinA}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := s.Delete(ctx, tt.paths, DeleteOptions{})
			nixOut, nixErr := nixDelete(tt.paths...)
			if tt.inUse {
				if !errors.Is(err, ErrPathInUse) || !strings.Contains(err.Error(), "Cannot delete path '"+tt.paths[0].String()+"' since it is still alive") {
					t.Errorf("Delete: %v, want in use", err)
				}
				if nixErr == nil || !strings.Contains(nixErr.Error(), "since it is still alive") {
					t.Errorf("nix-store --delete: %v", nixErr)
				}
			} else if err != nil || nixErr != nil {
				t.Fatalf("Delete: %v; nix-store --delete: %v", err, nixErr)
			}
			if !slices.Equal(res.Paths, tt.deleted) {
				t.Errorf("deleted %v, want %v", res.Paths, tt.deleted)
			}
			if !tt.inUse {
				want := fmt.Sprintf("%d store paths deleted, %.2f MiB freed\n", len(res.Paths), float64(res.BytesFreed)/(1024*1024))
				if nixOut != want {
					t.Errorf("nix-store --delete printed %q, Cairn's count gives %q", nixOut, want)
				}
			}
			for _, p := range tt.deleted {
				if _, err := os.Lstat(s.RealPath(p)); !os.IsNotExist(err) {
					t.Errorf("%s still on disk: %v", p, err)
				}
			}
			var cairnDB, nixDB bytes.Buffer
			if err := s.DumpDB(ctx, &cairnDB, nil); err != nil {
				t.Fatal(err)
			}
			nixDB.WriteString(ns.Run(t, nil, "nix-store", "--dump-db"))
			if strings.TrimSpace(cairnDB.String()) != nixDB.String() {
				t.Errorf("databases differ:\nCairn:\n%s\nNix:\n%s", cairnDB.String(), nixDB.String())
			}
			nixVerify(t, root)
		})
	}
	var refs int
	if err := s.rdb.QueryRow(`select count(*) from Refs r join ValidPaths v on v.id = r.referrer where v.path = ?`, f.tree.String()).Scan(&refs); err != nil || refs != 0 {
		t.Errorf("Refs rows of the deleted tree: %d, %v", refs, err)
	}
}

// TestDeleteInvalidLeftover: files of a path that is not valid are removed,
// and a path that became valid is not.
func TestDeleteInvalidLeftover(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	garbage := infoFor(t, s.StoreDir(), "garbage", nil).Path
	writeTree(t, s.RealStoreDir(), map[string]string{garbage.Base() + "/sub/f": "x"})
	os.Chmod(s.RealPath(garbage)+"/sub", 0o555)
	os.Chmod(s.RealPath(garbage), 0o555)
	res, err := s.Delete(ctx, []storepath.StorePath{garbage}, DeleteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Paths, []storepath.StorePath{garbage}) || res.BytesFreed != 1 {
		t.Errorf("result %+v", res)
	}
	if _, err := os.Lstat(s.RealPath(garbage)); !os.IsNotExist(err) {
		t.Errorf("leftover still there: %v", err)
	}
	if ents := leftoverTemps(t, s.RealStoreDir()); len(ents) != 0 {
		t.Errorf("%d temporaries left", len(ents))
	}
	if _, err := os.Lstat(s.RealPath(garbage) + ".lock"); !os.IsNotExist(err) {
		t.Errorf("lock file left: %v", err)
	}
}

// nixCopy makes a Nix store holding every path of s, through export and
// nix-store --import.
func nixCopy(t *testing.T, s *Store) *nixtest.Store {
	t.Helper()
	ctx := context.Background()
	all, err := s.QueryAllValidPaths(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var exp bytes.Buffer
	if err := s.Export(ctx, &exp, all); err != nil {
		t.Fatal(err)
	}
	ns := nixtest.NewStore(t)
	ns.Run(t, exp.Bytes(), "nix-store", "--import")
	return ns
}

// TestDeleteRetiresSlotDir: a deletion sends later adds to a new slot
// directory (see slotDir); the old one goes once its last slot is released,
// and nothing is lost on the way.
func TestDeleteRetiresSlotDir(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	slotDirs := func() []string { return slotDirsOf(s) }
	doomed, err := s.AddText(ctx, "doomed", "doomed\n", nil)
	if err != nil {
		t.Fatal(err)
	}
	first := slotDirs()
	if len(first) != 1 {
		t.Fatalf("slot dirs after the first add: %v", first)
	}
	// A batch holds a slot of s-1 while the deletion happens.
	b := s.NewBatch()
	pending, err := b.AddCA(ctx, "pending", nixhash.Text, nixhash.SHA256, nil, strings.NewReader("pending\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Delete(ctx, []storepath.StorePath{doomed.Path}, DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	after, err := s.AddText(ctx, "after", "after\n", nil)
	if err != nil {
		t.Fatal(err)
	}
	both := slotDirs()
	if len(both) != 2 || !slices.Contains(both, first[0]) {
		t.Errorf("slot dirs while the batch holds a slot of the retired one (%s): %v", first[0], both)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := slotDirs(); len(got) != 1 || got[0] == first[0] {
		t.Errorf("slot dirs once the batch is committed: %v (retired %s)", got, first[0])
	}
	for _, p := range []storepath.StorePath{pending.Path, after.Path} {
		if ok, err := s.IsValidPath(ctx, p); !ok || err != nil {
			t.Errorf("%s valid = %v, %v", p, ok, err)
		}
		if _, err := os.Lstat(s.RealPath(p)); err != nil {
			t.Error(err)
		}
	}
	// A deletion with no slot handed out since the last one retires nothing.
	if _, err := s.Delete(ctx, []storepath.StorePath{after.Path}, DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Delete(ctx, []storepath.StorePath{pending.Path}, DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := slotDirs(); len(got) != 0 {
		t.Errorf("slot dirs after deletions with no slot in use: %v", got)
	}
	if ents := leftoverTemps(t, s.RealStoreDir()); len(ents) != 0 {
		t.Errorf("temporaries left: %v", ents)
	}
}

// slotDirsOf lists the slot directories in s's temporaries.
func slotDirsOf(s *Store) []string {
	var dirs []string
	tmp := filepath.Join(s.RealStoreDir(), TempDirName)
	tops, _ := os.ReadDir(tmp)
	for _, top := range tops {
		inner, _ := os.ReadDir(filepath.Join(tmp, top.Name()))
		for _, e := range inner {
			if e.IsDir() && strings.HasPrefix(e.Name(), slotDirPrefix) {
				dirs = append(dirs, e.Name())
			}
		}
	}
	return dirs
}

// TestCollectionElsewhereRetiresSlotDir: a collection by another process
// retires the slot directory as a deletion by this one does. Nix 2.8's
// collector, which deletes every entry of the store dir nobody roots, keeps
// the temporaries while a Store holds their root; if they go anyway (a
// collector that ignores the root), adds go on in new ones at once, single
// paths and batches of many alike; and once no Store is open, Nix's
// collector removes them.
func TestCollectionElsewhereRetiresSlotDir(t *testing.T) {
	nixtest.Require(t, "nix-store")
	ctx := context.Background()
	s, root := newStore(t)
	nixURL := "local?root=" + root
	if _, err := s.AddText(ctx, "before", "before\n", nil); err != nil {
		t.Fatal(err)
	}
	first := slotDirsOf(s)
	if len(first) != 1 {
		t.Fatalf("slot dirs after the first add: %v", first)
	}
	// Adds shortly after, without a collection, keep the directory.
	time.Sleep(gcLookEvery + 10*time.Millisecond)
	if _, err := s.AddText(ctx, "same", "same\n", nil); err != nil {
		t.Fatal(err)
	}
	if got := slotDirsOf(s); !slices.Equal(got, first) {
		t.Fatalf("slot dirs without a collection: %v, was %v", got, first)
	}
	// Nix's collection: the temporaries stay, the slot directory retires.
	nixtest.Run(t, nil, "nix-store", "--store", nixURL, "--gc")
	if got := slotDirsOf(s); !slices.Equal(got, first) {
		t.Fatalf("Nix's collector deleted the rooted temporaries: slot dirs %v, was %v", got, first)
	}
	time.Sleep(gcLookEvery + 10*time.Millisecond)
	if _, err := s.AddText(ctx, "other", "other\n", nil); err != nil {
		t.Fatal(err)
	}
	if got := slotDirsOf(s); len(got) != 1 || got[0] == first[0] {
		t.Fatalf("slot dirs after Nix's collection: %v (before %v)", got, first)
	}
	first = slotDirsOf(s)

	// The temporaries deleted under the store: seen at once, without a look.
	if err := os.RemoveAll(filepath.Join(s.RealStoreDir(), TempDirName)); err != nil {
		t.Fatal(err)
	}
	after, err := s.AddText(ctx, "after", "after\n", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := slotDirsOf(s); len(got) != 1 || got[0] == first[0] {
		t.Errorf("slot dirs after the temporaries were deleted: %v (before %v)", got, first)
	}
	src := t.TempDir()
	var srcs []string
	for i := range 300 {
		f := filepath.Join(src, fmt.Sprintf("f%d", i))
		os.WriteFile(f, []byte(fmt.Sprintf("file %d\n", i)), 0o644)
		srcs = append(srcs, f)
	}
	infos, err := s.AddPaths(ctx, srcs, nixhash.Recursive, nixhash.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range append([]storepath.StorePath{after.Path}, infos[0].Path, infos[len(infos)-1].Path) {
		if ok, err := s.IsValidPath(ctx, p); !ok || err != nil {
			t.Errorf("%s valid = %v, %v", p, ok, err)
		}
	}
	if left, err := TempLeftovers(s.RealStoreDir()); err != nil || len(left) > 0 {
		t.Errorf("temporaries left: %v %v", left, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	nixtest.Run(t, nil, "nix-store", "--store", nixURL, "--verify", "--check-contents")
	// No Store open: nobody roots the temporaries, and Nix collects them.
	nixtest.Run(t, nil, "nix-store", "--store", nixURL, "--gc")
	if _, err := os.Stat(filepath.Join(s.RealStoreDir(), TempDirName)); !os.IsNotExist(err) {
		t.Errorf("temporaries after Nix's collection with no Store open: %v", err)
	}
}

// rooterOf adapts gcroots.TempRoots to store.TempRooter.
type rooterOf struct{ t *gcroots.TempRoots }

func (r rooterOf) AddTempRoot(ctx context.Context, p storepath.StorePath) error {
	return r.t.Add(ctx, p)
}

// TestAddsRaceNixCollect adds paths, with a temporary root and without, while
// Nix 2.8's collector runs again and again on the same store: every add
// succeeds (Nix leaves the rooted temporaries alone), every rooted path stays
// valid, and both verifiers accept the store.
func TestAddsRaceNixCollect(t *testing.T) {
	nixtest.Require(t, "nix-store")
	ctx := context.Background()
	s, root := newStore(t)
	tr, err := gcroots.New(s.cfg.StateDir, s.cfg.StoreDir, s.cfg.RealStoreDir).OpenTemp()
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	n := 300
	if testing.Short() {
		n = 100
	}
	var wg sync.WaitGroup
	var rooted []storepath.StorePath
	errs := make(chan error, 2)
	// Paced, so that the adds span several collections (an add loop at
	// full speed keeps Nix's collector reading new entries for ever).
	add := func(ctx context.Context, prefix string, keep bool) {
		defer wg.Done()
		for i := range n {
			info, err := s.AddText(ctx, fmt.Sprintf("%s-%d", prefix, i), strings.Repeat(fmt.Sprintf("%s %d\n", prefix, i), 50), nil)
			if err != nil {
				errs <- err
				return
			}
			if keep {
				rooted = append(rooted, info.Path)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	wg.Add(2)
	go add(store.WithTempRooter(ctx, rooterOf{tr}), "rooted", true)
	go add(ctx, "plain", false)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	collections := 0
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
			if _, err := nixtest.Output(nil, "nix-store", "--store", "local?root="+root, "--gc"); err != nil {
				t.Fatalf("nix-store --gc: %v", err)
			}
			collections++
		}
	}
	t.Logf("%d collections by Nix during %d adds", collections, 2*n)
	if collections < 2 {
		t.Errorf("only %d collections ran during the adds", collections)
	}
	select {
	case err := <-errs:
		t.Fatalf("add while Nix collects: %v", err)
	default:
	}
	for _, p := range rooted {
		if ok, err := s.IsValidPath(ctx, p); !ok || err != nil {
			t.Errorf("%s valid = %v, %v; a live temporary root names it", p, ok, err)
		}
	}
	if res, err := s.Verify(ctx, VerifyOptions{CheckContents: true}); err != nil || res.Errors || len(res.Invalidated) > 0 {
		t.Errorf("cairn verify: %+v %v", res, err)
	}
	nixVerify(t, root)
}
