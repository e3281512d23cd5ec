package local

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"cairn/internal/nixhash"
	"cairn/internal/store"
	"cairn/internal/testutil/nixtest"
)

// mountTmpfs mounts a tmpfs of the given size on a fresh directory, or skips.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// TestFullDisk: on a 2 MiB file system, adding a path that does not fit
// fails clearly, registers nothing and leaves nothing behind, and the store
// stays usable; likewise when the disk is full before the add starts (the
// database then cannot grow either). Both with the database on the full disk
// and with only the store there.
func TestFullDisk(t *testing.T) {
	nixtest.Require(t, "nix-store")
	for _, stateOnTmpfs := range []bool{true, false} {
		name := "store only"
		if stateOnTmpfs {
			name = "store and state"
		}
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			mnt := mountTmpfs(t, "2m")
			url := "local?root=" + mnt
			if !stateOnTmpfs {
				other := t.TempDir()
				url = "local?store=/nix/store&real=" + mnt + "/nix/store&state=" + other + "/state&log=" + other + "/log"
			}
			cfg, err := store.ParseURL(url, func(string) string { return "" })
			if err != nil {
				t.Fatal(err)
			}
			s, err := Open(ctx, cfg, DefaultOptions())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			src := t.TempDir()
			big := filepath.Join(src, "big")
			os.WriteFile(big, make([]byte, 3<<20), 0o644)
			small := filepath.Join(src, "small")
			writeTree(t, small, map[string]string{"a": "fits\n", "b/c": "also fits\n"})

			checkNothingLeft := func(t *testing.T, wantValid int) {
				t.Helper()
				all, err := s.QueryAllValidPaths(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if len(all) != wantValid {
					t.Errorf("%d valid paths, want %d", len(all), wantValid)
				}
				if ents := leftoverTemps(t, s.RealStoreDir()); len(ents) != 0 {
					t.Errorf("%d temporaries left", len(ents))
				}
				ents, _ := os.ReadDir(s.RealStoreDir())
				n := 0
				for _, e := range ents {
					if !strings.HasPrefix(e.Name(), ".") && e.Name() != TempDirName && !strings.HasSuffix(e.Name(), ".lock") {
						n++
					}
				}
				if n != wantValid {
					t.Errorf("%d entries in the store dir, want %d", n, wantValid)
				}
			}

			_, err = s.AddPaths(ctx, []string{big}, nixhash.Recursive, nixhash.SHA256)
			if err == nil || !errors.Is(err, unix.ENOSPC) || !strings.Contains(err.Error(), "no space left on device") {
				t.Fatalf("adding 3 MiB to a 2 MiB disk: %v", err)
			}
			t.Logf("error: %v", err)
			checkNothingLeft(t, 0)
			if _, err := s.AddPaths(ctx, []string{small}, nixhash.Recursive, nixhash.SHA256); err != nil {
				t.Fatalf("small add after the failure: %v", err)
			}
			checkNothingLeft(t, 1)

			// Fill the disk completely, then add.
			filler := filepath.Join(mnt, "filler")
			f, err := os.Create(filler)
			if err != nil {
				t.Fatal(err)
			}
			chunk := make([]byte, 4096)
			for {
				if _, err := f.Write(chunk); err != nil {
					break
				}
			}
			for {
				if _, err := f.Write(chunk[:1]); err != nil {
					break
				}
			}
			f.Close()
			writeTree(t, src, map[string]string{"second/x": "second\n"})
			if _, err := s.AddPaths(ctx, []string{filepath.Join(src, "second")}, nixhash.Recursive, nixhash.SHA256); err == nil {
				t.Errorf("adding to a full disk succeeded")
			} else {
				t.Logf("error on a full disk: %v", err)
			}
			checkNothingLeft(t, 1)
			// An empty file needs no data blocks: with one page free, the intent
			// fits and it is the database that runs out of space (when it is there).
			if fi, err := os.Stat(filler); err == nil {
				os.Truncate(filler, fi.Size()-4096)
			}
			empty := filepath.Join(src, "empty")
			os.WriteFile(empty, nil, 0o644)
			if _, err := s.AddPaths(ctx, []string{empty}, nixhash.Recursive, nixhash.SHA256); err != nil {
				t.Logf("empty file on a full disk: %v", err)
				checkNothingLeft(t, 1)
			} else {
				t.Logf("empty file on a full disk: added")
				checkNothingLeft(t, 2)
				res, err := s.Verify(ctx, VerifyOptions{CheckContents: true})
				if err != nil || res.Errors {
					t.Errorf("verify: %+v, %v", res, err)
				}
				os.Remove(filler)
				return
			}
			os.Remove(filler)
			if _, err := s.AddPaths(ctx, []string{filepath.Join(src, "second")}, nixhash.Recursive, nixhash.SHA256); err != nil {
				t.Fatalf("add after freeing space: %v", err)
			}
			checkNothingLeft(t, 2)
			res, err := s.Verify(ctx, VerifyOptions{CheckContents: true})
			if err != nil || res.Errors {
				t.Errorf("verify: %+v, %v", res, err)
			}
			if stateOnTmpfs {
				nixVerify(t, mnt)
			}
		})
	}
}
