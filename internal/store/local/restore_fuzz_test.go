package local

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"cairn/internal/nar"
)

// FuzzRestoreCanonical: restoreCanonical, with its writer goroutines,
// accepts exactly the NARs nar.Restore accepts and makes the same tree (the
// two dump to the same NAR); what it made on failure can be removed.
func FuzzRestoreCanonical(f *testing.F) {
	seed := f.TempDir()
	for name, files := range map[string]map[string]string{
		"tree": {"a": "hello\n", "bin/run": "*#!/bin/sh\n", "link": "->a", "empty/": "", "sub/deep/f": "deep"},
		"file": {"file": "just a file"},
		"many": manySmallFiles(),
	} {
		writeTree(f, filepath.Join(seed, name), files)
		b := narOf(f, filepath.Join(seed, name))
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(dfd)
		wantErr := nar.Restore(bytes.NewReader(data), filepath.Join(dir, "want"), nar.RestoreOptions{})
		_, gotErr := restoreCanonical(nar.NewReader(bytes.NewReader(data)), dfd, "got", dir+"/got",
			readUmask(), make([]byte, 4096), false)
		if (wantErr == nil) != (gotErr == nil) {
			t.Fatalf("nar.Restore: %v; restoreCanonical: %v", wantErr, gotErr)
		}
		if gotErr == nil {
			var want, got bytes.Buffer
			if err := nar.Dump(&want, filepath.Join(dir, "want"), nar.DumpOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := nar.Dump(&got, filepath.Join(dir, "got"), nar.DumpOptions{}); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(want.Bytes(), got.Bytes()) {
				t.Fatalf("the trees differ: %d and %d bytes of NAR", want.Len(), got.Len())
			}
		}
		os.Chmod(filepath.Join(dir, "got"), 0o755)
		if err := removeTree(dfd, "got"); err != nil {
			t.Fatalf("remove what restoreCanonical made: %v", err)
		}
		removeTree(dfd, "want")
	})
}
