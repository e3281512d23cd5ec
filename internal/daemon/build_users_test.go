package daemon

import (
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"cairn/internal/testutil/nixtest"
	"cairn/internal/testutil/testuser"
)

// testPool is this package's build-users-group (members cairndbld1, 2; not
// shared with other packages' tests, see testuser.EnsurePool).
const testPool = "cairndbld"

// TestNixBuildUsers: a root daemon with build-users-group builds as the
// group's members, as nix-daemon 2.8 does: Nix 2.8's nix-build through
// cairn daemon and Nix 2.8 itself, both with the test pool, give the
// builder the same environment and ids, and the uid locks are Nix's.
func TestNixBuildUsers(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix-build", "nix-instantiate")
	if os.Geteuid() != 0 {
		t.Skip("build users need root")
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	_, uids, err := testuser.EnsurePool(testPool, 2)
	if err != nil {
		t.Skipf("no build users: %v", err)
	}
	td := newTestDaemon(t, [2]string{"sandbox-paths", "/bin/sh=/bin/busybox"}, [2]string{"build-users-group", testPool})
	file := filepath.Join(t.TempDir(), "build.nix")
	if err := os.WriteFile(file, []byte(buildNix), 0o644); err != nil {
		t.Fatal(err)
	}
	env, stderr, err := td.nixOut("nix-build", "--no-out-link", file, "-A", "envdump")
	if err != nil {
		if strings.Contains(stderr, "setting up the build environment") {
			t.Skipf("the kernel refuses the sandbox: %s", stderr)
		}
		t.Fatalf("nix-build envdump: %v\n%s", err, stderr)
	}
	ref := nixtest.NewStore(t)
	refEnv := ref.Run(t, nil, "nix-build", "--option", "build-users-group", testPool, "--option", "sandbox-paths", "/bin/sh=/bin/busybox",
		"--no-out-link", file, "-A", "envdump")
	got, _ := os.ReadFile(filepath.Join(td.cfg.Root, env))
	want, _ := os.ReadFile(filepath.Join(ref.Root, refEnv))
	if string(got) != string(want) {
		t.Errorf("builder environment differs from Nix 2.8's:\n--- cairn\n%s\n--- nix\n%s", got, want)
	}
	// STATE/userpool/<uid>, as Nix's.
	locks, _ := os.ReadDir(filepath.Join(td.cfg.StateDir, "userpool"))
	if len(locks) == 0 {
		t.Errorf("no uid lock in %s", filepath.Join(td.cfg.StateDir, "userpool"))
	}
	for _, l := range locks {
		if uid, err := strconv.Atoi(l.Name()); err != nil || !slices.Contains(uids, uid) {
			t.Errorf("lock %s is not a pool uid's %v", l.Name(), uids)
		}
	}
}

// TestRootDefaultBuildUsers: a root daemon given no build-users-group
// builds as the nixbld users, as nix-daemon 2.8 does by default.
func TestRootDefaultBuildUsers(t *testing.T) {
	nixtest.Require(t, "nix-build")
	if os.Geteuid() != 0 {
		t.Skip("build users need root")
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	grp, err := user.LookupGroup("nixbld")
	if err != nil {
		t.Skip("no nixbld group")
	}
	td := newTestDaemon(t, [2]string{"sandbox-paths", "/bin/sh=/bin/busybox"})
	if g := td.srv.Settings.Get("build-users-group"); g != "nixbld" {
		t.Fatalf("build-users-group = %q as root, want nixbld", g)
	}
	file := filepath.Join(t.TempDir(), "build.nix")
	if err := os.WriteFile(file, []byte(buildNix), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := td.nixOut("nix-build", "--no-out-link", file, "-A", "envdump"); err != nil {
		t.Fatalf("nix-build envdump: %v\n%s", err, stderr)
	}
	locks, _ := os.ReadDir(filepath.Join(td.cfg.StateDir, "userpool"))
	if len(locks) == 0 {
		t.Fatalf("no uid lock in %s: the build did not take a build user", filepath.Join(td.cfg.StateDir, "userpool"))
	}
	for _, l := range locks {
		u, err := user.LookupId(l.Name())
		if err != nil {
			t.Errorf("lock %s: %v", l.Name(), err)
			continue
		}
		if gids, _ := u.GroupIds(); !slices.Contains(gids, grp.Gid) {
			t.Errorf("lock %s: %s is not in nixbld", l.Name(), u.Username)
		}
	}
}
