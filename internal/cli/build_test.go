package cli

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"cairn/internal/build"
	"cairn/internal/testutil/testuser"
)

// cairnBinary builds cmd/cairn once per test into dir.
func cairnBinary(t *testing.T, dir string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the cairn binary")
	}
	bin := filepath.Join(dir, "cairn")
	out, err := exec.Command("go", "build", "-o", bin, "../../cmd/cairn").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// exampleUser returns the uid/gid of the unprivileged user cairnbuild
// (made with useradd if missing), or skips.
func exampleUser(t *testing.T) (int, int) {
	t.Helper()
	uid, gid, err := testuser.Ensure()
	if err != nil {
		t.Skip(err)
	}
	return uid, gid
}

// TestBuildExample runs README's command: cairn build of examples/hello.json
// on a chroot store, as an unprivileged user when the test runs as root.
func TestBuildExample(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	tmp := t.TempDir()
	os.Chmod(tmp, 0o755)
	os.Chmod(filepath.Dir(tmp), 0o755) // t.TempDir's parent is 0700
	bin := cairnBinary(t, tmp)
	data, err := os.ReadFile("../../examples/hello.json")
	if err != nil {
		t.Fatal(err)
	}
	example := filepath.Join(tmp, "hello.json")
	if err := os.WriteFile(example, data, 0o644); err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(tmp, "home")
	if err := os.Mkdir(home, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, string, error) {
		cmd := exec.Command(bin, args...)
		// The default store: a chroot store under $XDG_DATA_HOME/cairn.
		cmd.Env = []string{"HOME=" + home, "XDG_DATA_HOME=" + filepath.Join(home, "data"), "PATH=/usr/bin:/bin", "NIX_CONF_DIR=" + home}
		cmd.Dir = tmp
		if os.Getuid() == 0 {
			uid, gid := exampleUser(t)
			if err := os.Chown(home, uid, gid); err != nil {
				t.Fatal(err)
			}
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		}
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		return stdout.String(), stderr.String(), err
	}
	stdout, stderr, err := run("build", "--store", "local?root="+filepath.Join(home, "data", "cairn"), "--option", "sandbox", "true", "--option", "sandbox-paths", "/bin/sh=/bin/busybox", example)
	if err != nil {
		if strings.Contains(stderr, "setting up the build environment") {
			t.Skipf("the kernel refuses the sandbox: %s", stderr)
		}
		t.Fatalf("cairn build: %v\n%s", err, stderr)
	}
	out := strings.TrimSpace(stdout)
	if !strings.HasPrefix(out, "/nix/store/") || !strings.HasSuffix(out, "-hello") {
		t.Fatalf("cairn build printed %q", stdout)
	}
	script, err := os.ReadFile(filepath.Join(home, "data", "cairn", out, "bin", "hello"))
	if err != nil || !strings.Contains(string(script), `echo "Hello, world!"`) {
		t.Errorf("hello script %q, %v", script, err)
	}
	if !strings.Contains(stderr, "building hello from") {
		t.Errorf("stderr lacks the builder's output:\n%s", stderr)
	}
	// Built again: nothing to do, same path.
	stdout2, _, err := run("build", "--option", "sandbox", "true", "--option", "sandbox-paths", "/bin/sh=/bin/busybox", example)
	if err != nil || strings.TrimSpace(stdout2) != out {
		t.Errorf("second build: %q, %v", stdout2, err)
	}
	logOut, logErr, err := run("log", out)
	if err != nil || !strings.Contains(logOut, "building hello from") {
		t.Errorf("cairn log: %q %v %s", logOut, err, logErr)
	}
	_, stderr, err = run("build", "--option", "sandbox-paths", "/bin/sh=/bin/busybox", "--bogus", example)
	if err == nil || !strings.Contains(stderr, "unrecognised flag '--bogus'") {
		t.Errorf("bad flag: %v %s", err, stderr)
	}
}

func TestParseBuildArgs(t *testing.T) {
	tests := []struct {
		args    []string
		options [][2]string
		targets []string
		mode    build.Mode
		err     string
	}{
		{args: []string{"a.json"}, targets: []string{"a.json"}},
		{args: []string{"-K", "-k", "-j", "3", "--cores", "2", "x"}, options: [][2]string{{"keep-failed", "true"}, {"keep-going", "true"}, {"max-jobs", "3"}, {"cores", "2"}}, targets: []string{"x"}},
		{args: []string{"--option", "sandbox-paths", "/bin/sh=/bin/busybox", "--timeout", "5", "--max-silent-time", "2", "y"}, options: [][2]string{{"sandbox-paths", "/bin/sh=/bin/busybox"}, {"timeout", "5"}, {"max-silent-time", "2"}}, targets: []string{"y"}},
		{args: []string{"--check", "-K", "z"}, options: [][2]string{{"keep-failed", "true"}}, targets: []string{"z"}, mode: build.Check},
		{args: []string{"--repair", "z"}, targets: []string{"z"}, mode: build.Repair},
		{args: []string{"--option", "x"}, err: "requires 2 argument(s)"},
		{args: []string{"--what"}, err: "unrecognised flag"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			a, err := parseBuildArgs(tt.args)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(a.options) != fmt.Sprint(tt.options) || fmt.Sprint(a.targets) != fmt.Sprint(tt.targets) || a.mode != tt.mode {
				t.Errorf("got %v %v %v, want %v %v %v", a.options, a.targets, a.mode, tt.options, tt.targets, tt.mode)
			}
		})
	}
}
