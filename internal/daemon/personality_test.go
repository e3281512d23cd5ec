package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cairn/internal/store/storetest"
	"cairn/internal/testutil/nixtest"
)

const personalityNix = `
let mk = name: system: derivation {
  inherit name system; builder = "/bin/sh";
  args = [ "-c" ''
    read p < /proc/self/personality; echo "personality $p" > $out
    while read l; do case "$l" in *" /dev/shm "*) s="''${l##*size=}"; echo "shm ''${s%%[, ]*}" >> $out;; esac; done < /proc/self/mountinfo
  '' ];
}; in { x86_64 = mk "pers-x86_64" "x86_64-linux"; i686 = mk "pers-i686" "i686-linux"; }
`

// TestNixPersonality: builders get the personality Nix 2.8 gives them
// (no address space randomisation; a 32-bit persona for i686-linux; with
// impersonate-linux-26 a Linux 2.6 uname) and a /dev/shm of
// sandbox-dev-shm-size, through cairn daemon and nix-daemon alike.
func TestNixPersonality(t *testing.T) {
	nixtest.Require(t, "nix-build", "nix-daemon")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	file := filepath.Join(t.TempDir(), "personality.nix")
	os.WriteFile(file, []byte(personalityNix), 0o644)
	td := newTestDaemon(t, [2]string{"sandbox-paths", "/bin/sh=/bin/busybox"}, [2]string{"impersonate-linux-26", "true"}, [2]string{"sandbox-dev-shm-size", "32m"})
	ref, refEnv := sandboxedRef(t, "--option", "impersonate-linux-26", "true", "--option", "sandbox-dev-shm-size", "32m")
	for attr, want := range map[string]string{
		"x86_64": "personality 00060000\nshm 32768k\n",
		"i686":   "personality 00060008\nshm 32768k\n",
	} {
		_, got, nix := buildBoth(t, td, ref, refEnv, "--no-out-link", file, "-A", attr)
		if got != nix || got != want {
			t.Errorf("%s: the builder saw %q, under nix-daemon %q, want %q", attr, got, nix, want)
		}
	}
}

// TestNixNoChroot: with sandbox = true, a derivation that sets __noChroot
// fails through cairn daemon as through nix-daemon 2.8, with its message.
func TestNixNoChroot(t *testing.T) {
	nixtest.Require(t, "nix-build", "nix-daemon")
	file := filepath.Join(t.TempDir(), "nochroot.nix")
	os.WriteFile(file, []byte(`derivation { name = "no-chroot"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo > $out" ]; __noChroot = true; }`), 0o644)
	td := newTestDaemon(t, [2]string{"sandbox-paths", "/bin/sh=/bin/busybox"})
	_, refEnv := sandboxedRef(t)
	sb := []string{"--option", "sandbox", "true", "--no-out-link", file}
	ours, theirs := runNix(td.nixEnv(), "nix-build", sb...), runNix(refEnv, "nix-build", sb...)
	const msg = "has '__noChroot' set, but that's not allowed when 'sandbox' is 'true'"
	if ours.code == 0 || ours.code != theirs.code || ours.stderr != theirs.stderr || !strings.Contains(ours.stderr, msg) {
		t.Errorf("nix-build exits %d:\n%s\nwith nix-daemon %d:\n%s", ours.code, ours.stderr, theirs.code, theirs.stderr)
	}
}

const privilegesNix = `{ salt }: derivation {
  name = "privileges-${salt}"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "while read k v; do case $k in NoNewPrivs:|Seccomp:) echo $k $v;; esac; done < /proc/self/status > $out" ];
}`

// TestNixPrivileges: filter-syscalls and allow-new-privileges give the
// builder the seccomp filter and no_new_privs that nix-daemon 2.8 gives it.
func TestNixPrivileges(t *testing.T) {
	nixtest.Require(t, "nix-build", "nix-daemon")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	file := filepath.Join(t.TempDir(), "privileges.nix")
	os.WriteFile(file, []byte(privilegesNix), 0o644)
	td := newTestDaemon(t, [2]string{"sandbox-paths", "/bin/sh=/bin/busybox"})
	ref, refEnv := sandboxedRef(t)
	for _, c := range []struct {
		salt, want string
		options    []string
	}{
		{"default", "NoNewPrivs: 1\nSeccomp: 2\n", nil},
		{"nofilter", "NoNewPrivs: 0\nSeccomp: 0\n", []string{"--option", "filter-syscalls", "false"}},
		{"newprivs", "NoNewPrivs: 0\nSeccomp: 2\n", []string{"--option", "allow-new-privileges", "true"}},
	} {
		args := append([]string{"--option", "sandbox", "true", "--no-out-link", file, "--argstr", "salt", c.salt}, c.options...)
		_, got, nix := buildBoth(t, td, ref, refEnv, args...)
		if got != nix || got != c.want {
			t.Errorf("%s: the builder had %q, under nix-daemon %q, want %q", c.salt, got, nix, c.want)
		}
	}
}

// sandboxedRef starts nix-daemon 2.8 on a chroot store with the sandbox on,
// /bin/sh bound in, and options, as the reference for a test daemon.
func sandboxedRef(t *testing.T, options ...string) (*storetest.Daemon, []string) {
	t.Helper()
	ref := storetest.StartDaemonWith(t, []string{"nix-daemon"}, append([]string{"--option", "sandbox", "true",
		"--option", "sandbox-paths", "/bin/sh=/bin/busybox"}, options...))
	return ref, nixDaemonClientEnv(ref)
}

// buildBoth runs nix-build with args through td and through the reference;
// both must succeed (where either sandbox cannot run, the test is skipped).
// It returns the output path and what each daemon's output holds.
func buildBoth(t *testing.T, td *testDaemon, ref *storetest.Daemon, refEnv []string, args ...string) (out, ours, theirs string) {
	t.Helper()
	out, ours, theirs, _, _ = buildBothLogs(t, td, ref, refEnv, args...)
	return out, ours, theirs
}

// buildBothLogs is buildBoth that also returns what each nix-build wrote to
// stderr.
func buildBothLogs(t *testing.T, td *testDaemon, ref *storetest.Daemon, refEnv []string, args ...string) (out, ours, theirs, oursLog, theirsLog string) {
	t.Helper()
	a, b := runNix(td.nixEnv(), "nix-build", args...), runNix(refEnv, "nix-build", args...)
	if a.code != 0 {
		if strings.Contains(a.stderr, "setting up the build environment") {
			t.Skipf("the kernel refuses the sandbox: %s", a.stderr)
		}
		t.Fatalf("nix-build %s: %+v", strings.Join(args, " "), a)
	}
	if b.code != 0 {
		t.Skipf("Nix's own sandbox does not work here: %s", b.stderr)
	}
	if a.stdout != b.stdout {
		t.Errorf("nix-build %s: output %q, with nix-daemon %q", strings.Join(args, " "), a.stdout, b.stdout)
	}
	got, _ := os.ReadFile(filepath.Join(td.cfg.Root, a.stdout))
	want, _ := os.ReadFile(filepath.Join(ref.Root, b.stdout))
	return a.stdout, string(got), string(want), a.stderr, b.stderr
}
