package daemon

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"cairn/internal/testutil/nixtest"
)

const remoteBuildNix = `
let mk = name: script: deps: derivation { inherit name deps; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; };
  dep = mk "daemon-remote-dep" "echo dep > $out" [];
in {
  top = mk "daemon-remote-top" "echo top $deps > $out" [ dep ];
  fails = mk "daemon-remote-fails" "echo going to fail; exit 3" [];
}
`

// TestNixRemoteBuild: a daemon with remote builders (max-jobs 0, so that
// nothing builds here) builds a dependent graph on the machine and fails
// a failing builder there, through cairn daemon as through nix-daemon 2.8:
// the same outputs, the client told where each build runs, and the same
// exit and messages for the failure.
func TestNixRemoteBuild(t *testing.T) {
	nixtest.Require(t, "nix-build", "nix-daemon", "nix-store")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "remote.nix")
	os.WriteFile(file, []byte(remoteBuildNix), 0o644)
	// The machines' nix-store --serve, with the sandbox settings.
	serve := filepath.Join(dir, "serve")
	os.WriteFile(serve, []byte("#!/bin/sh\nexport NIX_CONFIG='sandbox = true\nsandbox-paths = /bin/sh=/bin/busybox\n"+
		"build-users-group =\nsubstituters ='\nexec nix-store \"$@\"\n"), 0o755)
	machine := func(name string) string {
		return "ssh://localhost?remote-program=" + serve + "&remote-store=local?root=" + filepath.Join(dir, name) + " x86_64-linux"
	}
	td := newTestDaemon(t, [2]string{"sandbox-paths", "/bin/sh=/bin/busybox"}, [2]string{"max-jobs", "0"},
		[2]string{"builders", machine("ours")})
	ref, refEnv := sandboxedRef(t, "--option", "max-jobs", "0", "--option", "builders", machine("theirs"))
	out, got, want := buildBoth(t, td, ref, refEnv, "--no-out-link", file, "-A", "top")
	if got != want || !strings.HasPrefix(got, "top /nix/store/") {
		t.Errorf("%s holds %q, with nix-daemon %q", out, got, want)
	}
	for _, name := range []string{"ours", "theirs"} {
		if _, err := os.Stat(filepath.Join(dir, name, strings.TrimSpace(out))); err != nil {
			t.Errorf("not built on the machine %s: %v", name, err)
		}
	}
	ours, theirs := runNix(td.nixEnv(), "nix-build", "--no-out-link", file, "-A", "fails"), runNix(refEnv, "nix-build", "--no-out-link", file, "-A", "fails")
	// The same, but for the machine's name and Nix's "copying N paths..."
	// (a CopyPaths activity Cairn does not send).
	copying := regexp.MustCompile(`(?m)^copying [0-9]+ paths\.\.\.\n`)
	norm := func(s, name string) string {
		return copying.ReplaceAllString(strings.ReplaceAll(s, filepath.Join(dir, name), "MACHINE"), "")
	}
	a, b := norm(ours.stderr, "ours"), norm(theirs.stderr, "theirs")
	if ours.code != theirs.code || ours.code == 0 || a != b || !strings.Contains(a, "failed: builder for '") {
		t.Errorf("a failing builder: exit %d, with nix-daemon %d\n%s\nwith nix-daemon:\n%s", ours.code, theirs.code, a, b)
	}
}
