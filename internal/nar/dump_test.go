package nar

import (
	"bytes"
	"crypto/sha256"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
)

// The main differential: Cairn's dump of the Go source tree is nix-store --dump's.
// The same stream read by the Reader and re-encoded by the Writer is unchanged.
func TestDumpGoTreeMatchesNix(t *testing.T) {
	if testing.Short() {
		t.Skip("large tree")
	}
	src := filepath.Join(runtime.GOROOT(), "src")
	cmd := nixCmd(t, "nix-store", "--dump", src)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	nixSum := sha256.New()
	rewritten := sha256.New()
	// Parse Nix's stream while hashing it, re-encoding into a second hash.
	r := NewReader(io.TeeReader(out, nixSum))
	w := NewWriter(rewritten)
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := w.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(w, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if n, _ := io.Copy(nixSum, out); n != 0 {
		t.Errorf("nix-store --dump wrote %d bytes after the archive", n)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	ours := sha256.New()
	if err := Dump(ours, src, DumpOptions{}); err != nil {
		t.Fatal(err)
	}
	want := nixSum.Sum(nil)
	if got := ours.Sum(nil); !bytes.Equal(got, want) {
		t.Errorf("Dump(%s) differs from nix-store --dump: sha256 %x, want %x", src, got, want)
	}
	if got := rewritten.Sum(nil); !bytes.Equal(got, want) {
		t.Errorf("Reader→Writer changed nix-store --dump's stream: sha256 %x, want %x", got, want)
	}
	t.Logf("%s: %d bytes", src, r.Offset())
}

func TestDumpMatchesNix(t *testing.T) {
	root := t.TempDir()
	tree := filepath.Join(root, "tree")
	makeTree(t, tree, true, true)
	for _, p := range []string{
		"tree",
		"tree/hello.txt",
		"tree/bin/tool",
		"tree/bin/group-exec-only",
		"tree/empty",
		"tree/link",
		"tree/dangling",
		"tree/dir-link", // the symlink itself, not the directory
		"tree/empty-dir",
		"tree/names",
	} {
		t.Run(p, func(t *testing.T) {
			full := filepath.Join(root, p)
			got, want := dump(t, full, DumpOptions{}), nixDump(t, full)
			if !bytes.Equal(got, want) {
				t.Fatalf("Dump differs from nix-store --dump %s", firstDiff(got, want))
			}
			rewritten, n, err := readAll(want)
			if err != nil {
				t.Fatalf("reading nix-store --dump's output: %v", err)
			}
			if n != int64(len(want)) || !bytes.Equal(rewritten, want) {
				t.Fatalf("re-encoding differs %s", firstDiff(rewritten, want))
			}
		})
	}
}

func TestDumpUnsupported(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Skip(err)
	}
	for _, p := range []string{dir, fifo, filepath.Join(dir, "missing")} {
		if err := Dump(io.Discard, p, DumpOptions{}); err == nil {
			t.Errorf("Dump(%s) succeeded", p)
		}
	}
}

func TestDumpCaseHack(t *testing.T) {
	tmp := t.TempDir()
	tree := filepath.Join(tmp, "t")
	for _, n := range []string{"FOO", "Foo~nix~case~hack~1", "foo~nix~case~hack~2", "bar", "sub/x~nix~case~hack~7"} {
		p := filepath.Join(tree, n)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got := dump(t, tree, DumpOptions{CaseHack: true})
	want := writeNAR(t,
		dir(""),
		file("FOO", "FOO"),
		file("Foo", "Foo~nix~case~hack~1"),
		file("bar", "bar"),
		file("foo", "foo~nix~case~hack~2"),
		dir("sub"),
		file("sub/x", "sub/x~nix~case~hack~7"),
	)
	if !bytes.Equal(got, want) {
		t.Fatalf("case-hack dump %s", firstDiff(got, want))
	}
	if _, err := exec.LookPath("nix-store"); err == nil {
		if nix := nixDump(t, tree, "--option", "use-case-hack", "true"); !bytes.Equal(got, nix) {
			t.Fatalf("differs from nix-store --dump with use-case-hack %s", firstDiff(got, nix))
		}
	}
	// Without the option the names are kept.
	if plain := dump(t, tree, DumpOptions{}); !bytes.Contains(plain, []byte("Foo~nix~case~hack~1")) {
		t.Error("Dump without CaseHack changed names")
	}
	// A collision once suffixes are gone is an error.
	if err := os.WriteFile(filepath.Join(tree, "bar~nix~case~hack~1"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Dump(io.Discard, tree, DumpOptions{CaseHack: true}); err == nil || !strings.Contains(err.Error(), "collision") {
		t.Fatalf("collision: %v", err)
	}
}

// treeModes maps each path below root to its type and permission bits.
func treeModes(t *testing.T, root string) map[string]fs.FileMode {
	t.Helper()
	m := map[string]fs.FileMode{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		m[rel] = info.Mode()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Dump into a file or a pipe takes the kernel's copy paths (copy_file_range,
// splice); the bytes must not change.
func TestDumpToFileAndPipe(t *testing.T) {
	tmp := t.TempDir()
	tree := filepath.Join(tmp, "tree")
	makeTree(t, tree, false, true)
	want := dump(t, tree, DumpOptions{})

	f, err := os.Create(filepath.Join(tmp, "out.nar"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := Dump(f, tree, DumpOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(f.Name()); !bytes.Equal(got, want) {
		t.Fatalf("dump into a file differs %s", firstDiff(got, want))
	}

	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- Dump(pw, tree, DumpOptions{}); pw.Close() }()
	got, err := io.ReadAll(pr)
	if err != nil || <-done != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("dump into a pipe differs %s", firstDiff(got, want))
	}
}
