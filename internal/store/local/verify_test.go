package local

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"cairn/internal/nixhash"
	"cairn/internal/store"
	"cairn/internal/storepath"
	"cairn/internal/testutil/nixtest"
)

// fixture is a small store: a file, a tree that refers to it and to itself, a
// third path with a deriver, and two independent trees with one file in common.
type fixture struct {
	file, tree, derived, twinA, twinB storepath.StorePath
}

func addFixture(t *testing.T, s *Store) fixture {
	t.Helper()
	ctx := context.Background()
	src := t.TempDir()
	writeTree(t, src, map[string]string{
		"file":          "shared contents\n",
		"tree/a":        "shared contents\n",
		"tree/bin/x":    "*#!/bin/sh\necho x\n",
		"tree/link":     "->a",
		"tree/sub/deep": "deep\n",
		"derived/f":     "derived\n",
		"twinA/same":    "twin file, long enough to count\n",
		"twinA/onlyA":   "A\n",
		"twinB/same":    "twin file, long enough to count\n",
		"twinB/onlyB":   "B\n",
		"twinB/exec":    "*twin file, long enough to count\n",
	})
	var f fixture
	add := func(name string, refs ...storepath.StorePath) *store.PathInfo {
		n := narOf(t, filepath.Join(src, name))
		info := infoFor(t, s.StoreDir(), name, n, refs...)
		if err := s.AddNar(ctx, info, bytes.NewReader(n), store.AddNarOptions{}); err != nil {
			t.Fatal(err)
		}
		return info
	}
	f.file = add("file").Path
	treeInfo := infoFor(t, s.StoreDir(), "tree", nil)
	f.tree = add("tree", f.file, treeInfo.Path).Path
	drv, err := s.AddText(ctx, "derived-builder.sh", "echo derived > $out", nil)
	if err != nil {
		t.Fatal(err)
	}
	n := narOf(t, filepath.Join(src, "derived"))
	info := infoFor(t, s.StoreDir(), "derived", n)
	info.Deriver = drv.Path
	info.Ultimate = true
	info.Signatures = []string{"cache.example.org-1:c2lnbmF0dXJl"}
	if err := s.AddNar(ctx, info, bytes.NewReader(n), store.AddNarOptions{}); err != nil {
		t.Fatal(err)
	}
	f.derived = info.Path
	f.twinA = add("twinA").Path
	f.twinB = add("twinB").Path
	return f
}

// nixVerifyOutput runs nix-store --verify on a store and returns its exit
// status and stderr.
func nixVerifyOutput(t *testing.T, root string, flags ...string) (int, string) {
	t.Helper()
	cmd := exec.Command("nix-store", append([]string{"--store", storeURL(root), "--verify"}, flags...)...)
	cmd.Env = nixtest.Env()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), stderr.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, stderr.String()
}

// makeWritable makes a store path's files writable again so a test can tamper.
func makeWritable(t *testing.T, path string) {
	t.Helper()
	filepath.Walk(path, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode()&os.ModeSymlink == 0 {
			os.Chmod(p, fi.Mode().Perm()|0o200)
		}
		return nil
	})
}

// TestVerifyClean: a store Cairn wrote passes both verifiers.
func TestVerifyClean(t *testing.T) {
	nixtest.Require(t, "nix-store")
	s, root := newStore(t)
	addFixture(t, s)
	var log bytes.Buffer
	res, err := s.Verify(context.Background(), VerifyOptions{CheckContents: true, Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors || len(res.Modified)+len(res.Missing)+len(res.Invalidated)+len(res.Unregistered) != 0 {
		t.Errorf("clean store: %+v\n%s", res, log.String())
	}
	want := "reading the Nix store...\nchecking path existence...\nchecking link hashes...\nchecking store hashes...\n"
	if log.String() != want {
		t.Errorf("log:\n%s\nwant:\n%s", log.String(), want)
	}
	if code, out := nixVerifyOutput(t, root, "--check-contents"); code != 0 {
		t.Errorf("nix-store --verify --check-contents: exit %d\n%s", code, out)
	}
}

// TestVerifyFindsProblems tampers with a store in every way verify knows and
// checks that Cairn reports what nix-store --verify reports, and more.
func TestVerifyFindsProblems(t *testing.T) {
	nixtest.Require(t, "nix-store")
	ctx := context.Background()
	s, root := newStore(t)
	f := addFixture(t, s)

	// Modified contents of a valid path.
	twinA := s.RealPath(f.twinA)
	makeWritable(t, twinA)
	if err := os.WriteFile(filepath.Join(twinA, "onlyA"), []byte("tampered\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	os.Chmod(twinA, 0o555)
	// A path on disk that is not registered.
	garbage := infoFor(t, s.StoreDir(), "garbage", nil).Path
	writeTree(t, s.RealStoreDir(), map[string]string{garbage.Base() + "/f": "x"})
	// A vanished path nothing refers to, and one the tree refers to.
	os.RemoveAll(s.RealPath(f.derived))
	makeWritable(t, s.RealPath(f.file))
	os.Remove(s.RealPath(f.file))
	// A corrupt .links entry.
	bogus := nixhash.Sum(nixhash.SHA256, []byte("bogus")).Nix32()
	os.WriteFile(filepath.Join(s.RealStoreDir(), linksDirName, bogus), []byte("bogus"), 0o444)

	// What Nix says first (it invalidates derived, and would leave the rest).
	code, nixOut := nixVerifyOutput(t, root, "--check-contents")
	if code != 1 {
		t.Errorf("nix-store --verify: exit %d, want 1\n%s", code, nixOut)
	}
	for _, want := range []string{
		"path '" + f.twinA.String() + "' was modified!",
		"path '" + f.file.String() + "' disappeared, but it still has valid referrers!",
		"link '" + filepath.Join(s.RealStoreDir(), linksDirName, bogus) + "' was modified!",
		"path '" + f.derived.String() + "' disappeared, removing from database...",
	} {
		if !strings.Contains(nixOut, want) {
			t.Errorf("nix-store --verify output lacks %q:\n%s", want, nixOut)
		}
	}
	// Nix invalidated derived; do it again so Cairn meets the same case.
	os.RemoveAll(s.RealPath(f.twinB))

	var log bytes.Buffer
	res, err := s.Verify(ctx, VerifyOptions{CheckContents: true, Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	out := log.String()
	if !res.Errors {
		t.Errorf("Errors = false\n%s", out)
	}
	for _, want := range []string{
		"path '" + f.twinA.String() + "' was modified! expected hash '",
		"path '" + f.file.String() + "' disappeared, but it still has valid referrers!",
		"link '" + filepath.Join(s.RealStoreDir(), linksDirName, bogus) + "' was modified! expected hash '" + bogus + "'",
		"path '" + f.twinB.String() + "' disappeared, removing from database...",
		"warning: path '" + garbage.String() + "' is in the store but not registered",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("verify output lacks %q:\n%s", want, out)
		}
	}
	if len(res.Modified) != 1 || res.Modified[0].Path != f.twinA {
		t.Errorf("Modified = %+v", res.Modified)
	}
	if !slices.Equal(res.Missing, []storepath.StorePath{f.file}) {
		t.Errorf("Missing = %v", res.Missing)
	}
	if !slices.Equal(res.Invalidated, []storepath.StorePath{f.twinB}) {
		t.Errorf("Invalidated = %v", res.Invalidated)
	}
	if !slices.Equal(res.Unregistered, []string{garbage.Base()}) {
		t.Errorf("Unregistered = %v", res.Unregistered)
	}
	if ok, _ := s.IsValidPath(ctx, f.twinB); ok {
		t.Errorf("%s still valid", f.twinB)
	}

	// Repair removes the corrupt link; the rest cannot be repaired without a
	// substituter, so errors remain.
	log.Reset()
	res, err = s.Verify(ctx, VerifyOptions{CheckContents: true, Repair: true, Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Errors || !strings.Contains(log.String(), "cannot repair path '"+f.twinA.String()+"'") {
		t.Errorf("repair without a substituter: %+v\n%s", res, log.String())
	}
	if _, err := os.Lstat(filepath.Join(s.RealStoreDir(), linksDirName, bogus)); !os.IsNotExist(err) {
		t.Errorf("corrupt link not removed: %v", err)
	}
	// With a repairer that restores the files, nothing remains.
	repairer := func(ctx context.Context, p storepath.StorePath) error {
		makeWritable(t, s.RealPath(p))
		os.RemoveAll(s.RealPath(p))
		src := map[storepath.StorePath]map[string]string{
			f.twinA: {"same": "twin file, long enough to count\n", "onlyA": "A\n"},
			f.file:  {"": "shared contents\n"},
		}[p]
		if _, ok := src[""]; ok {
			return os.WriteFile(s.RealPath(p), []byte(src[""]), 0o444)
		}
		writeTree(t, s.RealPath(p), src)
		return Canonicalise(s.realFD, p.Base(), false)
	}
	log.Reset()
	res, err = s.Verify(ctx, VerifyOptions{CheckContents: true, Repair: true, RepairPath: repairer, Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors {
		t.Errorf("after repair: %+v\n%s", res, log.String())
	}
	os.RemoveAll(s.RealPath(garbage))
	if code, out := nixVerifyOutput(t, root, "--check-contents"); code != 0 {
		t.Errorf("nix-store --verify after repair: exit %d\n%s", code, out)
	}
}

// TestVerifyFillsMissingSize: an old store's missing narSize is filled in, as Nix does.
func TestVerifyFillsMissingSize(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	f := addFixture(t, s)
	want, err := s.QueryPathInfo(ctx, f.tree)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.wdb.Exec(`update ValidPaths set narSize = null where path = ?`, f.tree.String()); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	res, err := s.Verify(ctx, VerifyOptions{CheckContents: true, Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors || !slices.Equal(res.Updated, []storepath.StorePath{f.tree}) ||
		!strings.Contains(log.String(), "updating size field on '"+f.tree.String()+"' to ") {
		t.Errorf("%+v\n%s", res, log.String())
	}
	got, err := s.QueryPathInfo(ctx, f.tree)
	if err != nil {
		t.Fatal(err)
	}
	if got.NarSize != want.NarSize {
		t.Errorf("narSize = %d, want %d", got.NarSize, want.NarSize)
	}
}
