package storepath

import (
	"os"
	"path/filepath"
	"testing"

	"cairn/internal/nixhash"
	"cairn/internal/testutil/nixtest"
)

// narHashOf asks the reference nix-hash for the NAR hash of path, so these tests check
// the path computation alone.
func narHashOf(t *testing.T, algo nixhash.Algorithm, path string) nixhash.Hash {
	t.Helper()
	out := nixtest.Run(t, nil, "nix-hash", "--type", algo.String(), path)
	h, err := nixhash.ParseAny(out, algo)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func mustParse(t *testing.T, s string) StorePath {
	t.Helper()
	p, err := Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMakeAgainstNixStoreAdd(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix-hash")
	store := nixtest.NewStore(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "hello.txt")
	if err := os.WriteFile(file, []byte("hello, world\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(dir, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "sub", "x"), []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub/x", filepath.Join(tree, "link")); err != nil {
		t.Fatal(err)
	}
	d := DefaultStoreDir

	for _, src := range []string{file, tree} {
		t.Run("add "+filepath.Base(src), func(t *testing.T) {
			want := store.Run(t, nil, "nix-store", "--add", src)
			got, err := d.MakeSourcePath(filepath.Base(src), narHashOf(t, nixhash.SHA256, src), nil, false)
			if err != nil || got.String() != want {
				t.Errorf("MakeSourcePath = %v, %v; nix-store --add = %s", got, err, want)
			}
		})
	}

	data, _ := os.ReadFile(file)
	for _, algo := range []nixhash.Algorithm{nixhash.MD5, nixhash.SHA1, nixhash.SHA256, nixhash.SHA512} {
		t.Run("add-fixed flat "+algo.String(), func(t *testing.T) {
			want := store.Run(t, nil, "nix-store", "--add-fixed", algo.String(), file)
			ca := nixhash.ContentAddress{Method: nixhash.Flat, Hash: nixhash.Sum(algo, data)}
			got, err := d.MakeFixedOutputPath("hello.txt", ca, nil, false)
			if err != nil || got.String() != want {
				t.Errorf("MakeFixedOutputPath(%v) = %v, %v; nix-store --add-fixed = %s", ca, got, err, want)
			}
		})
		t.Run("add-fixed recursive "+algo.String(), func(t *testing.T) {
			want := store.Run(t, nil, "nix-store", "--add-fixed", "--recursive", algo.String(), tree)
			ca := nixhash.ContentAddress{Method: nixhash.Recursive, Hash: narHashOf(t, algo, tree)}
			got, err := d.MakeFixedOutputPath("tree", ca, nil, false)
			if err != nil || got.String() != want {
				t.Errorf("MakeFixedOutputPath(%v) = %v, %v; nix-store --add-fixed --recursive = %s", ca, got, err, want)
			}
		})
	}
}

func TestMakeTextPathAgainstToFile(t *testing.T) {
	nixtest.Require(t, "nix-instantiate")
	store := nixtest.NewStore(t)
	d := DefaultStoreDir
	inner := store.Run(t, nil, "nix-instantiate", "--eval", "--json", "-E", `builtins.toFile "inner" "hi\n"`)
	innerPath := mustParse(t, inner[1:len(inner)-1])
	gotInner, err := d.MakeTextPath("inner", nixhash.Sum(nixhash.SHA256, []byte("hi\n")), nil)
	if err != nil || gotInner != innerPath {
		t.Fatalf("MakeTextPath(inner) = %v, %v; toFile = %v", gotInner, err, innerPath)
	}
	outer := store.Run(t, nil, "nix-instantiate", "--eval", "--json", "-E",
		`let i = builtins.toFile "inner" "hi\n"; in builtins.toFile "outer" "see ${i}"`)
	outerPath := mustParse(t, outer[1:len(outer)-1])
	got, err := d.MakeTextPath("outer", nixhash.Sum(nixhash.SHA256, []byte("see "+innerPath.String())), []StorePath{innerPath})
	if err != nil || got != outerPath {
		t.Errorf("MakeTextPath(outer) = %v, %v; toFile = %v", got, err, outerPath)
	}
}

func TestMakeNonDefaultStoreDir(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix-hash")
	root := t.TempDir()
	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, []byte("other store"), 0o644); err != nil {
		t.Fatal(err)
	}
	storeDir := filepath.Join(root, "store")
	want := nixtest.Run(t, nil, "nix-store", "--store", "local?store="+storeDir+"&state="+filepath.Join(root, "var")+"&log="+filepath.Join(root, "log"), "--add", file)
	got, err := StoreDir(storeDir).MakeSourcePath("f", narHashOf(t, nixhash.SHA256, file), nil, false)
	if err != nil || got.String() != want {
		t.Errorf("MakeSourcePath in %s = %v, %v; nix-store --add = %s", storeDir, got, err, want)
	}
}

func TestMakeOutputPathName(t *testing.T) {
	h := nixhash.Sum(nixhash.SHA256, []byte("drv"))
	out, err := DefaultStoreDir.MakeOutputPath("out", h, "foo")
	if err != nil || out.Name() != "foo" {
		t.Errorf("out path = %v, %v", out, err)
	}
	dev, err := DefaultStoreDir.MakeOutputPath("dev", h, "foo")
	if err != nil || dev.Name() != "foo-dev" {
		t.Errorf("dev path = %v, %v", dev, err)
	}
	if _, err := DefaultStoreDir.MakeFixedOutputPath("x", nixhash.ContentAddress{Method: nixhash.Flat, Hash: h}, []StorePath{out}, false); err == nil {
		t.Error("a flat fixed-output path with references was accepted")
	}
}
