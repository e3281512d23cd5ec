package nar

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
)

// A NAR made by nix-store --dump, restored by Cairn, dumps (by Nix) to the same
// bytes, and the files have the modes nix-store --restore gives them.
func TestRestoreNixDump(t *testing.T) {
	root := t.TempDir()
	makeTree(t, filepath.Join(root, "tree"), true, true)
	nar := nixDump(t, filepath.Join(root, "tree"))

	ours := filepath.Join(root, "ours")
	if err := Restore(bytes.NewReader(nar), ours, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := nixDump(t, ours); !bytes.Equal(got, nar) {
		t.Fatalf("nix-store --dump of Cairn's restore differs %s", firstDiff(got, nar))
	}
	theirs := filepath.Join(root, "theirs")
	nixRestore(t, nar, theirs)
	om, tm := treeModes(t, ours), treeModes(t, theirs)
	for p, m := range tm {
		if om[p] != m {
			t.Errorf("%q: mode %v, nix-store --restore gives %v", p, om[p], m)
		}
	}
	if len(om) != len(tm) {
		t.Errorf("%d paths restored, Nix restores %d", len(om), len(tm))
	}
}

// nix-store --restore of Cairn's dump gives a tree Cairn dumps identically.
func TestNixRestoresOurDump(t *testing.T) {
	root := t.TempDir()
	makeTree(t, filepath.Join(root, "tree"), true, true)
	nar := dump(t, filepath.Join(root, "tree"), DumpOptions{})
	nixRestore(t, nar, filepath.Join(root, "restored"))
	if got := dump(t, filepath.Join(root, "restored"), DumpOptions{}); !bytes.Equal(got, nar) {
		t.Fatalf("dump after nix-store --restore differs %s", firstDiff(got, nar))
	}
}

func TestRestoreRoots(t *testing.T) {
	for _, tc := range []struct {
		name string
		nar  []byte
		mode fs.FileMode // type and the bits the umask cannot clear
	}{
		{"file", writeNAR(t, file("", "data")), 0},
		{"executable", writeNAR(t, exe("", "#!/bin/sh\n")), 0o111},
		{"symlink", writeNAR(t, symlink("", "../elsewhere")), fs.ModeSymlink},
		{"empty dir", writeNAR(t, dir("")), fs.ModeDir},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := filepath.Join(t.TempDir(), "out")
			if err := Restore(bytes.NewReader(tc.nar), target, RestoreOptions{}); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Lstat(target)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode()&tc.mode != tc.mode || fi.Mode().Type() != tc.mode.Type() {
				t.Errorf("mode %v, want %v", fi.Mode(), tc.mode)
			}
			if got := dump(t, target, DumpOptions{}); !bytes.Equal(got, tc.nar) {
				t.Errorf("dump after restore differs %s", firstDiff(got, tc.nar))
			}
		})
	}
}

// listAll lists every path under root (relative), not following symlinks.
func listAll(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil {
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
		}
		return nil
	})
	sort.Strings(out)
	return out
}

func TestRestoreHostile(t *testing.T) {
	sandbox := t.TempDir()
	canary := filepath.Join(sandbox, "canary") // symlinks in the NARs point here
	if err := os.Mkdir(canary, 0o755); err != nil {
		t.Fatal(err)
	}
	regular := func(b *tokens) { b.s("(", "type", "regular", "contents", "pwned", ")") }
	symlinkEntry := func(b *tokens, name, target string) {
		b.s("entry", "(", "name", name, "node", "(", "type", "symlink", "target", target, ")", ")")
	}
	build := func(f func(b *tokens)) []byte {
		var b tokens
		b.s(Magic, "(", "type", "directory")
		f(&b)
		b.s(")")
		return b.Bytes()
	}
	for _, tc := range []struct {
		name     string
		nar      []byte
		caseHack bool
		ok       bool // Restore succeeds (yet still writes nothing outside)
	}{
		{"dot-dot", entryNAR(".."), false, false},
		{"dot", entryNAR("."), false, false},
		{"slash", entryNAR("../canary/x"), false, false},
		{"NUL", entryNAR("x\x00"), false, false},
		{"empty", entryNAR(""), false, false},
		{"duplicate file", entryNAR("a", "a"), false, false},
		{"symlink then dir of the same name", build(func(b *tokens) {
			symlinkEntry(b, "a", canary)
			b.s("entry", "(", "name", "a", "node", "(", "type", "directory", "entry", "(", "name", "x", "node")
			regular(b)
			b.s(")", ")", ")", ")")
		}), false, false},
		{"symlink then file of the same name", build(func(b *tokens) {
			symlinkEntry(b, "a", canary+"/x")
			b.s("entry", "(", "name", "a", "node")
			regular(b)
			b.s(")")
		}), false, false},
		{"case-hack: symlink then dir differing in case", build(func(b *tokens) {
			symlinkEntry(b, "A", canary)
			b.s("entry", "(", "name", "a", "node", "(", "type", "directory", "entry", "(", "name", "x", "node")
			regular(b)
			b.s(")", ")", ")", ")")
		}), true, true},
		{"case-hack: renamed entry colliding with a real one", build(func(b *tokens) {
			symlinkEntry(b, "A", canary)
			symlinkEntry(b, "a", canary)
			b.s("entry", "(", "name", "a~nix~case~hack~1", "node")
			regular(b)
			b.s(")")
		}), true, false},
		{"symlink to the outside, then unrelated file", build(func(b *tokens) {
			symlinkEntry(b, "a", "..")
			b.s("entry", "(", "name", "b", "node")
			regular(b)
			b.s(")")
		}), false, true},
		{"2^62-byte file", func() []byte {
			var b tokens
			b.s(Magic, "(", "type", "regular", "contents").u64(1 << 62).raw([]byte("short"))
			return b.Bytes()
		}(), false, false},
		{"deep", deepNAR(MaxDepth + 1), false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := listAll(t, sandbox)
			target := filepath.Join(sandbox, "target")
			defer os.RemoveAll(target)
			err := Restore(bytes.NewReader(tc.nar), target, RestoreOptions{CaseHack: tc.caseHack})
			if (err == nil) != tc.ok {
				t.Fatalf("Restore: %v, want success %v", err, tc.ok)
			}
			var after []string
			for _, p := range listAll(t, sandbox) {
				if p != "target" && !strings.HasPrefix(p, "target/") {
					after = append(after, p)
				}
			}
			if strings.Join(after, "\n") != strings.Join(before, "\n") {
				t.Fatalf("sandbox changed outside the target:\nbefore %q\nafter  %q", before, after)
			}
		})
	}
}

func TestRestoreExistingTarget(t *testing.T) {
	dir := t.TempDir()
	elsewhere := filepath.Join(dir, "elsewhere")
	os.Mkdir(elsewhere, 0o755)
	os.Mkdir(filepath.Join(dir, "exists"), 0o755)
	os.Symlink(elsewhere, filepath.Join(dir, "link"))
	os.Symlink(filepath.Join(dir, "nowhere"), filepath.Join(dir, "dangling"))
	for _, nar := range [][]byte{sample(t), writeNAR(t, file("", "x")), writeNAR(t, symlink("", "x"))} {
		for _, name := range []string{"exists", "link", "dangling"} {
			if err := Restore(bytes.NewReader(nar), filepath.Join(dir, name), RestoreOptions{}); err == nil {
				t.Errorf("Restore into existing %s succeeded", name)
			}
		}
	}
	if ents, _ := os.ReadDir(elsewhere); len(ents) != 0 {
		t.Errorf("wrote through a symlink: %v", ents)
	}
	if _, err := os.Lstat(filepath.Join(dir, "nowhere")); err == nil {
		t.Error("created the target of a dangling symlink")
	}
}

func TestRestoreCaseHack(t *testing.T) {
	nar := writeNAR(t,
		dir(""),
		file("FOO", "1"),
		file("Foo", "2"),
		file("bar", "3"),
		symlink("fOo", "t"),
		dir("foo"),
		file("foo/X", "4"),
		file("foo/x", "5"),
	)
	tmp := t.TempDir()
	ours := filepath.Join(tmp, "ours")
	if err := Restore(bytes.NewReader(nar), ours, RestoreOptions{CaseHack: true}); err != nil {
		t.Fatal(err)
	}
	want := []string{".", "FOO", "Foo~nix~case~hack~1", "bar", "fOo~nix~case~hack~2", "foo~nix~case~hack~3", "foo~nix~case~hack~3/X", "foo~nix~case~hack~3/x~nix~case~hack~1"}
	if got := listAll(t, ours); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("restored %q, want %q", got, want)
	}
	// Dumping with the case hack undoes it.
	if got := dump(t, ours, DumpOptions{CaseHack: true}); !bytes.Equal(got, nar) {
		t.Fatalf("case-hack dump of the restore differs %s", firstDiff(got, nar))
	}
	if _, err := exec.LookPath("nix-store"); err == nil {
		theirs := filepath.Join(tmp, "theirs")
		nixRestore(t, nar, theirs, "--option", "use-case-hack", "true")
		if got := listAll(t, theirs); strings.Join(got, "|") != strings.Join(want, "|") {
			t.Fatalf("nix-store --restore with use-case-hack gives %q, we give %q", got, want)
		}
	}
}

func TestRestoreUmask(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	target := filepath.Join(t.TempDir(), "t")
	if err := Restore(bytes.NewReader(sample(t)), target, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]fs.FileMode{"a": 0o600, "d/run": 0o711, "d": fs.ModeDir | 0o700} {
		fi, err := os.Lstat(filepath.Join(target, p))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v (0666/0777 less the umask, plus execute bits as Nix)", p, fi.Mode(), want)
		}
	}
}
