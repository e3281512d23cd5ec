package cli

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cairn/internal/testutil/nixtest"
)

// runStoreIn is runStore with stdin.
func runStoreIn(t *testing.T, url, stdin string, args ...string) (string, error) {
	t.Helper()
	root := NewRoot()
	var out, errOut strings.Builder
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(append([]string{"--store", url, "store"}, args...))
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

// TestStoreMaintenanceVerbs drives export, import, dump-db, load-db, verify,
// optimise and delete through the command line and compares with nix-store.
func TestStoreMaintenanceVerbs(t *testing.T) {
	nixtest.Require(t, "nix-store")
	url, root, paths := storeFixture(t)

	exp, err := runStore(t, url, append([]string{"export"}, paths...)...)
	if err != nil {
		t.Fatal(err)
	}
	if want := nixOut(t, "nix-store", append([]string{"--store", url, "--export"}, paths...)...); exp != want {
		t.Errorf("cairn store export differs from nix-store --export (%d vs %d bytes)", len(exp), len(want))
	}
	url2 := "local?root=" + filepath.Join(t.TempDir(), "root2")
	imported, err := runStoreIn(t, url2, exp, "import")
	if err != nil {
		t.Fatal(err)
	}
	ns := nixtest.NewStore(t)
	if want := nixtest.Run(t, []byte(exp), "nix-store", "--store", ns.URL(), "--import"); strings.TrimSpace(imported) != want {
		t.Errorf("cairn store import printed %q, nix-store --import %q", imported, want)
	}
	dump, err := runStore(t, url2, "dump-db")
	if err != nil {
		t.Fatal(err)
	}
	if want := nixOut(t, "nix-store", "--store", ns.URL(), "--dump-db"); dump != want {
		t.Errorf("dump-db after import:\n%s\nNix:\n%s", dump, want)
	}
	if _, err := runStoreIn(t, url2, dump, "load-db"); err != nil {
		t.Errorf("load-db of our own dump: %v", err)
	}

	if _, err := runStore(t, url, "optimise"); err != nil {
		t.Fatal(err)
	}
	if _, err := runStore(t, url, "verify", "--check-contents"); err != nil {
		t.Errorf("verify of a clean store: %v", err)
	}
	// Tamper with a file: verify fails with status 1.
	var file string
	for _, p := range paths {
		if strings.HasSuffix(p, "-file") {
			file = p
		}
	}
	real := filepath.Join(root, file)
	os.Chmod(real, 0o644)
	os.WriteFile(real, []byte("changed\n"), 0o644)
	_, err = runStore(t, url, "verify", "--check-contents")
	var ee *exitError
	if !errors.As(err, &ee) || ee.status != 1 || !strings.Contains(err.Error(), "not all store errors were fixed") {
		t.Errorf("verify of a tampered store: %v", err)
	}
	out, err := runStore(t, url, "delete", file)
	if err != nil && !strings.Contains(err.Error(), "still alive") {
		t.Fatal(err)
	}
	if err == nil && !strings.HasPrefix(out, "1 store paths deleted, ") {
		t.Errorf("delete printed %q", out)
	}
}
