package local

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestIgnoredACLs: canonicalisation removes every extended attribute but
// those ignored-acls names, as Nix's canonicaliseTimestampAndPermissions.
func TestIgnoredACLs(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "out")
	os.WriteFile(f, []byte("x"), 0o644)
	for _, a := range []string{"user.keep", "user.drop"} {
		if err := unix.Setxattr(f, a, []byte("v"), 0); err != nil {
			t.Skipf("no user extended attributes here: %v", err)
		}
	}
	t.Cleanup(func() { SetIgnoredACLs(DefaultIgnoredACLs) })
	SetIgnoredACLs([]string{"user.keep"})
	if err := Canonicalise(unix.AT_FDCWD, f, false); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Getxattr(f, "user.keep", nil); err != nil {
		t.Errorf("user.keep, which ignored-acls names, was removed: %v", err)
	}
	if _, err := unix.Getxattr(f, "user.drop", nil); !errors.Is(err, unix.ENODATA) {
		t.Errorf("user.drop kept: %v", err)
	}
}
