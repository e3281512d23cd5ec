package daemon

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"cairn/internal/store/storetest"
	"cairn/internal/testutil/nixtest"
)

const hookNix = `
let mk = name: script: derivation {
  inherit name; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" script ]; outputs = [ "out" "dev" ];
}; in {
  ok = mk "hooked" "echo a > $out; echo b > $dev";
  other = mk "hooked-too" "echo c > $out; echo d > $dev";
}
`

// TestNixPostBuildHook: Nix 2.8's nix-build through cairn daemon and through
// nix-daemon, both with a post-build-hook: the hook sees the same DRV_PATH
// (and the outputs in OUT_PATHS), and a failing hook fails nix-build the same
// way.
func TestNixPostBuildHook(t *testing.T) {
	nixtest.Require(t, "nix-build", "nix-daemon")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	file := filepath.Join(t.TempDir(), "hook.nix")
	os.WriteFile(file, []byte(hookNix), 0o644)
	hook := func(dir string) (script, seen, exit string) {
		seen, exit = filepath.Join(dir, "seen"), filepath.Join(dir, "exit")
		script = filepath.Join(dir, "hook")
		os.WriteFile(exit, []byte("0"), 0o644)
		os.WriteFile(script, []byte("#!/bin/sh\necho \"$DRV_PATH|$OUT_PATHS\" >> "+seen+"\n"+
			"printf '%s\\n' \"$NIX_CONFIG\" | grep -E '^(sandbox-paths|post-build-hook|keep-outputs) = ' >> "+seen+".config\n"+
			"echo hook says hello\nexit $(cat "+exit+")\n"), 0o755)
		return
	}
	ourHook, ourSeen, ourExit := hook(t.TempDir())
	theirHook, theirSeen, theirExit := hook(t.TempDir())
	td := newTestDaemon(t, [2]string{"sandbox-paths", "/bin/sh=/bin/busybox"}, [2]string{"post-build-hook", ourHook})
	ref := storetest.StartDaemonWith(t, []string{"nix-daemon"}, []string{"--option", "sandbox", "true",
		"--option", "sandbox-paths", "/bin/sh=/bin/busybox", "--option", "post-build-hook", theirHook})
	refEnv := nixDaemonClientEnv(ref)

	ours, theirs := runNix(td.nixEnv(), "nix-build", "--no-out-link", file, "-A", "ok"), runNix(refEnv, "nix-build", "--no-out-link", file, "-A", "ok")
	if ours.code != 0 {
		if strings.Contains(ours.stderr, "setting up the build environment") {
			t.Skipf("the kernel refuses the sandbox: %s", ours.stderr)
		}
		t.Fatalf("nix-build: %+v", ours)
	}
	if theirs.code != 0 {
		t.Skipf("Nix's own sandbox does not work here: %s", theirs.stderr)
	}
	// Nix 2.8 passes OUT_PATHS empty (fixed in 2.9, nix#6459, "Fix passing
	// $OUT_PATHS to the post-build hook"); Cairn passes the outputs, as
	// the manual says and later releases do.
	a, _ := os.ReadFile(ourSeen)
	b, _ := os.ReadFile(theirSeen)
	drvA, outsA, _ := strings.Cut(strings.TrimSpace(string(a)), "|")
	drvB, _, _ := strings.Cut(strings.TrimSpace(string(b)), "|")
	if drvA != drvB || drvA == "" {
		t.Errorf("the hook saw DRV_PATH %q, under nix-daemon %q", drvA, drvB)
	}
	outs := strings.Fields(runNix(td.nixEnv(), "nix-store", "-q", "--outputs", drvA).stdout)
	slices.Sort(outs)
	if want := strings.Join(outs, " "); outsA != want || len(outs) != 2 {
		t.Errorf("the hook saw OUT_PATHS %q, want %q", outsA, want)
	}
	// NIX_CONFIG holds the daemon's settings, as nix.conf lines.
	ca, _ := os.ReadFile(ourSeen + ".config")
	cb, _ := os.ReadFile(theirSeen + ".config")
	if strings.ReplaceAll(string(ca), ourHook, "HOOK") != strings.ReplaceAll(string(cb), theirHook, "HOOK") || len(ca) == 0 {
		t.Errorf("the hook's NIX_CONFIG had\n%s\nunder nix-daemon\n%s", ca, cb)
	}
	os.WriteFile(ourExit, []byte("3"), 0o644)
	os.WriteFile(theirExit, []byte("3"), 0o644)
	ours, theirs = runNix(td.nixEnv(), "nix-build", "--no-out-link", file, "-A", "other"), runNix(refEnv, "nix-build", "--no-out-link", file, "-A", "other")
	if ours.code != theirs.code || ours.code == 0 {
		t.Errorf("a failing hook: nix-build exits %d, with nix-daemon %d\n%s\n%s", ours.code, theirs.code, ours.stderr, theirs.stderr)
	}
	want := "program '" + theirHook + "' failed with exit code 3"
	if !strings.Contains(theirs.stderr, want) || !strings.Contains(ours.stderr, "program '"+ourHook+"' failed with exit code 3") {
		t.Errorf("a failing hook's message:\n%s\nnix-daemon:\n%s", ours.stderr, theirs.stderr)
	}
}

const preHookNix = `
let mk = name: derivation {
  inherit name; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "read x < /extra/file; echo \"$x\" > $out; test -e /hooked-store-path && echo seen >> $out; true" ];
}; in { ok = mk "pre-ok"; bogus = mk "pre-bogus"; fail = mk "pre-fail"; }
`

// TestNixPreBuildHook: Nix 2.8's nix-build through cairn daemon and through
// nix-daemon, both with a pre-build-hook that names an extra sandbox path:
// the builder sees it in both, the hook gets the same derivation path, and a
// hook that prints an unknown command or fails fails the build the same way.
func TestNixPreBuildHook(t *testing.T) {
	nixtest.Require(t, "nix-build", "nix-daemon")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	file := filepath.Join(t.TempDir(), "prehook.nix")
	os.WriteFile(file, []byte(preHookNix), 0o644)
	extra := filepath.Join(t.TempDir(), "extra")
	os.Mkdir(extra, 0o755)
	os.WriteFile(filepath.Join(extra, "file"), []byte("from the hook\n"), 0o644)
	hook := func(dir string) (script, seen string) {
		seen, script = filepath.Join(dir, "seen"), filepath.Join(dir, "hook")
		os.WriteFile(script, []byte("#!/bin/sh\necho \"$1\" >> "+seen+"\n"+
			"case $1 in\n*-pre-bogus.drv) echo bogus;;\n*-pre-fail.drv) exit 3;;\n"+
			"*) printf 'extra-sandbox-paths\\n/extra="+extra+"\\n\\nextra-chroot-dirs\\n/hooked-store-path="+extra+"/file\\n';;\nesac\n"), 0o755)
		return
	}
	ourHook, ourSeen := hook(t.TempDir())
	theirHook, theirSeen := hook(t.TempDir())
	td := newTestDaemon(t, [2]string{"sandbox-paths", "/bin/sh=/bin/busybox"}, [2]string{"pre-build-hook", ourHook})
	ref, refEnv := sandboxedRef(t, "--option", "pre-build-hook", theirHook)
	_, got, want := buildBoth(t, td, ref, refEnv, "--no-out-link", file, "-A", "ok")
	if got != want || got != "from the hook\nseen\n" {
		t.Errorf("the builder wrote %q, under nix-daemon %q", got, want)
	}
	a, _ := os.ReadFile(ourSeen)
	b, _ := os.ReadFile(theirSeen)
	if string(a) != string(b) || !strings.HasSuffix(strings.TrimSpace(string(a)), "-pre-ok.drv") {
		t.Errorf("the hook was given %q, under nix-daemon %q", a, b)
	}
	for attr, msg := range map[string]string{"bogus": "unknown pre-build hook command 'bogus'", "fail": "' failed with exit code 3"} {
		ours, theirs := runNix(td.nixEnv(), "nix-build", "--no-out-link", file, "-A", attr), runNix(refEnv, "nix-build", "--no-out-link", file, "-A", attr)
		if ours.code != theirs.code || ours.code == 0 || !strings.Contains(ours.stderr, msg) || !strings.Contains(theirs.stderr, msg) {
			t.Errorf("%s: nix-build exits %d, with nix-daemon %d\n%s\nnix-daemon:\n%s", attr, ours.code, theirs.code, ours.stderr, theirs.stderr)
		}
	}
}

const diffHookNix = `
let mk = name: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "read u < /proc/sys/kernel/random/uuid; echo $u > $out" ]; };
in { rand = mk "diff-rand"; }
`

// TestNixDiffHook: --check of a non-deterministic derivation with
// run-diff-hook and a diff-hook, through cairn daemon and nix-daemon 2.8:
// the hook gets the same output paths and derivation, runs as a build user,
// its output reaches the client, the new output stays at OUT.check, and
// nix-build fails the same way.
func TestNixDiffHook(t *testing.T) {
	nixtest.Require(t, "nix-build", "nix-daemon")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	file := filepath.Join(t.TempDir(), "diff.nix")
	os.WriteFile(file, []byte(diffHookNix), 0o644)
	hook := func() (script, seen string) {
		dir := t.TempDir()
		os.Chmod(dir, 0o777) // the hook runs as a build user
		os.Chmod(filepath.Dir(dir), 0o755)
		seen, script = filepath.Join(dir, "seen"), filepath.Join(dir, "hook")
		os.WriteFile(script, []byte("#!/bin/sh\necho \"$1 $2 $3 $(pwd)\" > "+seen+"\nid -u >> "+seen+"\necho the diff hook says hi\n"), 0o755)
		return
	}
	ourHook, ourSeen := hook()
	theirHook, theirSeen := hook()
	td := newTestDaemon(t, [2]string{"sandbox-paths", "/bin/sh=/bin/busybox"}, [2]string{"diff-hook", ourHook}, [2]string{"run-diff-hook", "true"})
	ref := storetest.StartDaemonWith(t, []string{"nix-daemon"}, []string{"--option", "sandbox", "true",
		"--option", "sandbox-paths", "/bin/sh=/bin/busybox", "--option", "diff-hook", theirHook, "--option", "run-diff-hook", "true",
		"--option", "build-users-group", td.srv.Settings.Get("build-users-group")})
	refEnv := nixDaemonClientEnv(ref)
	args := []string{"--option", "sandbox", "true", "--no-out-link", file, "-A", "rand"}
	out := runNix(td.nixEnv(), "nix-build", args...)
	if out.code != 0 {
		t.Fatalf("nix-build: %+v", out)
	}
	if r := runNix(refEnv, "nix-build", args...); r.code != 0 || r.stdout != out.stdout {
		t.Fatalf("nix-build with nix-daemon: %+v", r)
	}
	check := append(args, "--check")
	ours, theirs := runNix(td.nixEnv(), "nix-build", check...), runNix(refEnv, "nix-build", check...)
	norm := func(r nixRun, root string) string { return strings.ReplaceAll(stripANSI(r.stderr), root, "ROOT") }
	if ours.code != theirs.code || ours.code == 0 || norm(ours, td.cfg.Root) != norm(theirs, ref.Root) ||
		!strings.Contains(ours.stderr, "the diff hook says hi") {
		t.Errorf("nix-build --check exits %d:\n%s\nwith nix-daemon %d:\n%s", ours.code, ours.stderr, theirs.code, theirs.stderr)
	}
	a, _ := os.ReadFile(ourSeen)
	b, _ := os.ReadFile(theirSeen)
	la, lb := strings.Split(strings.TrimSpace(string(a)), "\n"), strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(la) != 2 || len(lb) != 2 {
		t.Fatalf("the hook saw %q, under nix-daemon %q", a, b)
	}
	// Arguments: the output, its .check copy (a real path), the .drv, the
	// build dir (which differs); the working dir "/".
	fa, fb := strings.Fields(la[0]), strings.Fields(lb[0])
	fa[1], fb[1] = strings.TrimPrefix(fa[1], td.cfg.Root), strings.TrimPrefix(fb[1], ref.Root)
	if len(fa) != 4 || len(fb) != 4 || !slices.Equal(fa[:3], fb[:3]) || fa[3] != "/" || fb[3] != "/" || fa[1] != out.stdout+".check" {
		t.Errorf("the hook got %q, under nix-daemon %q", la[0], lb[0])
	}
	if (la[1] == "0") != (lb[1] == "0") || (os.Geteuid() == 0 && td.srv.Settings.Get("build-users-group") != "" && la[1] == "0") {
		t.Errorf("the hook ran as uid %s, under nix-daemon %s; want a build user's", la[1], lb[1])
	}
	if _, err := os.Stat(filepath.Join(td.cfg.Root, out.stdout+".check")); err != nil {
		t.Errorf("no .check output: %v", err)
	}
}
