package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cairn/internal/store/storetest"
	"cairn/internal/testutil/nixtest"
)

// TestStoreVerbsThroughDaemon runs the store verbs with --store unix://SOCKET
// against nix-daemon 2.8 and compares each output with the same verb run on
// the daemon's store directly (local?root=…).
func TestStoreVerbsThroughDaemon(t *testing.T) {
	nixtest.Require(t, "nix-daemon")
	d := storetest.StartDaemon(t, "nix-daemon")
	remoteURL, localURL := "unix://"+d.Socket, "local?root="+d.Root
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "tree/sub"), 0o755)
	os.WriteFile(filepath.Join(src, "tree/a"), []byte("a\n"), 0o644)
	os.WriteFile(filepath.Join(src, "tree/sub/run"), []byte("#!/bin/sh\n"), 0o755)
	os.Symlink("a", filepath.Join(src, "tree/l"))
	os.WriteFile(filepath.Join(src, "file"), []byte("file\n"), 0o644)
	out, err := runStore(t, remoteURL, "add", filepath.Join(src, "tree"), filepath.Join(src, "file"))
	if err != nil {
		t.Fatal(err)
	}
	paths := strings.Fields(out)
	want := strings.Fields(nixOut(t, "nix-store", "--store", "local?root="+filepath.Join(t.TempDir(), "ref"),
		"--add", filepath.Join(src, "tree"), filepath.Join(src, "file")))
	if strings.Join(paths, " ") != strings.Join(want, " ") {
		t.Fatalf("add through the daemon = %v, nix-store --add = %v", paths, want)
	}
	if _, err := runStore(t, remoteURL, "add", "--fixed", "sha1", filepath.Join(src, "file")); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		append([]string{"path-info", "--json"}, paths...),
		append([]string{"path-info", "-r"}, paths...),
		append([]string{"query", "--references"}, paths...),
		append([]string{"query", "--referrers"}, paths...),
		append([]string{"query", "--requisites"}, paths...),
		{"dump", paths[0]},
		{"dump", paths[1]},
	} {
		t.Run(strings.Join(args[:2], " "), func(t *testing.T) {
			got, err := runStore(t, remoteURL, args...)
			if err != nil {
				t.Fatalf("through the daemon: %v", err)
			}
			want, err := runStore(t, localURL, args...)
			if err != nil {
				t.Fatalf("local: %v", err)
			}
			if got != want {
				t.Errorf("cairn store %s through the daemon:\n%s\nlocally:\n%s", strings.Join(args, " "), got, want)
			}
		})
	}
	if _, err := runStore(t, remoteURL, "verify"); err == nil || !strings.Contains(err.Error(), "needs a local store") {
		t.Errorf("verify through a daemon: error = %v", err)
	}
}
