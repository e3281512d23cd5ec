package local

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"cairn/internal/storepath"
	"cairn/internal/testutil/nixtest"
)

// linkNames lists a store's .links.
func linkNames(t *testing.T, realStore string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(realStore, linksDirName))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// linkCounts maps every file below a store's paths (not .links, not the
// temporaries) to its link count.
func linkCounts(t *testing.T, realStore string) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	filepath.Walk(realStore, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(realStore, p)
		if strings.HasPrefix(rel, ".") && rel != "." || rel == TempDirName {
			if fi.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !fi.IsDir() {
			out[rel] = uint64(fi.Sys().(*syscall.Stat_t).Nlink)
		}
		return nil
	})
	return out
}

// TestOptimiseMatchesNix optimises the same paths with Cairn and with
// nix-store --optimise and compares the links made and the summary; then both
// verifiers pass, and deleting either copy of a shared file leaves the other intact.
func TestOptimiseMatchesNix(t *testing.T) {
	nixtest.Require(t, "nix-store")
	ctx := context.Background()
	s, root := newStore(t)
	f := addFixture(t, s)

	// The same paths in a store Nix made, through export/import.
	ns := nixCopy(t, s)
	out, err := nixtest.Output(nil, "sh", "-c", "nix-store --store '"+ns.URL()+"' --optimise 2>&1")
	if err != nil {
		t.Fatal(err)
	}
	nixSummary := strings.TrimSpace(string(out))

	var log bytes.Buffer
	stats, err := s.Optimise(ctx, OptimiseOptions{Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	if got := stats.String(); got != nixSummary {
		t.Errorf("summary %q, nix-store --optimise says %q", got, nixSummary)
	}
	if stats.FilesLinked != 2 {
		t.Errorf("FilesLinked = %d, want 2 (tree/a to file, twinB/same to twinA/same)", stats.FilesLinked)
	}
	nixReal := filepath.Join(ns.Root, "nix/store")
	if got, want := linkNames(t, s.RealStoreDir()), linkNames(t, nixReal); !slices.Equal(got, want) {
		t.Errorf(".links: %v, Nix made %v", got, want)
	}
	if got, want := linkCounts(t, s.RealStoreDir()), linkCounts(t, nixReal); !mapsEqual(got, want) {
		t.Errorf("link counts: %v\nNix: %v", got, want)
	}
	nixVerify(t, root)
	if again, err := s.Optimise(ctx, OptimiseOptions{}); err != nil || again.FilesLinked != 0 {
		t.Errorf("second optimise: %+v, %v", again, err)
	}
	nixAgain := nixtest.Run(t, nil, "sh", "-c", "nix-store --store '"+storeURL(root)+"' --optimise 2>&1")
	if !strings.Contains(nixAgain, "hard-linking 0 files") {
		t.Errorf("nix-store --optimise after Cairn's: %s", nixAgain)
	}

	// Delete one twin: the other keeps the shared file; then the other: the link goes.
	same := filepath.Join(s.RealPath(f.twinB), "same")
	if _, err := s.Delete(ctx, []storepath.StorePath{f.twinA}, DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(same); err != nil || string(b) != "twin file, long enough to count\n" {
		t.Errorf("twinB/same after deleting twinA: %q, %v", b, err)
	}
	nixVerify(t, root)
	res, err := s.Verify(ctx, VerifyOptions{CheckContents: true})
	if err != nil || res.Errors {
		t.Errorf("verify after deleting twinA: %+v, %v", res, err)
	}
	before := len(linkNames(t, s.RealStoreDir()))
	if _, err := s.Delete(ctx, []storepath.StorePath{f.twinB}, DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// twinB's three files (same, onlyB, exec) were its links' last users.
	if after := len(linkNames(t, s.RealStoreDir())); after != before-3 {
		t.Errorf("%d links after deleting both twins, want %d", after, before-3)
	}
	for _, n := range linkNames(t, s.RealStoreDir()) {
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(s.RealStoreDir(), linksDirName, n), &st); err != nil || st.Nlink < 2 {
			t.Errorf("link %s: nlink %d, %v", n, st.Nlink, err)
		}
	}
	nixVerify(t, root)
}

func mapsEqual(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestOptimiseSkipsWritable: a writable file in the store is suspicious and left alone, as Nix does.
func TestOptimiseSkipsWritable(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	f := addFixture(t, s)
	p := filepath.Join(s.RealPath(f.tree), "a")
	os.Chmod(p, 0o644)
	var log bytes.Buffer
	if _, err := s.Optimise(ctx, OptimiseOptions{Log: &log}); err != nil {
		t.Fatal(err)
	}
	if want := "warning: skipping suspicious writable file '" + p + "'"; !strings.Contains(log.String(), want) {
		t.Errorf("log lacks %q:\n%s", want, log.String())
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil || st.Nlink != 1 {
		t.Errorf("writable file was linked: nlink %d, %v", st.Nlink, err)
	}
	// The tree's directory keeps its canonical mode and time after others were linked.
	fi, err := os.Lstat(filepath.Join(s.RealPath(f.twinB)))
	if err != nil || fi.Mode().Perm() != 0o555 || fi.ModTime().Unix() != StoreMtime {
		t.Errorf("twinB directory after optimise: %v %v, %v", fi.Mode(), fi.ModTime(), err)
	}
	if errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
}
