package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"cairn/internal/testutil/nixtest"
)

// rootlessStoreDirNix is a graph whose output names the store dir, and the
// build's uid and host name as the sandbox gives them.
const rootlessStoreDirNix = `
let dep = derivation { name = "dep"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo dep > $out" ]; };
in derivation { name = "top"; system = builtins.currentSystem; builder = "/bin/sh"; inherit dep;
  args = [ "-c" "read x < $dep; echo \"$x $dep $NIX_STORE $(id -u) $(id -g) $(hostname)\" > $out" ]; }
`

// TestRootlessDaemonOtherStoreDir runs `cairn daemon` as an unprivileged user
// on a store dir that is not /nix/store (local?store=…), and Nix 2.8's
// clients, as the same user with NIX_STORE_DIR, build through it: the build
// runs in the rootless sandbox with its inputs and output at that store dir.
func TestRootlessDaemonOtherStoreDir(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix-instantiate")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	tmp := t.TempDir()
	os.Chmod(tmp, 0o755)
	os.Chmod(filepath.Dir(tmp), 0o755)
	bin := cairnBinary(t, tmp)
	var cred *syscall.Credential
	base := filepath.Join(tmp, "x")
	if err := os.Mkdir(base, 0o755); err != nil {
		t.Fatal(err)
	}
	if os.Getuid() == 0 {
		uid, gid := exampleUser(t)
		if err := os.Chown(base, uid, gid); err != nil {
			t.Fatal(err)
		}
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	storeDir := filepath.Join(base, "store")
	sock := filepath.Join(base, "sock")
	env := []string{"HOME=" + base, "PATH=/usr/bin:/bin", "NIX_CONF_DIR=" + base}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	daemon := exec.CommandContext(ctx, bin, "daemon", "--store",
		fmt.Sprintf("local?store=%s&state=%s&log=%s", storeDir, filepath.Join(base, "state"), filepath.Join(base, "log")),
		"--option", "sandbox", "true", "--option", "sandbox-paths", "/bin/sh=/bin/busybox")
	daemon.Env = append(env, "NIX_DAEMON_SOCKET_PATH="+sock)
	daemon.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	var daemonLog bytes.Buffer
	daemon.Stdout, daemon.Stderr = &daemonLog, &daemonLog
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); daemon.Wait() }()
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i == 200 {
			t.Fatalf("no socket after 10 s:\n%s", daemonLog.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	expr := filepath.Join(base, "top.nix")
	if err := os.WriteFile(expr, []byte(rootlessStoreDirNix), 0o644); err != nil {
		t.Fatal(err)
	}
	nix := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Env = append(nixtest.Env(), append(env, "NIX_REMOTE=unix://"+sock, "NIX_STORE_DIR="+storeDir)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			if strings.Contains(stderr.String(), "setting up the build environment") {
				t.Skipf("the kernel refuses the sandbox: %s", stderr.String())
			}
			t.Fatalf("%s %s: %v\n%s\ndaemon:\n%s", name, strings.Join(args, " "), err, stderr.String(), daemonLog.String())
		}
		return strings.TrimSpace(string(out))
	}
	drv := nix("nix-instantiate", expr)
	if !strings.HasPrefix(drv, storeDir+"/") || !strings.HasSuffix(drv, "-top.drv") {
		t.Fatalf("derivation %s", drv)
	}
	out := nix("nix-store", "-r", drv)
	dep := nix("nix-store", "-q", "--references", out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("dep %s %s 1000 100 localhost\n", dep, storeDir); string(got) != want {
		t.Errorf("output %q, want %q", got, want)
	}
	if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o444 {
		t.Errorf("output mode %v, %v", fi.Mode(), err)
	}
}
