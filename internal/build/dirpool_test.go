package build

import (
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
)

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// TestResetDirReusesMountPoints: the last build's mount points are kept
// for the inputs the next build shares, renamed for the ones it does not
// (files for files, directories for directories), and everything else goes.
func TestResetDirReusesMountPoints(t *testing.T) {
	src := t.TempDir()
	srcFile, srcDir := filepath.Join(src, "file"), filepath.Join(src, "dir")
	if err := os.WriteFile(srcFile, []byte("x"), 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(srcDir, 0o555); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	for _, f := range []string{"shared", "oldfile", "unneeded"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "olddir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "output"), []byte("made by the builder"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(srcFile, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "full"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "full", "f"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	sharedIno, dirIno := inode(t, filepath.Join(dir, "shared")), inode(t, filepath.Join(dir, "olddir"))
	spareFiles := []uint64{inode(t, filepath.Join(dir, "oldfile")), inode(t, filepath.Join(dir, "unneeded"))}

	keep := map[string]string{
		"shared":   srcFile,
		"newfile":  srcFile,
		"newdir":   srcDir,
		"zmissing": srcDir, // no spare directory left for it (names are served in order): init makes it
		"link":     srcFile,
	}
	uid, gid := os.Geteuid(), os.Getegid()
	if err := resetDir(dir, keep, false, uid, uid, gid, 0o1775); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	// The symlink "link" is no mount point, so it went; "link" and
	// "newfile" got the two spare files.
	if want := []string{"link", "newdir", "newfile", "shared"}; !slices.Equal(names, want) {
		t.Fatalf("entries after reset: %v, want %v", names, want)
	}
	if got := inode(t, filepath.Join(dir, "shared")); got != sharedIno {
		t.Error("the shared mount point was replaced")
	}
	if got := inode(t, filepath.Join(dir, "newdir")); got != dirIno {
		t.Error("newdir is not the old directory mount point renamed")
	}
	got := []uint64{inode(t, filepath.Join(dir, "link")), inode(t, filepath.Join(dir, "newfile"))}
	slices.Sort(got)
	slices.Sort(spareFiles)
	if !slices.Equal(got, spareFiles) {
		t.Errorf("link and newfile are inodes %v, want the spare files %v", got, spareFiles)
	}
	for _, name := range []string{"link", "newfile"} {
		if fi, err := os.Lstat(filepath.Join(dir, name)); err != nil || !fi.Mode().IsRegular() || fi.Size() != 0 {
			t.Errorf("%s is not an empty regular file: %v %v", name, fi, err)
		}
	}
	if fi, err := os.Lstat(dir); err != nil || fi.Mode()&os.ModeSticky == 0 {
		t.Errorf("dir mode after reset: %v %v", fi, err)
	}
}
