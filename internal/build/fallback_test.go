package build

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// denyNamespacesEnv makes this test binary refuse itself (and everything it
// starts) every clone or unshare with a namespace flag (EPERM), and clone3
// (ENOSYS, so that C libraries fall back to clone), as Docker's default
// seccomp profile does.
const denyNamespacesEnv = "CAIRN_TEST_DENY_NAMESPACES"

// denyNamespaces installs that filter on every thread of the process.
func denyNamespaces() error {
	const (
		nsFlags = unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWUSER |
			unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWCGROUP
		allow = unix.SECCOMP_RET_ALLOW
		deny  = unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
		nosys = unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)
	)
	prog := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 0},                        // 0: the syscall
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 7, K: unix.SYS_CLONE3},  // 1: → 9
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 2, K: unix.SYS_UNSHARE}, // 2: → 5
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 1, K: unix.SYS_CLONE},   // 3: → 5
		{Code: unix.BPF_RET | unix.BPF_K, K: allow},                                  // 4
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 16},                       // 5: flags (args[0], low half)
		{Code: unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K, Jt: 0, Jf: 1, K: nsFlags},  // 6: → 7 or 8
		{Code: unix.BPF_RET | unix.BPF_K, K: deny},                                   // 7
		{Code: unix.BPF_RET | unix.BPF_K, K: allow},                                  // 8
		{Code: unix.BPF_RET | unix.BPF_K, K: nosys},                                  // 9
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return err
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	_, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog)))
	runtime.KeepAlive(prog)
	if e != 0 {
		return e
	}
	return nil
}

// TestSandboxFallback: where the kernel refuses the sandbox's namespaces
// (a filter refuses them to a copy of this test binary), sandbox-fallback
// builds on the host, as Nix 2.8 does, and without it the build fails
// setting up its environment.
func TestSandboxFallback(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("the test's filter is for amd64")
	}
	requireSandbox(t)
	cmd := exec.Command(os.Args[0], "-test.run", "^TestSandboxFallbackRefused$", "-test.v")
	cmd.Env = append(os.Environ(), denyNamespacesEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestSandboxFallbackRefused") {
		t.Fatalf("%v\n%s", err, out)
	}
}

// TestSandboxFallbackRefused is TestSandboxFallback's part that runs with
// the namespaces refused.
func TestSandboxFallbackRefused(t *testing.T) {
	if os.Getenv(denyNamespacesEnv) == "" {
		t.Skip("run by TestSandboxFallback")
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	st := hostStore(t, "")
	b, err := NewWithConfig(st, Config{NoCgroups: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	marker := filepath.Join(filepath.Dir(st.StateDir()), "marker")
	os.WriteFile(marker, []byte("x"), 0o644)
	where := hostPath + "if test -e " + marker + "; then echo host; else echo sandbox; fi > $out"
	opts := testOptions()
	opts.Sandbox, opts.SandboxFallback = true, false
	res, err := b.Build(context.Background(), []Target{{Drv: addDrv(t, st, "strict", where, nil, nil)}}, opts, nil)
	if err != nil || res[0].Status == Built || !strings.Contains(res[0].Err.Error(), "while setting up the build environment") {
		t.Errorf("without sandbox-fallback: %v %+v", err, res[0])
	}
	opts.SandboxFallback = true
	res, err = b.Build(context.Background(), []Target{{Drv: addDrv(t, st, "fallback", where, nil, nil)}}, opts, nil)
	if err != nil || res[0].Status != Built {
		t.Fatalf("with sandbox-fallback: %v %+v", err, res[0])
	}
	if got := readOut(t, st, res[0].Outputs["out"]); got != "host\n" || res[0].TimesBuilt != 1 {
		t.Errorf("with sandbox-fallback: built %q, %d times; want on the host, once", got, res[0].TimesBuilt)
	}
}
