//go:build linux

package sandbox_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"cairn/internal/sandbox"
)

// TestInitBinary runs the probe with cmd/cairn-sandbox-init as init: the
// small binary sets up the same sandbox as cairn itself.
func TestInitBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds cmd/cairn-sandbox-init")
	}
	bin := filepath.Join(t.TempDir(), sandbox.InitBinary)
	out, err := exec.Command("go", "build", "-o", bin, "cairn/cmd/cairn-sandbox-init").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	os.Chmod(filepath.Dir(bin), 0o755)
	saved, savedArgs := sandbox.InitPath, sandbox.InitArgs
	sandbox.InitPath, sandbox.InitArgs = bin, []string{sandbox.InitBinary}
	defer func() { sandbox.InitPath, sandbox.InitArgs = saved, savedArgs }()
	probePooled(t, 2)

	// The spares were that binary, cloned by a spawner of that binary.
	pool := &sandbox.Pool{}
	defer pool.Close()
	runPooled(t, pool, newFixture(t, modes()[0], "/bin/busybox", "true"), 0)
	waitSpare(t)
	spares := initsOf(t)
	for _, p := range spares {
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.Pid)); err != nil || exe != bin {
			t.Errorf("spare init %d runs %q (%v), want %s", p.Pid, exe, err, bin)
		}
	}
	// By hand it refuses to run.
	if out, err := exec.Command(bin).CombinedOutput(); err == nil {
		t.Errorf("%s by hand: no error (%s)", bin, out)
	}
}

// TestFindInit: the init binary next to the executable is taken only when
// nobody but its owner (root or this user) may write it.
func TestFindInit(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exe, _ = filepath.EvalSymlinks(exe)
	path := filepath.Join(filepath.Dir(exe), sandbox.InitBinary)
	if _, err := os.Lstat(path); err == nil {
		t.Skipf("%s exists already", path)
	}
	if err := os.WriteFile(path, []byte("#!/bin/false\n"), 0o755); err != nil {
		t.Skipf("cannot write next to the test binary: %v", err)
	}
	defer os.Remove(path)
	saved, savedArgs := sandbox.InitPath, sandbox.InitArgs
	defer func() { sandbox.InitPath, sandbox.InitArgs = saved, savedArgs }()

	os.Chmod(path, 0o775)
	if got := sandbox.FindInit(); got != "" || sandbox.InitPath != saved {
		t.Errorf("a group-writable init binary was taken: %q", got)
	}
	os.Chmod(path, 0o644)
	if got := sandbox.FindInit(); got != "" {
		t.Errorf("a non-executable init binary was taken: %q", got)
	}
	os.Chmod(path, 0o755)
	if got := sandbox.FindInit(); got != path || sandbox.InitPath != path {
		t.Errorf("FindInit = %q (InitPath %q), want %q", got, sandbox.InitPath, path)
	}
}
