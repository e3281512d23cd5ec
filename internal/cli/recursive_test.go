package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// TestRecursiveAgainstNix: cairn build of a recursive-nix derivation on a
// local store, no daemon around, as nix-build builds it: the builder's Nix
// adds a path through the build's own daemon and sees it, and the output
// refers to it.
func TestRecursiveAgainstNix(t *testing.T) {
	dir, bin, file, cmds := againstNix(t, "recursive.nix", `derivation {
  name = "cli-recursive"; system = builtins.currentSystem; builder = "/bin/sh";
  requiredSystemFeatures = [ "recursive-nix" ];
  PATH = "/usr/bin:/bin";
  args = [ "-c" "echo from-inside > $TMPDIR/f; p=$(nix-store --add $TMPDIR/f); echo $p $(cat $p) > $out" ];
}`,
		"experimental-features = nix-command recursive-nix\nsandbox-paths = /bin/sh=/bin/busybox /usr /lib=/usr/lib /lib64=/usr/lib64\n"+
			"system-features = recursive-nix benchmark big-parallel nixos-test\n", "nix-build", "nix-instantiate", "nix-store")
	env := cmds.env
	nixStore, cairnStore := "local?root="+filepath.Join(dir, "nix"), "local?root="+filepath.Join(dir, "cairn-store")
	want := cmds.must("nix-build", "--store", nixStore, "--no-out-link", file)
	drv := cmds.must("nix-instantiate", "--store", cairnStore, file)
	got := cmds.must(bin, "--store", cairnStore, "build", drv)
	if got != want {
		t.Fatalf("cairn build printed %q, nix-build %q", got, want)
	}
	read := func(store string) string {
		return cmds.must("nix", "store", "cat", "--store", store, got) + "\n" + cmds.must("nix-store", "--store", store, "-q", "--references", got)
	}
	if a, b := read(cairnStore), read(nixStore); a != b || !strings.Contains(a, "from-inside") {
		t.Errorf("cairn build made:\n%s\nnix-build:\n%s", a, b)
	}

	// A nested build: its activity and its log reach the outer command's
	// stderr, as nix-build's own recursive daemon logs through its logger.
	nested := filepath.Join(dir, "nested.nix")
	os.WriteFile(nested, []byte(`derivation {
  name = "cli-nested"; system = builtins.currentSystem; builder = "/bin/sh";
  requiredSystemFeatures = [ "recursive-nix" ];
  PATH = "/usr/bin:/bin";
  args = [ "-c" ''
    p=$(nix-build --no-out-link -E 'derivation { name = "cli-inner"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo inner log line; echo inner > $out" ]; }' 2>$TMPDIR/log) || cat $TMPDIR/log
    cat $p > $out
  '' ];
}`), 0o644)
	wantOut, wantErr, wantCode := cmds.run("nix-build", "--store", nixStore, "--no-out-link", nested)
	ndrv := cmds.must("nix-instantiate", "--store", cairnStore, nested)
	gotOut, gotErr, gotCode := cmds.run(bin, "--store", cairnStore, "build", ndrv)
	if gotOut != wantOut || gotErr != wantErr || gotCode != wantCode || !strings.Contains(gotErr, "inner log line") {
		t.Errorf("nested build: cairn build printed %q, %q, exit %d; nix-build %q, %q, exit %d", gotOut, gotErr, gotCode, wantOut, wantErr, wantCode)
	}

	// Rootless: the same build by an unprivileged user on a store of its
	// own (the builder maps to it in a user namespace; added files are
	// copied into the sandbox, not linked).
	if os.Getuid() != 0 {
		return
	}
	uid, gid := exampleUser(t)
	home := filepath.Join(dir, "user")
	os.Mkdir(home, 0o755)
	os.Chown(home, uid, gid)
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755)
	asUser := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = append(slices.Clone(env), "HOME="+home)
		cmd.Dir = home
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		out, err := cmd.Output()
		if err != nil {
			var stderr string
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = string(ee.Stderr)
			}
			t.Fatalf("%s as %d: %v\n%s", strings.Join(args, " "), uid, err, stderr)
		}
		return strings.TrimSpace(string(out))
	}
	userStore := "local?root=" + filepath.Join(home, "store")
	drv = asUser("nix-instantiate", "--store", userStore, file)
	if got := asUser(bin, "--store", userStore, "build", drv); got != want {
		t.Fatalf("rootless cairn build printed %q, nix-build %q", got, want)
	}
	if a, b := read(userStore), read(nixStore); a != b {
		t.Errorf("rootless cairn build made:\n%s\nnix-build:\n%s", a, b)
	}
}
