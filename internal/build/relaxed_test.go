package build

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"cairn/internal/derivation"
	"cairn/internal/nixhash"
	"cairn/internal/storepath"
)

// TestSandboxModes: sandbox = true refuses a derivation with __noChroot (as
// Nix 2.8 does), and sandbox = relaxed builds it, and fixed-output
// derivations, on the host and everything else in the sandbox. A marker
// file outside the store tells where a builder ran.
func TestSandboxModes(t *testing.T) {
	requireSandbox(t)
	modes := buildModes()
	st, b, opts := buildMode{name: modes[len(modes)-1].name, sandbox: true}.setup(t, Config{})
	marker := filepath.Join(filepath.Dir(st.StateDir()), "marker")
	if err := os.WriteFile(marker, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	where := hostPath + "if test -e " + marker + "; then echo host; else echo sandbox; fi > $out"
	plain := addDrv(t, st, "plain", where, nil, nil)
	noChroot := addDrv(t, st, "no-chroot", where, nil, map[string]string{"__noChroot": "1"})
	notSet := addDrv(t, st, "no-chroot-empty", where, nil, map[string]string{"__noChroot": ""})
	fixedOut := "host\n"
	fixed := &derivation.Derivation{
		Name:     "fixed",
		Outputs:  map[string]derivation.Output{"out": derivation.FixedOutput(storepath.StorePath{}, nixhash.ContentAddress{Method: nixhash.Flat, Hash: nixhash.Sum(nixhash.SHA256, []byte(fixedOut))})},
		Platform: "x86_64-linux",
		Builder:  "/bin/sh",
		Args:     []string{"-c", where},
		Env:      map[string]string{},
	}
	fixedPath, err := AddDerivation(context.Background(), st, fixed)
	if err != nil {
		t.Fatal(err)
	}
	build := func(drv storepath.StorePath, relaxed bool) (string, error) {
		t.Helper()
		o := opts
		o.SandboxRelaxed = relaxed
		res, err := b.Build(context.Background(), []Target{{Drv: drv}}, o, nil)
		if err != nil {
			t.Fatal(err)
		}
		if res[0].Status != Built {
			return "", res[0].Err
		}
		return strings.TrimSpace(readOut(t, st, res[0].Outputs["out"])), nil
	}
	_, err = build(noChroot, false)
	if want := "derivation '" + noChroot.String() + "' has '__noChroot' set, but that's not allowed when 'sandbox' is 'true'"; err == nil || err.Error() != want {
		t.Errorf("__noChroot with sandbox = true: %v, want %q", err, want)
	}
	for _, c := range []struct {
		drv  storepath.StorePath
		want string
	}{{plain, "sandbox"}, {notSet, "sandbox"}, {noChroot, "host"}, {fixedPath, "host"}} {
		if got, err := build(c.drv, true); err != nil || got != c.want {
			t.Errorf("%s with sandbox = relaxed: built %q (%v), want %q", c.drv, got, err, c.want)
		}
	}
}

// TestHostPrivileges: on the host with build users, allow-new-privileges
// runs the builder as the build user with the seccomp filter and without
// no_new_privs (init installs the filter as root and then takes the user's
// ids), and filter-syscalls = false without either.
func TestHostPrivileges(t *testing.T) {
	_, uids := pool(t)
	st, b, opts := buildMode{name: "pool-host", users: true}.setup(t, Config{})
	script := hostPath + `echo $(id -u) > $out; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status | tr -s '\t ' ' ' >> $out`
	for _, c := range []struct {
		name          string
		newPrivs, off bool
		want          string
	}{
		{"default", false, false, "NoNewPrivs: 1\nSeccomp: 2"},
		{"new-privileges", true, false, "NoNewPrivs: 0\nSeccomp: 2"},
		{"no-filter", false, true, "NoNewPrivs: 0\nSeccomp: 0"},
	} {
		o := opts
		o.AllowNewPrivileges, o.NoSyscallFilter = c.newPrivs, c.off
		res, err := b.Build(context.Background(), []Target{{Drv: addDrv(t, st, "privs-"+c.name, script, nil, nil)}}, o, nil)
		if err != nil || res[0].Status != Built {
			t.Fatalf("%s: %v %v", c.name, err, res[0].Err)
		}
		uid, rest, _ := strings.Cut(strings.TrimSpace(readOut(t, st, res[0].Outputs["out"])), "\n")
		if rest != c.want || !slices.Contains(uids, atoi(uid)) {
			t.Errorf("%s: uid %s, %q; want a pool uid %v, %q", c.name, uid, rest, uids, c.want)
		}
	}
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		return -1
	}
	return n
}
