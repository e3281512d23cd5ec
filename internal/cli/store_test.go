package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"cairn/internal/nar"
	"cairn/internal/nixhash"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
	"cairn/internal/testutil/nixtest"
)

// runStore runs `cairn --store URL store ARGS…` and returns stdout.
func runStore(t *testing.T, url string, args ...string) (string, error) {
	t.Helper()
	root := NewRoot()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(append([]string{"--store", url, "store"}, args...))
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

// nixOut runs a Nix tool and returns its stdout untrimmed.
func nixOut(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := nixtest.Output(nil, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return string(out)
}

// storeFixture makes a chroot store with Cairn and fills it: added files, and
// paths with references, a self-reference, a deriver and signatures.
func storeFixture(t *testing.T) (url, root string, paths []string) {
	t.Helper()
	root = filepath.Join(t.TempDir(), "root")
	url = "local?root=" + root
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "tree/sub"), 0o755)
	os.WriteFile(filepath.Join(src, "tree/a"), []byte("a\n"), 0o644)
	os.WriteFile(filepath.Join(src, "tree/sub/run"), []byte("#!/bin/sh\n"), 0o755)
	os.Symlink("a", filepath.Join(src, "tree/l"))
	os.WriteFile(filepath.Join(src, "file"), []byte("file\n"), 0o644)
	out, err := runStore(t, url, "add", filepath.Join(src, "tree"), filepath.Join(src, "file"))
	if err != nil {
		t.Fatal(err)
	}
	paths = strings.Fields(out)
	out, err = runStore(t, url, "add", "--fixed", "sha1", filepath.Join(src, "file"))
	if err != nil {
		t.Fatal(err)
	}
	paths = append(paths, strings.Fields(out)...)

	cfg, _ := store.ParseURL(url, nil)
	s, err := local.Open(context.Background(), cfg, local.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	dir := s.StoreDir()
	mk := func(name string, body func(self storepath.StorePath) string, refs ...storepath.StorePath) *store.PathInfo {
		p, _ := dir.MakeStorePath("output:out", nixhash.Sum(nixhash.SHA256, []byte(name)), name)
		f := filepath.Join(t.TempDir(), name)
		os.WriteFile(f, []byte(body(p)), 0o644)
		var buf bytes.Buffer
		if err := nar.Dump(&buf, f, nar.DumpOptions{}); err != nil {
			t.Fatal(err)
		}
		info := &store.PathInfo{Path: p, NarHash: nixhash.Sum(nixhash.SHA256, buf.Bytes()), NarSize: uint64(buf.Len()), References: refs}
		if err := s.AddNar(context.Background(), info, &buf, store.AddNarOptions{}); err != nil {
			t.Fatal(err)
		}
		return info
	}
	c := mk("c", func(storepath.StorePath) string { return "leaf" })
	b := mk("b", func(storepath.StorePath) string { return c.Path.String() }, c.Path)
	a := mk("a", func(storepath.StorePath) string { return b.Path.String() + c.Path.String() }, b.Path, c.Path)
	// d refers to itself and has a deriver, signatures and the ultimate flag.
	d := func() *store.PathInfo {
		name := "d"
		p, _ := dir.MakeStorePath("output:out", nixhash.Sum(nixhash.SHA256, []byte(name)), name)
		f := filepath.Join(t.TempDir(), name)
		os.WriteFile(f, []byte(p.String()+b.Path.String()), 0o644)
		var buf bytes.Buffer
		nar.Dump(&buf, f, nar.DumpOptions{})
		deriver, _ := dir.FromBase("00000000000000000000000000000000-d.drv")
		info := &store.PathInfo{Path: p, NarHash: nixhash.Sum(nixhash.SHA256, buf.Bytes()), NarSize: uint64(buf.Len()),
			References: []storepath.StorePath{p, b.Path}, Deriver: deriver, Signatures: []string{"k2:eA==", "k1:eA=="}, Ultimate: true}
		if err := s.AddNar(context.Background(), info, &buf, store.AddNarOptions{}); err != nil {
			t.Fatal(err)
		}
		return info
	}()
	for _, p := range []storepath.StorePath{c.Path, b.Path, a.Path, d.Path} {
		paths = append(paths, p.String())
	}
	return url, root, paths
}

func TestStoreAddMatchesNixStoreAdd(t *testing.T) {
	nixtest.Require(t, "nix-store")
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "dir/x"), 0o755)
	os.WriteFile(filepath.Join(src, "dir/x/y"), []byte("y"), 0o644)
	os.WriteFile(filepath.Join(src, "f"), []byte("contents\n"), 0o755)
	args := []string{filepath.Join(src, "dir"), filepath.Join(src, "f")}
	tests := []struct {
		name  string
		cairn []string
		nix   []string
		args  []string
	}{
		{"add", nil, []string{"--add"}, args},
		{"fixed sha256", []string{"--fixed", "sha256"}, []string{"--add-fixed", "sha256"}, args[1:]},
		{"fixed md5", []string{"--fixed", "md5"}, []string{"--add-fixed", "md5"}, args[1:]},
		{"fixed recursive sha1", []string{"--fixed", "sha1", "--recursive"}, []string{"--add-fixed", "--recursive", "sha1"}, args},
		{"fixed recursive sha512", []string{"--fixed", "sha512", "--recursive"}, []string{"--add-fixed", "--recursive", "sha512"}, args},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url := "local?root=" + filepath.Join(t.TempDir(), "root")
			got, err := runStore(t, url, append(append([]string{"add"}, tt.cairn...), tt.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			ns := nixtest.NewStore(t)
			want := nixOut(t, "nix-store", append(append([]string{"--store", ns.URL()}, tt.nix...), tt.args...)...)
			if got != want {
				t.Errorf("cairn store add printed\n%s\nnix-store printed\n%s", got, want)
			}
		})
	}
	if _, err := runStore(t, "local?root="+t.TempDir(), "add", "--recursive", args[0]); err == nil {
		t.Error("--recursive without --fixed was accepted")
	}
}

func TestStorePathInfoJSONMatchesNix(t *testing.T) {
	nixtest.Require(t, "nix")
	url, _, paths := storeFixture(t)
	for _, args := range [][]string{paths, paths[:1], {paths[len(paths)-1]}} {
		got, err := runStore(t, url, append([]string{"path-info", "--json"}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		want := nixOut(t, "nix", append([]string{"--store", url, "path-info", "--json"}, args...)...)
		if got != want {
			t.Errorf("cairn store path-info --json %v:\n%s\nnix path-info --json:\n%s", args, got, want)
		}
	}
	// -r over a closure.
	last := paths[len(paths)-1]
	got, err := runStore(t, url, "path-info", "--json", "-r", last)
	if err != nil {
		t.Fatal(err)
	}
	if want := nixOut(t, "nix", "--store", url, "path-info", "--json", "-r", last); got != want {
		t.Errorf("path-info --json -r:\n%s\nnix:\n%s", got, want)
	}
	got, err = runStore(t, url, "path-info", "-r", last)
	if err != nil {
		t.Fatal(err)
	}
	if want := nixOut(t, "nix", "--store", url, "path-info", "-r", last); got != want {
		t.Errorf("path-info -r:\n%s\nnix:\n%s", got, want)
	}
}

func TestStoreQueryMatchesNixStore(t *testing.T) {
	nixtest.Require(t, "nix-store")
	url, _, paths := storeFixture(t)
	for _, q := range []string{"--references", "--referrers", "--requisites", "--deriver", "--hash", "--size"} {
		for _, args := range [][]string{paths, paths[len(paths)-2:], paths[len(paths)-3 : len(paths)-2]} {
			t.Run(q, func(t *testing.T) {
				got, err := runStore(t, url, append([]string{"query", q}, args...)...)
				if err != nil {
					t.Fatal(err)
				}
				want := nixOut(t, "nix-store", append([]string{"--store", url, "-q", q}, args...)...)
				if got != want {
					t.Errorf("cairn store query %s %v:\n%s\nnix-store -q:\n%s", q, args, got, want)
				}
			})
		}
	}
	if _, err := runStore(t, url, "query", "--hash", "--size", paths[0]); err == nil {
		t.Error("two query types were accepted")
	}
	if _, err := runStore(t, url, "query", "--hash", "/nix/store/00000000000000000000000000000000-x"); err == nil ||
		err.Error() != "path '/nix/store/00000000000000000000000000000000-x' is not valid" {
		t.Errorf("query of an invalid path: %v", err)
	}
}

func TestStoreDumpMatchesNixStoreDump(t *testing.T) {
	nixtest.Require(t, "nix-store")
	url, root, paths := storeFixture(t)
	for _, p := range paths {
		got, err := runStore(t, url, "dump", p)
		if err != nil {
			t.Fatal(err)
		}
		// nix-store --dump reads a file system path: give it the real one.
		real := filepath.Join(root, p)
		out, err := exec.Command("nix-store", "--dump", real).Output()
		if err != nil {
			t.Fatal(err)
		}
		if got != string(out) {
			t.Errorf("cairn store dump %s differs from nix-store --dump", p)
		}
	}
}

// TestStoreAddStopsAtBadSourceAsNix: a source that cannot be added ends
// `cairn store add` as it ends `nix-store --add`: the paths before it are
// added and printed, the ones after are not, and the command fails. 70
// sources put the bad one past the first registration chunk.
func TestStoreAddStopsAtBadSourceAsNix(t *testing.T) {
	nixtest.Require(t, "nix-store")
	src := t.TempDir()
	var args []string
	for i := range 70 {
		p := filepath.Join(src, fmt.Sprintf("f%02d", i))
		if i == 66 {
			p = filepath.Join(src, "missing")
		} else if err := os.WriteFile(p, []byte(fmt.Sprintf("file %d\n", i)), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, p)
	}
	root := filepath.Join(t.TempDir(), "root")
	got, err := runStore(t, "local?root="+root, append([]string{"add"}, args...)...)
	if err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("cairn store add with a missing source: %v", err)
	}
	ns := nixtest.NewStore(t)
	want, nerr := nixtest.Output(nil, "nix-store", append([]string{"--store", ns.URL(), "--add"}, args...)...)
	if nerr == nil {
		t.Fatal("nix-store --add with a missing source succeeded")
	}
	if got != string(want) {
		t.Errorf("cairn store add printed\n%s\nnix-store printed\n%s", got, want)
	}
	if n := strings.Count(got, "\n"); n != 66 {
		t.Errorf("%d paths printed, want 66", n)
	}
	valid, err := runStore(t, "local?root="+root, "query", "--requisites", strings.Fields(got)[65])
	if err != nil || strings.TrimSpace(valid) != strings.Fields(got)[65] {
		t.Errorf("the last path printed is not valid: %q %v", valid, err)
	}
	ents, _ := os.ReadDir(filepath.Join(root, "nix/store"))
	var paths int
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), ".") && e.Name() != local.TempDirName && !strings.HasSuffix(e.Name(), ".lock") {
			paths++
		}
	}
	if paths != 66 {
		t.Errorf("%d entries in the store dir, want the 66 added", paths)
	}
}
