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
	settings := [][2]string{{"sandbox-paths", "/bin/sh=/bin/busybox"}, {"impersonate-linux-26", "true"}, {"sandbox-dev-shm-size", "32m"}}
	td := newTestDaemon(t, settings...)
	var args []string
	for _, kv := range settings {
		args = append(args, "--option", kv[0], kv[1])
	}
	ref := storetest.StartDaemonWith(t, []string{"nix-daemon"}, append([]string{"--option", "sandbox", "true"}, args...))
	refEnv := nixDaemonClientEnv(ref)
	for attr, want := range map[string]string{
		"x86_64": "personality 00060000\nshm 32768k\n",
		"i686":   "personality 00060008\nshm 32768k\n",
	} {
		ours, theirs := runNix(td.nixEnv(), "nix-build", "--no-out-link", file, "-A", attr), runNix(refEnv, "nix-build", "--no-out-link", file, "-A", attr)
		if ours.code != 0 {
			if strings.Contains(ours.stderr, "setting up the build environment") {
				t.Skipf("the kernel refuses the sandbox: %s", ours.stderr)
			}
			t.Fatalf("%s: nix-build: %+v", attr, ours)
		}
		if theirs.code != 0 {
			t.Skipf("Nix's own sandbox does not work here: %s", theirs.stderr)
		}
		got, _ := os.ReadFile(filepath.Join(td.cfg.Root, ours.stdout))
		nix, _ := os.ReadFile(filepath.Join(ref.Root, theirs.stdout))
		if string(got) != string(nix) || string(got) != want {
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
	ref := storetest.StartDaemonWith(t, []string{"nix-daemon"}, []string{"--option", "sandbox", "true", "--option", "sandbox-paths", "/bin/sh=/bin/busybox"})
	sb := []string{"--option", "sandbox", "true", "--no-out-link", file}
	ours, theirs := runNix(td.nixEnv(), "nix-build", sb...), runNix(nixDaemonClientEnv(ref), "nix-build", sb...)
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
	ref := storetest.StartDaemonWith(t, []string{"nix-daemon"}, []string{"--option", "sandbox", "true", "--option", "sandbox-paths", "/bin/sh=/bin/busybox"})
	for _, c := range []struct {
		salt, want string
		options    []string
	}{
		{"default", "NoNewPrivs: 1\nSeccomp: 2\n", nil},
		{"nofilter", "NoNewPrivs: 0\nSeccomp: 0\n", []string{"--option", "filter-syscalls", "false"}},
		{"newprivs", "NoNewPrivs: 0\nSeccomp: 2\n", []string{"--option", "allow-new-privileges", "true"}},
	} {
		args := append([]string{"--option", "sandbox", "true", "--no-out-link", file, "--argstr", "salt", c.salt}, c.options...)
		ours, theirs := runNix(td.nixEnv(), "nix-build", args...), runNix(nixDaemonClientEnv(ref), "nix-build", args...)
		if ours.code != 0 || theirs.code != 0 {
			t.Fatalf("%s: nix-build exits %d:\n%s\nwith nix-daemon %d:\n%s", c.salt, ours.code, ours.stderr, theirs.code, theirs.stderr)
		}
		got, _ := os.ReadFile(filepath.Join(td.cfg.Root, ours.stdout))
		nix, _ := os.ReadFile(filepath.Join(ref.Root, theirs.stdout))
		if string(got) != string(nix) || string(got) != c.want {
			t.Errorf("%s: the builder had %q, under nix-daemon %q, want %q", c.salt, got, nix, c.want)
		}
	}
}
