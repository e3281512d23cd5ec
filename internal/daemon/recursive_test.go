package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cairn/internal/testutil/nixtest"
)

// recursiveNix's builder uses Nix 2.8's own client inside the sandbox (its
// /usr bound in): it adds a file, builds a derivation with nix-build (whose
// stderr, what the nested client was told, goes to the output), and tries to
// read a valid path that is not among its inputs.
const recursiveNix = `{ salt, secret }: derivation {
  name = "recursive-${salt}"; system = builtins.currentSystem; builder = "/bin/sh";
  requiredSystemFeatures = [ "recursive-nix" ];
  PATH = "/usr/bin:/bin";
  inherit secret;
  args = [ "-c" ''
    echo hello > $TMPDIR/f
    added=$(nix-store --add $TMPDIR/f)
    inner=$(nix-build --no-out-link -E 'derivation { name = "inner-${salt}"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo inner log line; echo inner > $out" ]; }' 2>$TMPDIR/log) || cat $TMPDIR/log
    echo "added $added: $(cat $added)" > $out
    echo "inner $inner: $(cat $inner)" >> $out
    echo "nested client:" >> $out
    cat $TMPDIR/log >> $out
    nix-store -q --hash $secret >> $out 2>&1 || echo "secret refused" >> $out
    nix-store --dump $secret > /dev/null 2>&1 || echo "dump refused" >> $out
  '' ];
}`

// TestNixRecursive: a recursive-nix build through cairn daemon and through
// nix-daemon 2.8: what the builder adds and builds through its own daemon
// is there for it (and becomes a reference of its output), what is not
// among its inputs stays hidden, the nested build's activity and log reach
// the outer client and not the nested one, and without the experimental
// feature the build fails with Nix's message.
func TestNixRecursive(t *testing.T) {
	nixtest.Require(t, "nix-build", "nix-daemon", "nix-store")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "recursive.nix")
	os.WriteFile(file, []byte(recursiveNix), 0o644)
	paths := "/bin/sh=/bin/busybox /usr /lib=/usr/lib /lib64=/usr/lib64"
	features := "recursive-nix benchmark big-parallel nixos-test"
	td := newTestDaemon(t, [2]string{"sandbox-paths", paths}, [2]string{"experimental-features", "nix-command recursive-nix"},
		[2]string{"system-features", features})
	ref, refEnv := sandboxedRef(t, "--option", "sandbox-paths", paths, "--option", "experimental-features", "nix-command recursive-nix",
		"--option", "system-features", features)
	secret := filepath.Join(dir, "secret")
	os.WriteFile(secret, []byte("secret\n"), 0o644)
	var sec [2]string
	for i, env := range [][]string{td.nixEnv(), refEnv} {
		r := runNix(env, "nix-store", "--add", secret)
		if r.code != 0 {
			t.Fatalf("nix-store --add: %+v", r)
		}
		sec[i] = strings.TrimSpace(r.stdout)
	}
	if sec[0] != sec[1] {
		t.Fatalf("the secret is %s here, %s there", sec[0], sec[1])
	}
	args := []string{"--no-out-link", file, "--argstr", "salt", "a", "--argstr", "secret", sec[0]}
	out, ours, theirs, oursLog, theirsLog := buildBothLogs(t, td, ref, refEnv, args...)
	for _, want := range []string{"added /nix/store/", ": hello\n", "-inner-a: inner\n", "secret refused\n", "dump refused\n"} {
		if !strings.Contains(ours, want) {
			t.Errorf("the builder wrote %q, no %q", ours, want)
		}
	}
	if ours != theirs {
		t.Errorf("the builder wrote %q, under nix-daemon %q", ours, theirs)
	}
	if strings.Contains(ours, "building '") {
		t.Errorf("the nested client was told of the nested build:\n%s", ours)
	}
	for _, want := range []string{"-inner-a.drv'...\n", "inner log line\n"} {
		if !strings.Contains(oursLog, want) {
			t.Errorf("the outer client was not told %q:\n%s", want, oursLog)
		}
	}
	if oursLog != theirsLog {
		t.Errorf("the outer client's stderr:\n%s\nwith nix-daemon:\n%s", oursLog, theirsLog)
	}
	refsOurs := runNix(td.nixEnv(), "nix-store", "-q", "--references", strings.TrimSpace(out))
	refsTheirs := runNix(refEnv, "nix-store", "-q", "--references", strings.TrimSpace(out))
	// The added file, the inner output, and the inner .drv that the nested
	// client's "will be built" names in the output.
	if refsOurs.stdout != refsTheirs.stdout || len(strings.Fields(refsOurs.stdout)) != 3 {
		t.Errorf("references %q, with nix-daemon %q", refsOurs.stdout, refsTheirs.stdout)
	}

	// Without the experimental feature.
	plain := newTestDaemon(t, [2]string{"sandbox-paths", paths}, [2]string{"system-features", features})
	r := runNix(plain.nixEnv(), "nix-build", "--no-out-link", file, "--argstr", "salt", "b", "--argstr", "secret", sec[0])
	if msg := "experimental Nix feature 'recursive-nix' is disabled"; r.code == 0 || !strings.Contains(r.stderr, msg) {
		t.Errorf("without recursive-nix: exit %d, no %q:\n%s", r.code, msg, r.stderr)
	}
}
