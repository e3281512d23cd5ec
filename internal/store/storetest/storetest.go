// Package storetest is a conformance suite for implementations of the store
// interfaces: one table of tests that any store runs, so a local store, a
// remote store on nix-daemon and a remote store on `cairn daemon` are held to
// the same contract.
//
// Vocabulary: a test is a named function of a Store; it asks the store for the
// capability interfaces it needs with type assertions and skips when one is
// missing. All tests of one Run share one store, so each adds content of its
// own (salted with the test's name) and asserts only about that content.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"

	"cairn/internal/derivation"
	"cairn/internal/nar"
	"cairn/internal/nixhash"
	"cairn/internal/store"
	"cairn/internal/storepath"
)

// Test is one conformance test.
type Test struct {
	Name string
	Run  func(t *testing.T, s store.Store)
}

// Tests is the conformance table.
var Tests = []Test{
	{"AddCARecursive", testAddCARecursive},
	{"AddCAFlat", testAddCAFlat},
	{"AddText", testAddText},
	{"AddNar", testAddNar},
	{"AddNarHashMismatch", testAddNarHashMismatch},
	{"AddNarAlreadyValid", testAddNarAlreadyValid},
	{"InvalidPath", testInvalidPath},
	{"Derivation", testDerivation},
	{"AllPaths", testAllPaths},
	{"LargeNar", testLargeNar},
	{"Closure", testClosure},
	{"Concurrent", testConcurrent},
}

// Run runs every test of the table against the store open returns (once, for
// all tests; the suite closes it at the end).
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	t.Cleanup(func() { s.Close() })
	for _, tt := range Tests {
		t.Run(tt.Name, func(t *testing.T) { tt.Run(t, s) })
	}
}

// need returns s as an I or skips the test.
func need[I any](t *testing.T, s store.Store) I {
	t.Helper()
	i, ok := s.(I)
	if !ok {
		var zero *I
		t.Skipf("store %T lacks %T", s, zero)
	}
	return i
}

// File is one regular file of a NAR made by MakeNAR.
type File struct {
	Path       string // "" for a single-file NAR, else a/b relative to the root directory
	Contents   string
	Executable bool
}

// MakeNAR serialises files as a NAR: a single regular file when there is one
// with Path "", else a directory tree (parent directories are made as needed;
// files must be sorted by Path).
func MakeNAR(t testing.TB, files ...File) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := nar.NewWriter(&buf)
	if len(files) == 1 && files[0].Path == "" {
		f := files[0]
		must(t, w.WriteHeader(&nar.Header{Type: nar.TypeRegular, Size: int64(len(f.Contents)), Executable: f.Executable}))
		_, err := io.WriteString(w, f.Contents)
		must(t, err)
	} else {
		must(t, w.WriteHeader(&nar.Header{Type: nar.TypeDirectory}))
		dirs := map[string]bool{"": true}
		for _, f := range files {
			parts := strings.Split(f.Path, "/")
			for i := 1; i < len(parts); i++ {
				d := strings.Join(parts[:i], "/")
				if !dirs[d] {
					dirs[d] = true
					must(t, w.WriteHeader(&nar.Header{Path: d, Type: nar.TypeDirectory}))
				}
			}
			must(t, w.WriteHeader(&nar.Header{Path: f.Path, Type: nar.TypeRegular, Size: int64(len(f.Contents)), Executable: f.Executable}))
			_, err := io.WriteString(w, f.Contents)
			must(t, err)
		}
	}
	must(t, w.Close())
	return buf.Bytes()
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func narHash(b []byte) nixhash.Hash { return nixhash.Sum(nixhash.SHA256, b) }

// checkInfo compares the parts of an info a store must keep.
func checkInfo(t *testing.T, what string, got, want *store.PathInfo) {
	t.Helper()
	if got.Path != want.Path {
		t.Errorf("%s: path = %s, want %s", what, got.Path, want.Path)
	}
	if got.NarHash != want.NarHash {
		t.Errorf("%s: narHash = %s, want %s", what, got.NarHash, want.NarHash)
	}
	if got.NarSize != want.NarSize {
		t.Errorf("%s: narSize = %d, want %d", what, got.NarSize, want.NarSize)
	}
	if !slices.Equal(got.References, want.References) {
		t.Errorf("%s: references = %v, want %v", what, got.References, want.References)
	}
	if got.CA != want.CA {
		t.Errorf("%s: ca = %q, want %q", what, got.CA, want.CA)
	}
	if got.Deriver != want.Deriver {
		t.Errorf("%s: deriver = %s, want %s", what, got.Deriver, want.Deriver)
	}
}

// checkValid checks that info.Path is valid with info's metadata and that its
// NAR reads back as narBytes.
func checkValid(t *testing.T, s store.Store, info *store.PathInfo, narBytes []byte) {
	t.Helper()
	ctx := context.Background()
	if q, ok := s.(store.PathInfoQuerier); ok {
		got, err := q.QueryPathInfo(ctx, info.Path)
		if err != nil {
			t.Fatalf("QueryPathInfo(%s): %v", info.Path, err)
		}
		checkInfo(t, "QueryPathInfo", got, info)
		if got.RegistrationTime.IsZero() {
			t.Errorf("QueryPathInfo(%s): no registration time", info.Path)
		}
	}
	if v, ok := s.(store.ValidityQuerier); ok {
		if ok, err := v.IsValidPath(ctx, info.Path); err != nil || !ok {
			t.Errorf("IsValidPath(%s) = %v, %v; want true", info.Path, ok, err)
		}
	}
	if h, ok := s.(store.HashPartQuerier); ok {
		if p, err := h.QueryPathFromHashPart(ctx, info.Path.HashPart()); err != nil || p != info.Path {
			t.Errorf("QueryPathFromHashPart(%s) = %s, %v", info.Path.HashPart(), p, err)
		}
	}
	if n, ok := s.(store.NarReader); ok && narBytes != nil {
		var buf bytes.Buffer
		if err := n.NarFromPath(ctx, info.Path, &buf); err != nil {
			t.Fatalf("NarFromPath(%s): %v", info.Path, err)
		}
		if !bytes.Equal(buf.Bytes(), narBytes) {
			t.Errorf("NarFromPath(%s): %d bytes differ from the %d added", info.Path, buf.Len(), len(narBytes))
		}
	}
}

func testAddCARecursive(t *testing.T, s store.Store) {
	a := need[store.CAAdder](t, s)
	dir := s.StoreDir()
	narBytes := MakeNAR(t,
		File{Path: "bin/hello", Contents: "#!/bin/sh\necho " + t.Name() + "\n", Executable: true},
		File{Path: "share/doc", Contents: "docs"})
	for _, algo := range []nixhash.Algorithm{nixhash.SHA256, nixhash.SHA1} {
		t.Run(algo.String(), func(t *testing.T) {
			ca := nixhash.ContentAddress{Method: nixhash.Recursive, Hash: nixhash.Sum(algo, narBytes)}
			want, err := dir.MakeFixedOutputPath("tree", ca, nil, false)
			must(t, err)
			info, err := a.AddCA(context.Background(), "tree", nixhash.Recursive, algo, nil, bytes.NewReader(narBytes))
			if err != nil {
				t.Fatalf("AddCA: %v", err)
			}
			wantInfo := &store.PathInfo{Path: want, NarHash: narHash(narBytes), NarSize: uint64(len(narBytes)), CA: ca}
			checkInfo(t, "AddCA", info, wantInfo)
			checkValid(t, s, wantInfo, narBytes)
			// Adding it again changes nothing.
			again, err := a.AddCA(context.Background(), "tree", nixhash.Recursive, algo, nil, bytes.NewReader(narBytes))
			if err != nil {
				t.Fatalf("AddCA again: %v", err)
			}
			checkInfo(t, "AddCA again", again, wantInfo)
		})
	}
}

func testAddCAFlat(t *testing.T, s store.Store) {
	a := need[store.CAAdder](t, s)
	dir := s.StoreDir()
	contents := "flat file of " + t.Name() + "\n"
	for _, algo := range []nixhash.Algorithm{nixhash.SHA256, nixhash.SHA1, nixhash.MD5, nixhash.SHA512} {
		t.Run(algo.String(), func(t *testing.T) {
			ca := nixhash.ContentAddress{Method: nixhash.Flat, Hash: nixhash.Sum(algo, []byte(contents))}
			want, err := dir.MakeFixedOutputPath("flat.txt", ca, nil, false)
			must(t, err)
			info, err := a.AddCA(context.Background(), "flat.txt", nixhash.Flat, algo, nil, strings.NewReader(contents))
			if err != nil {
				t.Fatalf("AddCA: %v", err)
			}
			narBytes := MakeNAR(t, File{Contents: contents})
			wantInfo := &store.PathInfo{Path: want, NarHash: narHash(narBytes), NarSize: uint64(len(narBytes)), CA: ca}
			checkInfo(t, "AddCA", info, wantInfo)
			checkValid(t, s, wantInfo, narBytes)
		})
	}
}

// addText adds a text file through CAAdder and checks its path.
func addText(t *testing.T, s store.Store, name, text string, refs []storepath.StorePath) *store.PathInfo {
	t.Helper()
	a := need[store.CAAdder](t, s)
	h := nixhash.Sum(nixhash.SHA256, []byte(text))
	want, err := s.StoreDir().MakeTextPath(name, h, refs)
	must(t, err)
	info, err := a.AddCA(context.Background(), name, nixhash.Text, nixhash.SHA256, refs, strings.NewReader(text))
	if err != nil {
		t.Fatalf("AddCA text %s: %v", name, err)
	}
	sorted := slices.Clone(refs)
	storepath.SortPaths(sorted)
	narBytes := MakeNAR(t, File{Contents: text})
	wantInfo := &store.PathInfo{Path: want, NarHash: narHash(narBytes), NarSize: uint64(len(narBytes)),
		References: sorted, CA: nixhash.ContentAddress{Method: nixhash.Text, Hash: h}}
	checkInfo(t, "AddCA text", info, wantInfo)
	checkValid(t, s, wantInfo, narBytes)
	return info
}

func testAddText(t *testing.T, s store.Store) {
	ctx := context.Background()
	base := addText(t, s, "base.txt", "base of "+t.Name(), nil)
	top := addText(t, s, "top.txt", "top of "+t.Name()+" refers to "+base.Path.String(), []storepath.StorePath{base.Path})
	if r, ok := s.(store.ReferrerQuerier); ok {
		got, err := r.QueryReferrers(ctx, base.Path)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, []storepath.StorePath{top.Path}) {
			t.Errorf("QueryReferrers(base) = %v, want [%s]", got, top.Path)
		}
	}
	if v, ok := s.(store.ValidityQuerier); ok {
		bogus := fakePath(t, s, "bogus")
		got, err := v.QueryValidPaths(ctx, []storepath.StorePath{top.Path, bogus, base.Path, top.Path})
		if err != nil {
			t.Fatal(err)
		}
		if want := []storepath.StorePath{top.Path, base.Path}; !slices.Equal(got, want) {
			t.Errorf("QueryValidPaths = %v, want %v", got, want)
		}
	}
}

// fakePath is a well-formed path nobody added.
func fakePath(t testing.TB, s store.Store, name string) storepath.StorePath {
	p, err := s.StoreDir().MakeStorePath("fake", nixhash.Sum(nixhash.SHA256, []byte(t.Name()+name)), name)
	must(t, err)
	return p
}

// inputAddressed returns an info for narBytes at a made-up input-addressed path.
func inputAddressed(t testing.TB, s store.Store, name string, narBytes []byte, refs ...storepath.StorePath) *store.PathInfo {
	return &store.PathInfo{Path: fakePath(t, s, name), NarHash: narHash(narBytes), NarSize: uint64(len(narBytes)), References: refs}
}

func testAddNar(t *testing.T, s store.Store) {
	a := need[store.NarAdder](t, s)
	ctx := context.Background()
	dep := addText(t, s, "dep", "dependency of "+t.Name(), nil)
	narBytes := MakeNAR(t, File{Path: "lib/x", Contents: "uses " + dep.Path.String()}, File{Path: "x", Contents: "x", Executable: true})
	info := inputAddressed(t, s, "pkg", narBytes, dep.Path)
	info.Deriver = fakePath(t, s, "pkg.drv")
	// The NAR is followed by more data, which AddNar must leave unread.
	r := bytes.NewReader(append(slices.Clone(narBytes), "trailing"...))
	if err := a.AddNar(ctx, info, r, store.AddNarOptions{}); err != nil {
		t.Fatalf("AddNar: %v", err)
	}
	if r.Len() != len("trailing") {
		t.Errorf("AddNar left %d bytes unread, want %d", r.Len(), len("trailing"))
	}
	checkValid(t, s, info, narBytes)
}

func testAddNarHashMismatch(t *testing.T, s store.Store) {
	a := need[store.NarAdder](t, s)
	ctx := context.Background()
	narBytes := MakeNAR(t, File{Contents: "mismatch " + t.Name()})
	info := inputAddressed(t, s, "mismatch", narBytes)
	info.NarHash = nixhash.Sum(nixhash.SHA256, []byte("something else"))
	err := a.AddNar(ctx, info, bytes.NewReader(narBytes), store.AddNarOptions{})
	if !errors.Is(err, store.ErrHashMismatch) {
		t.Errorf("AddNar with a wrong hash: error = %v, want ErrHashMismatch", err)
	}
	if v, ok := s.(store.ValidityQuerier); ok {
		if ok, err := v.IsValidPath(ctx, info.Path); err != nil || ok {
			t.Errorf("IsValidPath after a failed add = %v, %v; want false", ok, err)
		}
	}
	// The store carries on.
	good := inputAddressed(t, s, "after-mismatch", narBytes)
	if err := a.AddNar(ctx, good, bytes.NewReader(narBytes), store.AddNarOptions{}); err != nil {
		t.Fatalf("AddNar after a failed one: %v", err)
	}
	checkValid(t, s, good, narBytes)
}

func testAddNarAlreadyValid(t *testing.T, s store.Store) {
	a := need[store.NarAdder](t, s)
	ctx := context.Background()
	narBytes := MakeNAR(t, File{Contents: "twice " + t.Name()})
	info := inputAddressed(t, s, "twice", narBytes)
	for i := range 2 {
		r := bytes.NewReader(narBytes)
		if err := a.AddNar(ctx, info, r, store.AddNarOptions{}); err != nil {
			t.Fatalf("AddNar #%d: %v", i, err)
		}
		if r.Len() != 0 {
			t.Errorf("AddNar #%d left %d bytes of the NAR unread", i, r.Len())
		}
	}
	checkValid(t, s, info, narBytes)
}

func testInvalidPath(t *testing.T, s store.Store) {
	ctx := context.Background()
	p := fakePath(t, s, "missing")
	if q, ok := s.(store.PathInfoQuerier); ok {
		_, err := q.QueryPathInfo(ctx, p)
		if !errors.Is(err, store.ErrNotFound) {
			t.Errorf("QueryPathInfo(invalid) error = %v, want ErrNotFound", err)
		}
		if err != nil && !strings.Contains(err.Error(), fmt.Sprintf("path '%s' is not valid", p)) {
			t.Errorf("QueryPathInfo(invalid) error = %q, want Nix's message", err)
		}
	}
	if n, ok := s.(store.NarReader); ok {
		var buf bytes.Buffer
		err := n.NarFromPath(ctx, p, &buf)
		if !errors.Is(err, store.ErrNotFound) {
			t.Errorf("NarFromPath(invalid) error = %v, want ErrNotFound", err)
		}
		if err != nil && !strings.Contains(err.Error(), p.String()[len(s.StoreDir())+1:]) {
			t.Errorf("NarFromPath(invalid) error = %q, want one naming the path", err)
		}
		if buf.Len() != 0 {
			t.Errorf("NarFromPath(invalid) wrote %d bytes", buf.Len())
		}
	}
	if v, ok := s.(store.ValidityQuerier); ok {
		if ok, err := v.IsValidPath(ctx, p); err != nil || ok {
			t.Errorf("IsValidPath(invalid) = %v, %v", ok, err)
		}
	}
	if r, ok := s.(store.ReferrerQuerier); ok {
		if got, err := r.QueryReferrers(ctx, p); err != nil || len(got) != 0 {
			t.Errorf("QueryReferrers(invalid) = %v, %v", got, err)
		}
	}
	if h, ok := s.(store.HashPartQuerier); ok {
		if _, err := h.QueryPathFromHashPart(ctx, p.HashPart()); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("QueryPathFromHashPart(invalid) error = %v, want ErrNotFound", err)
		}
	}
	if d, ok := s.(store.DerivationQuerier); ok {
		if got, err := d.QueryValidDerivers(ctx, p); err != nil || len(got) != 0 {
			t.Errorf("QueryValidDerivers(invalid) = %v, %v", got, err)
		}
	}
}

func testDerivation(t *testing.T, s store.Store) {
	d := need[store.DerivationQuerier](t, s)
	ctx := context.Background()
	dir := s.StoreDir()
	src := addText(t, s, "builder.sh", "echo "+t.Name(), nil)
	drv := &derivation.Derivation{
		Name:      "conformance",
		Outputs:   map[string]derivation.Output{"out": derivation.DeferredOutput(), "dev": derivation.DeferredOutput()},
		InputSrcs: []storepath.StorePath{src.Path},
		Platform:  "x86_64-linux",
		Builder:   "/bin/sh",
		Args:      []string{src.Path.String()},
		Env:       map[string]string{"name": "conformance", "builder": "/bin/sh", "system": "x86_64-linux", "out": "", "dev": ""},
	}
	must(t, drv.FillOutputs(dir, nil, nil))
	drvInfo := addText(t, s, "conformance.drv", string(drv.Bytes()), []storepath.StorePath{src.Path})
	wantPath, err := drv.StorePath(dir)
	must(t, err)
	if drvInfo.Path != wantPath {
		t.Fatalf("drv path = %s, want %s", drvInfo.Path, wantPath)
	}
	outs, err := d.QueryDerivationOutputs(ctx, drvInfo.Path)
	if err != nil {
		t.Fatalf("QueryDerivationOutputs: %v", err)
	}
	for _, name := range []string{"out", "dev"} {
		if outs[name] != drv.Outputs[name].Path {
			t.Errorf("QueryDerivationOutputs[%s] = %s, want %s", name, outs[name], drv.Outputs[name].Path)
		}
	}
	if len(outs) != 2 {
		t.Errorf("QueryDerivationOutputs = %v, want 2 outputs", outs)
	}
	// An output's derivers count once the output is valid.
	if a, ok := s.(store.NarAdder); ok {
		narBytes := MakeNAR(t, File{Contents: "output of " + t.Name()})
		out := &store.PathInfo{Path: drv.Outputs["out"].Path, Deriver: drvInfo.Path, NarHash: narHash(narBytes), NarSize: uint64(len(narBytes))}
		if err := a.AddNar(ctx, out, bytes.NewReader(narBytes), store.AddNarOptions{}); err != nil {
			t.Fatalf("AddNar output: %v", err)
		}
		ds, err := d.QueryValidDerivers(ctx, out.Path)
		if err != nil || !slices.Equal(ds, []storepath.StorePath{drvInfo.Path}) {
			t.Errorf("QueryValidDerivers(out) = %v, %v; want [%s]", ds, err, drvInfo.Path)
		}
		checkValid(t, s, out, narBytes)
	}
	if _, err := d.QueryDerivationOutputs(ctx, fakePath(t, s, "nothing.drv")); err == nil {
		t.Errorf("QueryDerivationOutputs(invalid drv) succeeded")
	}
}

func testAllPaths(t *testing.T, s store.Store) {
	all := need[store.AllPathsQuerier](t, s)
	a := addText(t, s, "all-a", "a of "+t.Name(), nil)
	b := addText(t, s, "all-b", "b of "+t.Name(), nil)
	got, err := all.QueryAllValidPaths(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.IsSortedFunc(got, storepath.Compare) {
		t.Errorf("QueryAllValidPaths is not sorted")
	}
	for _, p := range []storepath.StorePath{a.Path, b.Path} {
		if !slices.Contains(got, p) {
			t.Errorf("QueryAllValidPaths lacks %s", p)
		}
	}
}

func testLargeNar(t *testing.T, s store.Store) {
	a := need[store.NarAdder](t, s)
	size := 12<<20 + 12345
	if testing.Short() {
		size = 1<<20 + 7
	}
	contents := make([]byte, size)
	for i := range contents {
		contents[i] = byte(i*7 + i>>13)
	}
	narBytes := MakeNAR(t, File{Contents: t.Name() + string(contents)})
	info := inputAddressed(t, s, "large", narBytes)
	if err := a.AddNar(context.Background(), info, bytes.NewReader(narBytes), store.AddNarOptions{}); err != nil {
		t.Fatalf("AddNar: %v", err)
	}
	checkValid(t, s, info, narBytes)
}

func testClosure(t *testing.T, s store.Store) {
	c := need[store.ClosureQuerier](t, s)
	ctx := context.Background()
	a := addText(t, s, "closure-a", "a "+t.Name(), nil)
	b := addText(t, s, "closure-b", "b "+t.Name(), []storepath.StorePath{a.Path})
	top := addText(t, s, "closure-c", "c "+t.Name(), []storepath.StorePath{a.Path, b.Path})
	got, err := c.QueryClosure(ctx, []storepath.StorePath{top.Path}, false)
	if err != nil {
		t.Fatal(err)
	}
	want := []storepath.StorePath{a.Path, b.Path, top.Path}
	storepath.SortPaths(want)
	if !slices.Equal(got, want) {
		t.Errorf("QueryClosure(c) = %v, want %v", got, want)
	}
	got, err = c.QueryClosure(ctx, []storepath.StorePath{a.Path}, true)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("QueryClosure(a, reverse) = %v, want %v", got, want)
	}
	if _, err := c.QueryClosure(ctx, []storepath.StorePath{fakePath(t, s, "none")}, false); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("QueryClosure(invalid) error = %v, want ErrNotFound", err)
	}
}

func testConcurrent(t *testing.T, s store.Store) {
	a := need[store.NarAdder](t, s)
	q := need[store.PathInfoQuerier](t, s)
	ctx := context.Background()
	const workers, each = 16, 8
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				narBytes := MakeNAR(t, File{Contents: fmt.Sprintf("%s worker %d item %d", t.Name(), w, i)})
				info := inputAddressed(t, s, fmt.Sprintf("c-%d-%d", w, i), narBytes)
				if err := a.AddNar(ctx, info, bytes.NewReader(narBytes), store.AddNarOptions{}); err != nil {
					errs <- err
					continue
				}
				got, err := q.QueryPathInfo(ctx, info.Path)
				if err != nil {
					errs <- err
				} else if got.NarHash != info.NarHash {
					errs <- fmt.Errorf("%s: narHash %s, want %s", info.Path, got.NarHash, info.NarHash)
				}
				var buf bytes.Buffer
				if n, ok := s.(store.NarReader); ok {
					if err := n.NarFromPath(ctx, info.Path, &buf); err != nil {
						errs <- err
					} else if !bytes.Equal(buf.Bytes(), narBytes) {
						errs <- fmt.Errorf("%s: NAR differs", info.Path)
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
