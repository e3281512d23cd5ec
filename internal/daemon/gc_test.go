package daemon

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"cairn/internal/testutil/nixtest"
)

// TestNixGC runs Nix 2.8's nix-store --gc (and --print-dead, --print-live,
// --print-roots, --delete) against the daemon on a chroot store.
func TestNixGC(t *testing.T) {
	nixtest.Require(t, "nix-store")
	td := newTestDaemon(t)
	files := t.TempDir()
	add := func(name, contents string) string {
		p := filepath.Join(files, name)
		os.WriteFile(p, []byte(contents), 0o644)
		return td.nix(t, "nix-store", "--add", p)
	}
	kept := add("kept", "kept\n")
	dead := add("dead", strings.Repeat("dead\n", 100000))
	dead2 := add("dead2", "dead too\n")
	root := filepath.Join(files, "result")
	td.nix(t, "nix-store", "--add-root", root, "--indirect", "-r", kept)

	if got := td.nix(t, "nix-store", "--gc", "--print-dead"); got != strings.Join(sorted2(dead, dead2), "\n") {
		t.Errorf("--print-dead: %q", got)
	}
	if got := td.nix(t, "nix-store", "--gc", "--print-live"); got != kept {
		t.Errorf("--print-live: %q, want %q", got, kept)
	}
	if got := td.nix(t, "nix-store", "--gc", "--print-roots"); !strings.Contains(got, " -> "+kept) {
		t.Errorf("--print-roots: %q", got)
	}
	msg := td.nixFails(t, "nix-store", "--delete", kept)
	if !strings.Contains(msg, "Cannot delete path '"+kept+"' since it is still alive") {
		t.Errorf("--delete of a root: %s", msg)
	}
	if got := td.nix(t, "nix-store", "--delete", dead2); got != "1 store paths deleted, 0.00 MiB freed" {
		t.Errorf("--delete: %q", got)
	}
	got := td.nix(t, "nix-store", "--gc")
	if !regexp.MustCompile(`^1 store paths deleted, 0\.4[78] MiB freed$`).MatchString(got) {
		t.Errorf("--gc: %q", got)
	}
	for p, want := range map[string]bool{kept: true, dead: false, dead2: false} {
		_, err := os.Lstat(filepath.Join(td.cfg.RealStoreDir, filepath.Base(p)))
		if (err == nil) != want {
			t.Errorf("%s: exists %v after the collection, want %v", p, err == nil, want)
		}
	}
	td.nix(t, "nix-store", "--verify", "--check-contents")
	// Any client may collect (nix-daemon 2.8 asks no trust); an untrusted
	// one sees censored roots.
	td.decision.Store(&Decision{User: "tester", UID: uint32(os.Getuid()), Allowed: true, Trusted: false})
	untrusted := add("untrusted", "added by an untrusted client\n")
	if got := td.nix(t, "nix-store", "--gc", "--print-roots"); !strings.Contains(got, "{censored} -> "+kept) {
		t.Errorf("--print-roots untrusted: %q", got)
	}
	if got := td.nix(t, "nix-store", "--gc"); !strings.HasPrefix(got, "1 store paths deleted") {
		t.Errorf("--gc untrusted: %q (deleting %s)", got, untrusted)
	}
	if got := td.nix(t, "nix-store", "--gc", "--print-dead"); got != "" {
		t.Errorf("--print-dead after the collection: %q", got)
	}
}

func sorted2(a, b string) []string {
	if b < a {
		return []string{b, a}
	}
	return []string{a, b}
}

// TestNixGCKeepOutputs: a client's keep-outputs (a trusted client's
// --option) decides whether a rooted derivation keeps its output.
func TestNixGCKeepOutputs(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix-instantiate", "nix")
	td := newTestDaemon(t)
	ref := nixtest.NewStore(t)
	refDrv := ref.Run(t, nil, "nix-instantiate", "-E", testDrvExpr)
	out := ref.Run(t, nil, "nix-store", "--option", "build-users-group", "", "--option", "sandbox-paths", "/bin/sh=/bin/busybox", "-r", refDrv)
	if b, err := nixtest.OutputEnv(td.nixEnv(), "nix", "copy", "--no-check-sigs", "--from", ref.URL(), refDrv, out); err != nil {
		t.Fatalf("nix copy: %v: %s", err, b)
	}
	root := filepath.Join(t.TempDir(), "drv-root")
	if drv := td.nix(t, "nix-instantiate", "--add-root", root, "--indirect", "-E", testDrvExpr); drv != root && drv != refDrv {
		t.Fatalf("nix-instantiate --add-root printed %q", drv)
	}
	if got := td.nix(t, "nix-store", "--gc", "--print-dead"); !strings.Contains(got, out) {
		t.Errorf("keep-outputs false: %s not dead in %q", out, got)
	}
	if got := td.nix(t, "nix-store", "--option", "keep-outputs", "true", "--gc", "--print-dead"); strings.Contains(got, out) {
		t.Errorf("keep-outputs true: %s dead in %q", out, got)
	}
	if got := td.nix(t, "nix-store", "--option", "gc-keep-outputs", "true", "--gc", "--print-live"); !strings.Contains(got, out) {
		t.Errorf("gc-keep-outputs true: %s not live in %q", out, got)
	}
}
