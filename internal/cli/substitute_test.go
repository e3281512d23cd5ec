package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cairn/internal/testutil/nixtest"
)

// TestBuildSubstitutes runs cairn build of a plain store path (its closure
// comes from a file:// cache Nix 2.8 wrote and signed) and of a path no
// cache has, and checks the store with nix-store --verify --check-contents.
func TestBuildSubstitutes(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix")
	dir := t.TempDir()
	src := &nixtest.Store{Root: filepath.Join(dir, "src")}
	os.WriteFile(filepath.Join(dir, "a.txt"), []byte("a\n"), 0o644)
	dep := src.Run(t, nil, "nix-store", "--add", filepath.Join(dir, "a.txt"))
	os.WriteFile(filepath.Join(dir, "b.txt"), []byte("b refers to "+dep+"\n"), 0o644)
	// --add finds no references: make one that has, with nix-store
	// --import of a hand-made export (see package substitute's tests).
	top := "/nix/store/3k4x8vq2w0c7hz1mfgrwg3k2dh9ld6s1-top"
	nar, err := nixtest.Output(nil, "nix-store", "--dump", filepath.Join(dir, "b.txt"))
	if err != nil {
		t.Fatal(err)
	}
	src.Run(t, nixtest.ExportStream(nar, top, []string{dep}, ""), "nix-store", "--import")
	sec, pub := filepath.Join(dir, "k.sec"), filepath.Join(dir, "k.pub")
	nixtest.Run(t, nil, "nix-store", "--generate-binary-cache-key", "cli-test-1", sec, pub)
	cache := filepath.Join(dir, "cache")
	src.Run(t, nil, "nix", "copy", "--to", "file://"+cache+"?compression=zstd&secret-key="+sec, top)
	pubKey, _ := os.ReadFile(pub)

	t.Setenv("NIX_CONF_DIR", dir)
	t.Setenv("NIX_CONFIG", "")
	root := filepath.Join(dir, "dst")
	run := func(args ...string) (string, string, error) {
		cmd := NewRoot()
		var stdout, stderr bytes.Buffer
		cmd.SetOut(&stdout)
		cmd.SetErr(&stderr)
		cmd.SetArgs(append([]string{"build", "--store", "local?root=" + root, "--option", "substituters", "file://" + cache,
			"--option", "trusted-public-keys", strings.TrimSpace(string(pubKey))}, args...))
		err := cmd.ExecuteContext(context.Background())
		return stdout.String(), stderr.String(), err
	}
	out, errOut, err := run(top)
	if err != nil {
		t.Fatalf("cairn build %s: %v\n%s", top, err, errOut)
	}
	if out != top+"\n" {
		t.Errorf("printed %q", out)
	}
	if !strings.Contains(errOut, "copying path '"+top+"' from 'file://"+cache+"'...") {
		t.Errorf("stderr: %q", errOut)
	}
	nixtest.Run(t, nil, "nix-store", "--store", "local?root="+root, "--verify", "--check-contents")
	if got := nixtest.Run(t, nil, "nix-store", "--store", "local?root="+root, "-q", "--references", top); got != dep {
		t.Errorf("references %q, want %q", got, dep)
	}
	missing := "/nix/store/0000000000000000000000000000000a-missing"
	if _, _, err := run(missing); err == nil || !strings.Contains(err.Error(), "is required, but there is no substituter that can build it") {
		t.Errorf("missing path: %v", err)
	}
}
