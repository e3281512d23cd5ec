package cli

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"cairn/internal/store/local"
	"cairn/internal/store/storetest"
	"cairn/internal/testutil/nixtest"
)

// runGCVerb runs `cairn --store URL gc ARGS…` and returns stdout and stderr.
func runGCVerb(t *testing.T, url string, args ...string) (string, string, error) {
	t.Helper()
	root := NewRoot()
	var out, errOut strings.Builder
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(append([]string{"--store", url, "gc"}, args...))
	err := root.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

var freedLine = regexp.MustCompile(`^\d+ store paths deleted, -?\d+\.\d\d MiB freed\n$`)

// TestGCVerb drives cairn gc on a local store and compares its listings with
// nix-store --gc's; then through nix-daemon 2.8 (Cairn's client side of
// CollectGarbage and FindRoots).
func TestGCVerb(t *testing.T) {
	nixtest.Require(t, "nix-store")
	url, root, paths := storeFixture(t)
	state := filepath.Join(root, "nix/var/nix")
	if err := os.Symlink(paths[0], filepath.Join(state, "gcroots", "keep")); err != nil {
		t.Fatal(err)
	}
	for _, flag := range []string{"--print-roots", "--print-live", "--print-dead"} {
		got, _, err := runGCVerb(t, url, flag)
		if err != nil {
			t.Fatalf("gc %s: %v", flag, err)
		}
		// Nix 2.8 lists (and deletes) Cairn's temporaries directory when
		// no Cairn process holds its root, even when it only prints; Cairn
		// keeps it.
		want := regexp.MustCompile(`(?m)^/nix/store/`+local.TempDirName+`\n`).ReplaceAllString(nixOut(t, "nix-store", "--store", url, "--gc", flag), "")
		if got != want {
			t.Errorf("gc %s:\n%s\nnix-store --gc:\n%s", flag, got, want)
		}
	}
	if _, _, err := runGCVerb(t, url, "--delete", paths[0]); err == nil || !strings.Contains(err.Error(), "since it is still alive") {
		t.Errorf("gc --delete of a root: %v", err)
	}
	out, stderr, err := runGCVerb(t, url, "--max-freed", "1")
	if err != nil || !freedLine.MatchString(out) || strings.HasPrefix(out, "0 ") {
		t.Errorf("gc --max-freed 1: %q, %v", out, err)
	}
	if !strings.Contains(stderr, "deleted more than 1 bytes; stopping") {
		t.Errorf("gc --max-freed 1 said:\n%s", stderr)
	}
	if out, _, err := runGCVerb(t, url); err != nil || !freedLine.MatchString(out) {
		t.Errorf("gc: %q, %v", out, err)
	}
	if out, _, _ := runGCVerb(t, url, "--print-dead"); out != "" {
		t.Errorf("dead after gc: %q", out)
	}
	if out, _, _ := runGCVerb(t, url, "--print-live"); strings.TrimSpace(out) != paths[0] {
		t.Errorf("live after gc: %q, want %s", out, paths[0])
	}
	if _, _, err := runGCVerb(t, url, "--max-freed", "lots"); err == nil {
		t.Error("--max-freed lots accepted")
	}

	t.Run("nix-daemon", func(t *testing.T) {
		nixtest.Require(t, "nix-daemon")
		d := storetest.StartDaemon(t, "nix-daemon")
		remote := "unix://" + d.Socket
		src := t.TempDir()
		var added []string
		for _, n := range []string{"one", "two"} {
			os.WriteFile(filepath.Join(src, n), []byte(n+"\n"), 0o644)
			out, err := runStore(t, remote, "add", filepath.Join(src, n))
			if err != nil {
				t.Fatal(err)
			}
			added = append(added, strings.TrimSpace(out))
		}
		slices.Sort(added)
		out, _, err := runGCVerb(t, remote, "--print-dead")
		if err != nil || strings.Fields(out) == nil || !slices.Equal(strings.Fields(out), added) {
			t.Errorf("--print-dead through nix-daemon: %q, %v; want %q", out, err, added)
		}
		if out, _, err := runGCVerb(t, remote, "--delete", added[0]); err != nil || !strings.HasPrefix(out, "1 store paths deleted") {
			t.Errorf("--delete through nix-daemon: %q, %v", out, err)
		}
		if out, _, err := runGCVerb(t, remote); err != nil || !strings.HasPrefix(out, "1 store paths deleted") {
			t.Errorf("gc through nix-daemon: %q, %v", out, err)
		}
		if _, _, err := runGCVerb(t, remote, "--print-roots"); err != nil {
			t.Errorf("--print-roots through nix-daemon: %v", err)
		}
	})
}
