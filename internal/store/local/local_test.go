package local

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"cairn/internal/nar"
	"cairn/internal/nixbase32"
	"cairn/internal/nixhash"
	"cairn/internal/store"
	"cairn/internal/storepath"
	"cairn/internal/testutil/nixtest"
)

// openRoot opens (creating) a chroot store rooted at root.
func openRoot(t testing.TB, root string) *Store {
	t.Helper()
	cfg, err := store.ParseURL("local?root="+root, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(context.Background(), cfg, DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newStore(t testing.TB) (*Store, string) {
	t.Helper()
	root := filepath.Join(t.TempDir(), "root")
	return openRoot(t, root), root
}

// writeTree creates files under dir from a map of relative path → contents;
// "->target" makes a symlink, a trailing "/" a directory, and a "*" prefix on
// the contents an executable file.
func writeTree(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for name, data := range files {
		p := filepath.Join(dir, name)
		if strings.HasSuffix(name, "/") {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		switch {
		case strings.HasPrefix(data, "->"):
			err := os.Symlink(data[2:], p)
			if err != nil {
				t.Fatal(err)
			}
		case strings.HasPrefix(data, "*"):
			if err := os.WriteFile(p, []byte(data[1:]), 0o755); err != nil {
				t.Fatal(err)
			}
		default:
			if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// nixPathInfo runs nix path-info --json on a store and returns the entries by path.
func nixPathInfo(t *testing.T, url string, paths ...string) map[string]map[string]any {
	t.Helper()
	args := append([]string{"--store", url, "path-info", "--json"}, paths...)
	out := nixtest.Run(t, nil, "nix", args...)
	var list []map[string]any
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("nix path-info output %q: %v", out, err)
	}
	m := map[string]map[string]any{}
	for _, e := range list {
		m[e["path"].(string)] = e
	}
	return m
}

func storeURL(root string) string { return "local?root=" + root }

func nixVerify(t *testing.T, root string) {
	t.Helper()
	out, err := nixtest.Output(nil, "nix-store", "--store", storeURL(root), "--verify", "--check-contents")
	if err != nil {
		t.Fatalf("nix-store --verify --check-contents: %v\n%s", err, out)
	}
}

// TestAddMatchesNix adds the same inputs with Cairn and with nix-store --add /
// --add-fixed and checks the paths and Nix's view of their metadata agree, and
// that Nix accepts Cairn's store.
func TestAddMatchesNix(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix")
	src := t.TempDir()
	writeTree(t, filepath.Join(src, "tree"), map[string]string{
		"a": "hello\n", "bin/run": "*#!/bin/sh\necho hi\n", "link": "->a", "empty/": "", "sub/deep/f": "deep",
	})
	writeTree(t, src, map[string]string{"file.txt": "some text\n", "script": "*#!/bin/sh\n", "empty": ""})
	tests := []struct {
		name    string
		src     string
		nixArgs []string
		method  nixhash.Method
		algo    nixhash.Algorithm
	}{
		{"add tree", "tree", []string{"--add"}, nixhash.Recursive, nixhash.SHA256},
		{"add file", "file.txt", []string{"--add"}, nixhash.Recursive, nixhash.SHA256},
		{"add executable", "script", []string{"--add"}, nixhash.Recursive, nixhash.SHA256},
		{"add empty file", "empty", []string{"--add"}, nixhash.Recursive, nixhash.SHA256},
		{"flat sha256", "file.txt", []string{"--add-fixed", "sha256"}, nixhash.Flat, nixhash.SHA256},
		{"flat sha1", "file.txt", []string{"--add-fixed", "sha1"}, nixhash.Flat, nixhash.SHA1},
		{"flat md5", "script", []string{"--add-fixed", "md5"}, nixhash.Flat, nixhash.MD5},
		{"flat sha512", "empty", []string{"--add-fixed", "sha512"}, nixhash.Flat, nixhash.SHA512},
		{"recursive sha1", "tree", []string{"--add-fixed", "--recursive", "sha1"}, nixhash.Recursive, nixhash.SHA1},
		{"recursive sha512", "tree", []string{"--add-fixed", "--recursive", "sha512"}, nixhash.Recursive, nixhash.SHA512},
		{"recursive sha256", "file.txt", []string{"--add-fixed", "--recursive", "sha256"}, nixhash.Recursive, nixhash.SHA256},
	}
	s, root := newStore(t)
	ns := nixtest.NewStore(t)
	var paths []string
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(src, tt.src)
			infos, err := s.AddPaths(context.Background(), []string{p}, tt.method, tt.algo)
			if err != nil {
				t.Fatal(err)
			}
			want := ns.Run(t, nil, "nix-store", append(tt.nixArgs, p)...)
			if got := infos[0].Path.String(); got != want {
				t.Fatalf("cairn added %s, nix-store %v gave %s", got, tt.nixArgs, want)
			}
			paths = append(paths, want)
		})
	}
	nixVerify(t, root)
	ours := nixPathInfo(t, storeURL(root), paths...)
	theirs := nixPathInfo(t, ns.URL(), paths...)
	for p, e := range theirs {
		delete(e, "registrationTime")
		delete(ours[p], "registrationTime")
		if !reflect.DeepEqual(ours[p], e) {
			t.Errorf("nix path-info of %s:\ncairn's store: %v\nnix's store:   %v", p, ours[p], e)
		}
	}
	// Cairn reads the same metadata as Nix from its own store.
	for _, p := range paths {
		sp, _ := storepath.Parse(p)
		info, err := s.QueryPathInfo(context.Background(), sp)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := info.NarHash.SRI(), ours[p]["narHash"]; got != want {
			t.Errorf("%s: narHash %s, nix reads %s", p, got, want)
		}
		if got, want := info.CA.String(), ours[p]["ca"]; got != want {
			t.Errorf("%s: ca %s, nix reads %s", p, got, want)
		}
	}
}

// TestCairnReadsNixStore opens a store that Nix created and filled, and reads
// what Nix reads: path infos, derivation outputs, valid derivers.
func TestCairnReadsNixStore(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix", "nix-instantiate")
	ns := nixtest.NewStore(t)
	src := t.TempDir()
	writeTree(t, src, map[string]string{"f": "flat file\n", "d/x": "x", "d/l": "->x"})
	added := []string{
		ns.Run(t, nil, "nix-store", "--add", filepath.Join(src, "d")),
		ns.Run(t, nil, "nix-store", "--add-fixed", "sha1", filepath.Join(src, "f")),
	}
	drv := ns.Run(t, nil, "nix-instantiate", "-E", fmt.Sprintf(`let dep = derivation { name = "dep"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo > $out"]; };
in derivation { name = "x"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo ${dep} > $out"]; src = %s/f; outputs = ["out" "dev"]; }`, src))
	all := strings.Fields(ns.Run(t, nil, "nix-store", "-qR", drv))
	s := openRoot(t, ns.Root)
	ctx := context.Background()
	// nix path-info takes a .drv to mean its outputs: compare derivations below.
	var nonDrv []string
	for _, p := range append(all, added...) {
		if !strings.HasSuffix(p, ".drv") {
			nonDrv = append(nonDrv, p)
		}
	}
	for _, p := range all {
		if strings.HasSuffix(p, ".drv") {
			sp, _ := storepath.Parse(p)
			info, err := s.QueryPathInfo(ctx, sp)
			if err != nil {
				t.Fatal(err)
			}
			if want := ns.Run(t, nil, "nix-store", "-q", "--hash", p); info.NarHash.String() != want {
				t.Errorf("%s: hash %s, nix says %s", p, info.NarHash, want)
			}
			if want := ns.Run(t, nil, "nix-store", "-q", "--references", p); strings.Join(strings.Fields(want), " ") !=
				strings.Join(pathStrings(info.References), " ") {
				t.Errorf("%s: references %v, nix says %s", p, info.References, want)
			}
		}
	}
	want := nixPathInfo(t, ns.URL(), nonDrv...)
	for p, e := range want {
		sp, err := storepath.Parse(p)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.QueryPathInfo(ctx, sp)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]any{"path": p, "narHash": info.NarHash.SRI(), "narSize": float64(info.NarSize),
			"references": refStrings(info.References), "registrationTime": float64(info.RegistrationTime.Unix())}
		if !info.CA.IsZero() {
			got["ca"] = info.CA.String()
		}
		if !reflect.DeepEqual(got, e) {
			t.Errorf("path info of %s:\ncairn: %v\nnix:   %v", p, got, e)
		}
	}
	dp, _ := storepath.Parse(drv)
	outs, err := s.QueryDerivationOutputs(ctx, dp)
	if err != nil {
		t.Fatal(err)
	}
	nixOuts := strings.Fields(ns.Run(t, nil, "nix-store", "-q", "--outputs", drv))
	var gotOuts []string
	for _, o := range outs {
		gotOuts = append(gotOuts, o.String())
	}
	slices.Sort(gotOuts)
	slices.Sort(nixOuts)
	if !slices.Equal(gotOuts, nixOuts) {
		t.Errorf("derivation outputs %v, nix says %v", gotOuts, nixOuts)
	}
	derivers, err := s.QueryValidDerivers(ctx, outs["dev"])
	if err != nil || len(derivers) != 1 || derivers[0] != dp {
		t.Errorf("valid derivers of %s = %v, %v; want [%s]", outs["dev"], derivers, err, dp)
	}

	// Cairn registers the same .drv to the same path and rows from its text.
	s2, _ := newStore(t)
	for _, p := range all {
		sp, _ := storepath.Parse(p)
		info, _ := s.QueryPathInfo(ctx, sp)
		var buf bytes.Buffer
		if err := s.NarFromPath(ctx, sp, &buf); err != nil {
			t.Fatal(err)
		}
		if err := s2.AddNar(ctx, info, &buf, store.AddNarOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	outs2, err := s2.QueryDerivationOutputs(ctx, dp)
	if err != nil || !reflect.DeepEqual(outs2, outs) {
		t.Errorf("outputs registered by cairn = %v, %v; nix registered %v", outs2, err, outs)
	}
	text, err := os.ReadFile(s.RealPath(dp))
	if err != nil {
		t.Fatal(err)
	}
	info, _ := s.QueryPathInfo(ctx, dp)
	s3, _ := newStore(t)
	for _, r := range info.References {
		ri, _ := s.QueryPathInfo(ctx, r)
		var buf bytes.Buffer
		s.NarFromPath(ctx, r, &buf)
		if err := s3.AddNar(ctx, ri, &buf, store.AddNarOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ti, err := s3.AddText(ctx, dp.Name(), string(text), info.References)
	if err != nil {
		t.Fatal(err)
	}
	if ti.Path != dp || ti.NarHash != info.NarHash || ti.CA != info.CA {
		t.Errorf("AddText of %s = %s %s %s; nix has %s %s %s", dp, ti.Path, ti.NarHash, ti.CA, dp, info.NarHash, info.CA)
	}
}

func pathStrings(ps []storepath.StorePath) []string {
	out := []string{}
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

func refStrings(ps []storepath.StorePath) []any {
	out := []any{}
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

// narOf serialises a tree on disk.
func narOf(t testing.TB, path string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := nar.Dump(&buf, path, nar.DumpOptions{}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// infoFor makes the info AddNar needs for an input-addressed path.
func infoFor(t testing.TB, dir storepath.StoreDir, name string, narBytes []byte, refs ...storepath.StorePath) *store.PathInfo {
	t.Helper()
	// An input-addressed-looking path: any valid hash part will do.
	h := nixhash.Sum(nixhash.SHA256, []byte(name))
	p, err := dir.MakeStorePath("output:out", h, name)
	if err != nil {
		t.Fatal(err)
	}
	return &store.PathInfo{Path: p, NarHash: nixhash.Sum(nixhash.SHA256, narBytes), NarSize: uint64(len(narBytes)), References: refs}
}

// TestAddNarMetadata adds paths with references, a self-reference, a deriver,
// signatures and the ultimate flag, and checks Nix reads them back.
func TestAddNarMetadata(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix")
	s, root := newStore(t)
	ctx := context.Background()
	src := t.TempDir()
	writeTree(t, filepath.Join(src, "dep"), map[string]string{"lib": "library"})
	depNar := narOf(t, filepath.Join(src, "dep"))
	dep := infoFor(t, s.StoreDir(), "dep", depNar)
	top := infoFor(t, s.StoreDir(), "top", nil)
	writeTree(t, filepath.Join(src, "top"), map[string]string{
		"bin/prog": "*#!/bin/sh\nexec " + dep.Path.String() + "/lib\n# self: " + top.Path.String() + "\n",
	})
	topNar := narOf(t, filepath.Join(src, "top"))
	top.NarHash, top.NarSize = nixhash.Sum(nixhash.SHA256, topNar), uint64(len(topNar))
	top.References = []storepath.StorePath{top.Path, dep.Path}
	top.Deriver, _ = s.StoreDir().FromBase("00000000000000000000000000000000-top.drv")
	top.Signatures = []string{"b-key:c2ln", "a-key:c2ln"}
	top.Ultimate = true

	// Both in one batch: top's reference to dep resolves inside the batch.
	b := s.NewBatch()
	if err := b.AddNar(ctx, top, bytes.NewReader(topNar), store.AddNarOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := b.AddNar(ctx, dep, bytes.NewReader(depNar), store.AddNarOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	nixVerify(t, root)
	q := func(args ...string) string {
		return nixtest.Run(t, nil, "nix-store", append([]string{"--store", storeURL(root), "-q"}, args...)...)
	}
	if got, want := q("--references", top.Path.String()), dep.Path.String()+"\n"+top.Path.String(); got != want {
		t.Errorf("nix-store -q --references = %q, want %q", got, want)
	}
	if got := q("--referrers", dep.Path.String()); got != top.Path.String() {
		t.Errorf("nix-store -q --referrers = %q, want %q", got, top.Path)
	}
	if got := q("--deriver", top.Path.String()); got != top.Deriver.String() {
		t.Errorf("nix-store -q --deriver = %q, want %q", got, top.Deriver)
	}
	if got := q("--deriver", dep.Path.String()); got != "unknown-deriver" {
		t.Errorf("nix-store -q --deriver = %q, want unknown-deriver", got)
	}
	if got := q("--hash", top.Path.String()); got != top.NarHash.String() {
		t.Errorf("nix-store -q --hash = %q, want %q", got, top.NarHash)
	}
	e := nixPathInfo(t, storeURL(root), top.Path.String())[top.Path.String()]
	if e["ultimate"] != true || !reflect.DeepEqual(e["signatures"], []any{"a-key:c2ln", "b-key:c2ln"}) {
		t.Errorf("nix path-info = %v, want ultimate and sorted signatures", e)
	}
	info, err := s.QueryPathInfo(ctx, top.Path)
	if err != nil {
		t.Fatal(err)
	}
	want := top.Clone()
	storepath.SortPaths(want.References)
	slices.Sort(want.Signatures)
	want.RegistrationTime = info.RegistrationTime
	if !reflect.DeepEqual(info, want) {
		t.Errorf("QueryPathInfo = %+v\nwant %+v", info, want)
	}
	// The NAR reads back byte for byte.
	var buf bytes.Buffer
	if err := s.NarFromPath(ctx, top.Path, &buf); err != nil || !bytes.Equal(buf.Bytes(), topNar) {
		t.Errorf("NarFromPath differs from the NAR added (err %v)", err)
	}
}

// assertClean checks that nothing of a failed add is left behind.
func assertClean(t *testing.T, s *Store, p storepath.StorePath) {
	t.Helper()
	if ok, err := s.IsValidPath(context.Background(), p); ok || err != nil {
		t.Errorf("%s valid = %v, %v after a failed add", p, ok, err)
	}
	if _, err := os.Lstat(s.RealPath(p)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s exists after a failed add (%v)", s.RealPath(p), err)
	}
	if ents := leftoverTemps(t, s.RealStoreDir()); len(ents) != 0 {
		t.Errorf("temporaries left: %v", ents)
	}
}

func TestAddNarRejectsMismatch(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	src := t.TempDir()
	writeTree(t, filepath.Join(src, "p"), map[string]string{"a": "aaa", "b/c": "ccc"})
	narBytes := narOf(t, filepath.Join(src, "p"))
	good := infoFor(t, s.StoreDir(), "p", narBytes)
	other := nixhash.Sum(nixhash.SHA256, []byte("other"))
	caPath, _ := s.StoreDir().MakeFixedOutputPath("p", nixhash.ContentAddress{Method: nixhash.Recursive, Hash: other}, nil, false)
	tests := []struct {
		name   string
		modify func(*store.PathInfo)
		nar    []byte
		want   error
	}{
		{"wrong hash", func(i *store.PathInfo) { i.NarHash = other }, narBytes, store.ErrHashMismatch},
		{"wrong size", func(i *store.PathInfo) { i.NarSize++ }, narBytes, store.ErrHashMismatch},
		{"wrong ca", func(i *store.PathInfo) {
			i.Path, i.CA = caPath, nixhash.ContentAddress{Method: nixhash.Recursive, Hash: other}
		}, narBytes, store.ErrHashMismatch},
		{"ca claim for another path", func(i *store.PathInfo) {
			i.CA = nixhash.ContentAddress{Method: nixhash.Recursive, Hash: i.NarHash}
		}, narBytes, store.ErrHashMismatch},
		{"truncated", func(*store.PathInfo) {}, narBytes[:len(narBytes)-8], io.ErrUnexpectedEOF},
		{"not a nar", func(*store.PathInfo) {}, []byte("this is not a nar at all"), nar.ErrFormat},
		{"reference not valid", func(i *store.PathInfo) {
			i.References = []storepath.StorePath{infoFor(t, s.StoreDir(), "missing", nil).Path}
		}, narBytes, store.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info := good.Clone()
			tt.modify(info)
			err := s.AddNar(ctx, info, bytes.NewReader(tt.nar), store.AddNarOptions{})
			if !errors.Is(err, tt.want) {
				t.Fatalf("AddNar error = %v, want %v", err, tt.want)
			}
			assertClean(t, s, info.Path)
		})
	}
	if err := s.AddNar(ctx, good, bytes.NewReader(narBytes), store.AddNarOptions{}); err != nil {
		t.Fatalf("the correct NAR after the failures: %v", err)
	}
}

func TestReAddIsNoop(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	src := t.TempDir()
	writeTree(t, filepath.Join(src, "p"), map[string]string{"a": "aaa"})
	first, err := s.AddPaths(ctx, []string{filepath.Join(src, "p")}, nixhash.Recursive, nixhash.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	p := first[0].Path
	var st1 unix.Stat_t
	unix.Lstat(s.RealPath(p), &st1)
	time.Sleep(1100 * time.Millisecond) // registration times are in seconds
	second, err := s.AddPaths(ctx, []string{filepath.Join(src, "p")}, nixhash.Recursive, nixhash.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.QueryPathInfo(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if !info.RegistrationTime.Equal(first[0].RegistrationTime.Truncate(time.Second)) || second[0].Path != p {
		t.Errorf("re-add changed the registration: %v → %v", first[0].RegistrationTime, info.RegistrationTime)
	}
	var st2 unix.Stat_t
	unix.Lstat(s.RealPath(p), &st2)
	if st1.Ino != st2.Ino {
		t.Errorf("re-add replaced the files")
	}
	// AddNar of a valid path reads exactly the NAR and leaves what follows.
	narBytes := narOf(t, s.RealPath(p))
	r := bytes.NewReader(append(slices.Clone(narBytes), "trailer"...))
	if err := s.AddNar(ctx, info, r, store.AddNarOptions{}); err != nil {
		t.Fatal(err)
	}
	if rest, _ := io.ReadAll(r); string(rest) != "trailer" {
		t.Errorf("AddNar of a valid path left %q unread, want %q", rest, "trailer")
	}
	// A fresh add also stops at the end of the NAR.
	q := infoFor(t, s.StoreDir(), "q", narBytes)
	r = bytes.NewReader(append(slices.Clone(narBytes), "trailer"...))
	if err := s.AddNar(ctx, q, r, store.AddNarOptions{}); err != nil {
		t.Fatal(err)
	}
	if rest, _ := io.ReadAll(r); string(rest) != "trailer" {
		t.Errorf("AddNar left %q unread, want %q", rest, "trailer")
	}
}

func TestLeftoverTempsRemovedOnOpen(t *testing.T) {
	s, root := newStore(t)
	tmp := filepath.Join(s.RealStoreDir(), TempDirName)
	// A crashed writer's temporary, read-only inside, and a live one (locked).
	writeTree(t, filepath.Join(tmp, "add-crashed"), map[string]string{"x/sub/f": "partial"})
	os.Chmod(filepath.Join(tmp, "add-crashed/x/sub"), 0o555)
	os.Chmod(filepath.Join(tmp, "add-crashed/x"), 0o555)
	live, err := s.newTemp()
	if err != nil {
		t.Fatal(err)
	}
	defer live.remove()
	s2 := openRoot(t, root)
	ents, _ := os.ReadDir(filepath.Join(s2.RealStoreDir(), TempDirName))
	if len(ents) != 1 || ents[0].Name() != live.name {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("temporaries after reopening: %v, want only the live %s", names, live.name)
	}
}

// TestTemporariesNamedLikeAStorePath: the temporaries directory is named
// like a store path (hash part: SHA-256("cairn-tmp") cut to 20 bytes, in
// nixbase32), and an open store holds a temporary root on it.
func TestTemporariesNamedLikeAStorePath(t *testing.T) {
	h := sha256.Sum256([]byte("cairn-tmp"))
	if want := nixbase32.EncodeToString(h[:20]) + "-cairn-tmp"; TempDirName != want {
		t.Errorf("TempDirName %s, want %s", TempDirName, want)
	}
	s, _ := newStore(t)
	p, err := s.dir.FromBase(TempDirName)
	if err != nil || !IsTemporaries(p) {
		t.Fatalf("%s: %v", TempDirName, err)
	}
	rooted := false
	files, _ := os.ReadDir(filepath.Join(s.cfg.StateDir, "temproots"))
	for _, f := range files {
		b, _ := os.ReadFile(filepath.Join(s.cfg.StateDir, "temproots", f.Name()))
		rooted = rooted || strings.Contains(string(b), p.String()+"\x00")
	}
	if !rooted {
		t.Errorf("no temporary root names %s (%d files)", p, len(files))
	}
}

// TestLegacyTempsRemovedOnOpen: a store made when the temporaries were
// .cairn-tmp loses it on the next open, with what a crashed writer left.
func TestLegacyTempsRemovedOnOpen(t *testing.T) {
	s, root := newStore(t)
	legacy := filepath.Join(s.RealStoreDir(), legacyTempDirName)
	writeTree(t, filepath.Join(legacy, "add-crashed"), map[string]string{"x/f": "partial"})
	s.Close()
	s2 := openRoot(t, root)
	if _, err := os.Lstat(filepath.Join(s2.RealStoreDir(), legacyTempDirName)); !os.IsNotExist(err) {
		t.Errorf("%s after reopening: %v", legacyTempDirName, err)
	}
}

// TestConcurrentAdds has 16 goroutines, each with its own Store (as separate
// processes would) or sharing one, add overlapping sets of paths.
func TestConcurrentAdds(t *testing.T) {
	for _, shared := range []bool{false, true} {
		t.Run(fmt.Sprintf("shared=%v", shared), func(t *testing.T) {
			s0, root := newStore(t)
			src := t.TempDir()
			const files = 24
			for i := range files {
				writeTree(t, src, map[string]string{fmt.Sprintf("f%02d", i): fmt.Sprintf("content %d\n", i)})
			}
			ctx := context.Background()
			var wg sync.WaitGroup
			results := make([][]*store.PathInfo, 16)
			errs := make([]error, 16)
			for g := range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					s := s0
					if !shared {
						s = openRoot(t, root)
					}
					var srcs []string
					for i := g % 4; i < files; i += 1 + g%3 {
						srcs = append(srcs, filepath.Join(src, fmt.Sprintf("f%02d", i)))
					}
					results[g], errs[g] = s.AddPaths(ctx, srcs, nixhash.Recursive, nixhash.SHA256)
				}()
			}
			wg.Wait()
			for g, err := range errs {
				if err != nil {
					t.Fatalf("goroutine %d: %v", g, err)
				}
			}
			all, err := s0.QueryAllValidPaths(ctx)
			if err != nil {
				t.Fatal(err)
			}
			seen := map[storepath.StorePath]bool{}
			for _, infos := range results {
				for _, info := range infos {
					seen[info.Path] = true
				}
			}
			if len(all) != len(seen) {
				t.Errorf("%d valid paths, want %d", len(all), len(seen))
			}
			for _, p := range all {
				if !seen[p] {
					t.Errorf("unexpected valid path %s", p)
				}
				if _, err := os.Stat(s0.RealPath(p)); err != nil {
					t.Errorf("valid path without files: %v", err)
				}
			}
			ents, _ := os.ReadDir(s0.RealStoreDir())
			for _, e := range ents {
				if strings.HasSuffix(e.Name(), ".lock") {
					t.Errorf("lock file left: %s", e.Name())
				}
			}
			if ents := leftoverTemps(t, s0.RealStoreDir()); len(ents) != 0 {
				t.Errorf("%d temporaries left", len(ents))
			}
		})
	}
}

func TestQueries(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	dir := s.StoreDir()
	// a → b → c, a → c, d → a; e alone.
	mk := func(name string, refs ...storepath.StorePath) *store.PathInfo {
		src := filepath.Join(t.TempDir(), name)
		os.WriteFile(src, []byte(name), 0o644)
		return infoFor(t, dir, name, narOf(t, src), refs...)
	}
	c := mk("c")
	b := mk("b", c.Path)
	a := mk("a", b.Path, c.Path)
	d := mk("d", a.Path, d0(dir))
	d.References = []storepath.StorePath{a.Path, d.Path}
	e := mk("e")
	batch := s.NewBatch()
	for _, info := range []*store.PathInfo{c, b, a, d, e} {
		src := filepath.Join(t.TempDir(), info.Path.Name())
		os.WriteFile(src, []byte(info.Path.Name()), 0o644)
		if err := batch.AddNar(ctx, info, bytes.NewReader(narOf(t, src)), store.AddNarOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := batch.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	sorted := func(ps ...storepath.StorePath) []storepath.StorePath {
		storepath.SortPaths(ps)
		return ps
	}
	cl, err := s.QueryClosure(ctx, []storepath.StorePath{a.Path}, false)
	if err != nil || !slices.Equal(cl, sorted(a.Path, b.Path, c.Path)) {
		t.Errorf("closure of a = %v, %v", cl, err)
	}
	cl, err = s.QueryClosure(ctx, []storepath.StorePath{c.Path}, true)
	if err != nil || !slices.Equal(cl, sorted(a.Path, b.Path, c.Path, d.Path)) {
		t.Errorf("reverse closure of c = %v, %v", cl, err)
	}
	if _, err := s.QueryClosure(ctx, []storepath.StorePath{a.Path, d0(dir)}, false); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("closure with an invalid root: %v, want ErrNotFound", err)
	}
	refs, err := s.QueryReferrers(ctx, c.Path)
	if err != nil || !slices.Equal(refs, sorted(a.Path, b.Path)) {
		t.Errorf("referrers of c = %v, %v", refs, err)
	}
	refs, err = s.QueryReferrers(ctx, d.Path)
	if err != nil || !slices.Equal(refs, []storepath.StorePath{d.Path}) {
		t.Errorf("referrers of d = %v, %v (self-reference)", refs, err)
	}
	got, err := s.QueryPathFromHashPart(ctx, b.Path.HashPart())
	if err != nil || got != b.Path {
		t.Errorf("path from hash part = %v, %v", got, err)
	}
	if _, err := s.QueryPathFromHashPart(ctx, d0(dir).HashPart()); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("path from unknown hash part: %v", err)
	}
	valid, err := s.QueryValidPaths(ctx, []storepath.StorePath{e.Path, d0(dir), a.Path, e.Path})
	if err != nil || !slices.Equal(valid, []storepath.StorePath{e.Path, a.Path}) {
		t.Errorf("valid paths = %v, %v", valid, err)
	}
	all, err := s.QueryAllValidPaths(ctx)
	if err != nil || !slices.Equal(all, sorted(a.Path, b.Path, c.Path, d.Path, e.Path)) {
		t.Errorf("all valid paths = %v, %v", all, err)
	}
	_, err = s.QueryPathInfo(ctx, d0(dir))
	var nv *store.NotValidError
	if !errors.As(err, &nv) || err.Error() != fmt.Sprintf("path '%s' is not valid", d0(dir)) {
		t.Errorf("QueryPathInfo of an invalid path: %v", err)
	}
	refsOf, err := s.QueryReferencesOf(ctx, []storepath.StorePath{a.Path, d0(dir), e.Path, a.Path, d.Path})
	wantRefs := map[storepath.StorePath][]storepath.StorePath{a.Path: sorted(b.Path, c.Path), e.Path: nil, d.Path: sorted(a.Path, d.Path)}
	if err == nil && len(refsOf) == len(wantRefs) {
		for p, want := range wantRefs {
			got, ok := refsOf[p]
			storepath.SortPaths(got)
			if !ok || !slices.Equal(got, want) {
				t.Errorf("QueryReferencesOf: %s → %v (%v), want %v", p, got, ok, want)
			}
		}
	} else {
		t.Errorf("QueryReferencesOf (a path twice, one invalid) = %v, %v; want %v", refsOf, err, wantRefs)
	}
	infos, err := s.QueryPathInfos(ctx, []storepath.StorePath{a.Path, c.Path})
	if err != nil || len(infos) != 2 || !slices.Equal(infos[0].References, sorted(b.Path, c.Path)) {
		t.Errorf("QueryPathInfos = %v, %v", infos, err)
	}
	order, err := store.TopoSort(all, func(p storepath.StorePath) []storepath.StorePath {
		i, _ := s.QueryPathInfo(ctx, p)
		return i.References
	})
	if err != nil {
		t.Fatal(err)
	}
	pos := map[storepath.StorePath]int{}
	for i, p := range order {
		pos[p] = i
	}
	if !(pos[d.Path] < pos[a.Path] && pos[a.Path] < pos[b.Path] && pos[b.Path] < pos[c.Path]) {
		t.Errorf("topological order %v puts a referrer after its reference", order)
	}
}

// d0 is a path that is never valid.
func d0(dir storepath.StoreDir) storepath.StorePath {
	p, _ := dir.FromBase("00000000000000000000000000000000-never")
	return p
}

// TestNixAndCairnTakeTurns: Cairn creates a store, Nix adds to it, Cairn adds
// and reads, Nix verifies.
func TestNixAndCairnTakeTurns(t *testing.T) {
	nixtest.Require(t, "nix-store")
	s, root := newStore(t)
	ctx := context.Background()
	src := t.TempDir()
	writeTree(t, src, map[string]string{"one": "1", "two": "2", "three/x": "3"})
	if _, err := s.AddPaths(ctx, []string{filepath.Join(src, "one")}, nixhash.Recursive, nixhash.SHA256); err != nil {
		t.Fatal(err)
	}
	nixPath := nixtest.Run(t, nil, "nix-store", "--store", storeURL(root), "--add", filepath.Join(src, "two"))
	np, _ := storepath.Parse(nixPath)
	if ok, err := s.IsValidPath(ctx, np); !ok || err != nil {
		t.Fatalf("a path Nix added to Cairn's store is not valid to Cairn: %v %v", ok, err)
	}
	if _, err := s.AddPaths(ctx, []string{filepath.Join(src, "three")}, nixhash.Flat, nixhash.SHA256); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("flat add of a directory: %v, want ErrInvalid", err)
	}
	if _, err := s.AddPaths(ctx, []string{filepath.Join(src, "three")}, nixhash.Recursive, nixhash.SHA1); err != nil {
		t.Fatal(err)
	}
	nixVerify(t, root)
	if got := nixtest.Run(t, nil, "nix-store", "--store", storeURL(root), "-q", "--size", nixPath); got != "120" {
		t.Errorf("nix-store -q --size of a path Nix added = %s, want 120", got)
	}
}

func TestLayout(t *testing.T) {
	_, root := newStore(t)
	for _, p := range []string{"nix/store/.links", "nix/var/nix/db/db.sqlite", "nix/var/nix/db/big-lock", "nix/var/nix/db/reserved",
		"nix/var/nix/gcroots/per-user", "nix/var/nix/profiles/per-user", "nix/var/nix/temproots", "nix/var/nix/userpool",
		"nix/var/nix/daemon-socket", "nix/var/nix/gc.lock", "nix/var/log/nix/drvs"} {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Error(err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(root, "nix/var/nix/db/schema")); err != nil || string(b) != "10" {
		t.Errorf("db/schema = %q, %v; want \"10\"", b, err)
	}
	if l, err := os.Readlink(filepath.Join(root, "nix/var/nix/gcroots/profiles")); err != nil || l != filepath.Join(root, "nix/var/nix/profiles") {
		t.Errorf("gcroots/profiles → %q, %v", l, err)
	}
	if os.Geteuid() == 0 {
		if _, err := userLookupGroup(DefaultBuildUsersGroup); err == nil {
			fi, _ := os.Stat(filepath.Join(root, "nix/store"))
			if fi.Mode()&os.ModePerm != 0o735 || fi.Mode()&os.ModeSticky == 0 {
				t.Errorf("store dir mode %v, want sticky 0735", fi.Mode())
			}
		}
	}
	// A newer schema is refused.
	os.WriteFile(filepath.Join(root, "nix/var/nix/db/schema"), []byte("11"), 0o644)
	cfg, _ := store.ParseURL("local?root="+root, func(string) string { return "" })
	if _, err := Open(context.Background(), cfg, Options{}); err == nil || !strings.Contains(err.Error(), "schema is version 11") {
		t.Errorf("opening a schema-11 store: %v", err)
	}
}

// leftoverTemps lists what the temporaries under realStoreDir hold besides
// the add temporaries of open stores with their reusable intent and lock files: the
// slots and trash a finished or failed operation should have removed.
func leftoverTemps(t testing.TB, realStoreDir string) []string {
	t.Helper()
	left, err := TempLeftovers(realStoreDir)
	if err != nil {
		t.Fatal(err)
	}
	return left
}

// TestAddPathsChunks: AddPaths registers in chunks of maxSpareLocks; a
// call spanning several, with the same content in two chunks and a path
// valid before the call, returns every info in order and leaves each path
// valid once, with its lock files gone.
func TestAddPathsChunks(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	dir := t.TempDir()
	n := 2*maxSpareLocks + 7
	srcs := make([]string, n)
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range srcs {
		srcs[i] = filepath.Join(dir, fmt.Sprintf("f%03d", i))
		content := fmt.Sprintf("file %d\n", i)
		if i == n-1 {
			// The same name and content as srcs[0], two chunks later.
			srcs[i], content = filepath.Join(dir, "sub", "f000"), "file 0\n"
		}
		if err := os.WriteFile(srcs[i], []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	srcs[n-2] = srcs[0] // the very same source, too
	pre, err := s.AddPaths(ctx, srcs[5:6], nixhash.Recursive, nixhash.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	infos, err := s.AddPaths(ctx, srcs, nixhash.Recursive, nixhash.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != n {
		t.Fatalf("%d infos for %d sources", len(infos), n)
	}
	if infos[5].Path != pre[0].Path || infos[n-2].Path != infos[0].Path || infos[n-1].Path != infos[0].Path {
		t.Errorf("infos out of order: %s %s / %s %s %s", infos[5].Path, pre[0].Path, infos[0].Path, infos[n-2].Path, infos[n-1].Path)
	}
	for i, info := range infos {
		want, err := s.QueryPathInfo(ctx, info.Path)
		if err != nil {
			t.Fatalf("path %d %s: %v", i, info.Path, err)
		}
		if want.NarHash != info.NarHash {
			t.Errorf("path %d: returned hash %v, registered %v", i, info.NarHash, want.NarHash)
		}
	}
	all, err := s.QueryAllValidPaths(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != n-2 {
		t.Errorf("%d valid paths, want %d", len(all), n-2)
	}
	locks, _ := filepath.Glob(filepath.Join(s.RealPath(infos[0].Path) + "*.lock"))
	if len(locks) != 0 {
		t.Errorf("lock files left: %v", locks)
	}
}

// TestAddPathsStopsAtBadSource: a source that cannot be added, in the second
// chunk, ends AddPaths with exactly the sources before it added and
// returned; what the workers prepared beyond it is removed, not registered.
func TestAddPathsStopsAtBadSource(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	dir := t.TempDir()
	n := 3 * maxSpareLocks
	bad := maxSpareLocks + 9
	srcs := make([]string, n)
	for i := range srcs {
		srcs[i] = filepath.Join(dir, fmt.Sprintf("f%03d", i))
		if i == bad {
			continue // missing
		}
		if err := os.WriteFile(srcs[i], []byte(fmt.Sprintf("file %d\n", i)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	infos, err := s.AddPaths(ctx, srcs, nixhash.Recursive, nixhash.SHA256)
	if err == nil || !strings.Contains(err.Error(), srcs[bad]) {
		t.Fatalf("error %v, want one naming %s", err, srcs[bad])
	}
	if len(infos) != bad {
		t.Fatalf("%d infos, want the %d before the bad source", len(infos), bad)
	}
	for i, info := range infos {
		if info.Path.Name() != filepath.Base(srcs[i]) {
			t.Errorf("info %d is %s", i, info.Path)
		}
	}
	all, err := s.QueryAllValidPaths(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != bad {
		t.Errorf("%d valid paths, want %d", len(all), bad)
	}
	if left := leftoverTemps(t, s.RealStoreDir()); len(left) != 0 {
		t.Errorf("temporaries left: %v", left)
	}
	ents, _ := os.ReadDir(s.RealStoreDir())
	var paths []string
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), ".") && e.Name() != TempDirName {
			paths = append(paths, e.Name())
		}
	}
	if len(paths) != bad {
		t.Errorf("%d entries in the store dir, want %d", len(paths), bad)
	}
}

// TestBatchRegisterBytes: a batch registered by the many-row statement keeps
// every byte of its metadata, signatures that are not UTF-8 or hold a NUL
// included, and gives each path its own row and references.
func TestBatchRegisterBytes(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	src := t.TempDir()
	b := s.NewBatch()
	var infos []*store.PathInfo
	n := registerRows + pointMax + 3 // one full statement and a shorter one
	for i := range n {
		p := filepath.Join(src, fmt.Sprintf("p%d", i))
		writeTree(t, p, map[string]string{"f": fmt.Sprintf("file %d", i)})
		narBytes := narOf(t, p)
		var refs []storepath.StorePath
		if i > 0 {
			refs = append(refs, infos[i-1].Path)
		}
		info := infoFor(t, s.StoreDir(), fmt.Sprintf("p%d", i), narBytes, refs...)
		info.Signatures = []string{fmt.Sprintf("key-%d:\xff\xfe\x00sig", i)}
		info.Ultimate = i%2 == 0
		if err := b.AddNar(ctx, info, bytes.NewReader(narBytes), store.AddNarOptions{}); err != nil {
			t.Fatal(err)
		}
		infos = append(infos, info)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for i, want := range infos {
		got, err := s.QueryPathInfo(ctx, want.Path)
		if err != nil {
			t.Fatalf("path %d: %v", i, err)
		}
		if !slices.Equal(got.Signatures, want.Signatures) || got.Ultimate != want.Ultimate || got.NarHash != want.NarHash ||
			!slices.Equal(got.References, want.References) {
			t.Errorf("path %d: registered %+v, want %+v", i, got, want)
		}
	}
}
