//go:build linux

package sandbox_test

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"cairn/internal/sandbox"
	"cairn/internal/testutil/testuser"
)

// The test binary is also the sandbox's init (Start re-executes it with
// CAIRN_SANDBOX_INIT set) and the probe that runs inside.
func TestMain(m *testing.M) {
	if sandbox.IsInit() {
		err := sandbox.Init()
		fmt.Fprintln(os.Stderr, err)
		os.Exit(125)
	}
	switch os.Getenv("CAIRN_SANDBOX_TEST") {
	case "probe":
		os.Exit(probe())
	case "net":
		os.Exit(netProbe())
	}
	if bin := os.Getenv("CAIRN_SANDBOX_INIT_BINARY"); bin != "" {
		// Run init from a cairn binary (`cairn sandbox-init`) instead of
		// this test binary, e.g. to benchmark the real thing.
		sandbox.InitPath = bin
	}
	code := m.Run()
	if probeDir != "" {
		os.RemoveAll(probeDir)
	}
	os.Exit(code)
}

var (
	probeOnce sync.Once
	probeDir  string
	probeErr  error
	dynamic   bool
)

// probeBinary is a copy of the test binary any user can read: the probe
// bound into the sandbox. (Binding /proc/self/exe does not work: init's exe
// is a mount of the parent's mount namespace, which open_tree refuses.)
func probeBinary(t testing.TB) string {
	probeOnce.Do(func() {
		dir, err := os.MkdirTemp("", "cairn-sandbox-probe-")
		if err != nil {
			probeErr = err
			return
		}
		probeDir = dir
		if err := os.Chmod(dir, 0o755); err != nil {
			probeErr = err
			return
		}
		data, err := os.ReadFile("/proc/self/exe")
		if err != nil {
			probeErr = err
			return
		}
		probeErr = os.WriteFile(filepath.Join(dir, "probe"), data, 0o755)
		if f, err := elf.NewFile(bytes.NewReader(data)); err == nil {
			for _, p := range f.Progs {
				dynamic = dynamic || p.Type == elf.PT_INTERP
			}
		}
	})
	if probeErr != nil {
		t.Fatalf("copy the test binary: %v", probeErr)
	}
	if dynamic {
		t.Skip("the test binary is dynamically linked (-race or cgo): it cannot run as the probe in a root without a libc")
	}
	return filepath.Join(probeDir, "probe")
}

// A mode is how the build gets its identity.
type mode struct {
	name      string
	userNS    bool
	hostUID   int // the build's uid/gid as the host sees them
	hostGID   int
	setgroups bool
}

// modes lists the identities this process can test: as root, no user
// namespace (host ids 1000/100), a user namespace mapping root's own ids, and
// one mapping a build-user pool id; not as root, the rootless one.
func modes() []mode {
	uid, gid := os.Getuid(), os.Getgid()
	if uid != 0 {
		return []mode{{name: "rootless", userNS: true, hostUID: uid, hostGID: gid}}
	}
	return []mode{
		{name: "root", hostUID: 1000, hostGID: 100},
		{name: "userns", userNS: true, hostUID: 0, hostGID: 0},
		{name: "pool", userNS: true, hostUID: 30001, hostGID: 30001, setgroups: true},
	}
}

const (
	passwd = "root:x:0:0:Nix build user:/build:/noshell\n" +
		"nixbld:x:1000:100:Nix build user:/build:/noshell\n" +
		"nobody:x:65534:65534:Nobody:/:/noshell\n"
	group = "root:x:0:\nnixbld:!:100:\nnogroup:x:65534:\n"
	hosts = "127.0.0.1 localhost\n::1 localhost\n"
)

type fixture struct {
	spec   *sandbox.Spec
	log    *bytes.Buffer
	base   string
	marker string // a file in the host's /tmp
}

// newFixture makes a Spec like the one a build gets: inputs bound read-only,
// a build dir, /tmp, the /etc files.
func newFixture(t testing.TB, m mode, args ...string) *fixture {
	t.Helper()
	base := t.TempDir()
	dirs := map[string]string{}
	for _, d := range []string{"root", "build", "input"} {
		dirs[d] = filepath.Join(base, d)
		if err := os.Mkdir(dirs[d], 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dirs["input"], "file"), []byte("input\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dirs["input"], 0o755)
	if os.Getuid() == 0 {
		// The build's user owns its build dir, and its inputs too, so that
		// only the read-only mount keeps it from writing them.
		for _, p := range []string{dirs["build"], dirs["input"], filepath.Join(dirs["input"], "file")} {
			if err := os.Chown(p, m.hostUID, m.hostGID); err != nil {
				t.Fatal(err)
			}
		}
	}
	marker, err := os.CreateTemp("", "cairn-sandbox-marker-") // the host's /tmp, unless TMPDIR says otherwise
	if err != nil {
		t.Fatal(err)
	}
	marker.Close()
	t.Cleanup(func() { os.Remove(marker.Name()) })

	f := &fixture{log: &bytes.Buffer{}, base: base, marker: marker.Name()}
	f.spec = &sandbox.Spec{
		Root: dirs["root"],
		Binds: []sandbox.Bind{
			{Source: "/bin/busybox", Target: "/bin/busybox"},
			{Source: probeBinary(t), Target: "/probe"},
			{Source: dirs["input"], Target: "/input"},
			{Source: "/nonexistent-cairn-source", Target: "/opt/missing", Optional: true},
		},
		Tmpfs:          []sandbox.Tmpfs{{Target: "/tmp"}},
		BuildDir:       dirs["build"],
		BuildDirTarget: "/build",
		Files: []sandbox.File{
			{Path: "/etc/passwd", Content: []byte(passwd)},
			{Path: "/etc/group", Content: []byte(group)},
			{Path: "/etc/hosts", Content: []byte(hosts)},
		},
		UID: 1000,
		GID: 100,
		Command: sandbox.Command{
			Path: "/probe",
			Args: []string{"probe"},
			Env:  []string{"CAIRN_SANDBOX_TEST=probe", "HOST_MARKER=" + marker.Name(), "PATH=/path-not-set", "HOME=/homeless-shelter", "TMPDIR=/build"},
			Dir:  "/build",
		},
		Log: f.log,
	}
	if len(args) > 0 {
		f.spec.Command = sandbox.Command{Path: args[0], Args: args, Env: []string{"PATH=/bin"}, Dir: "/build"}
	}
	if m.userNS {
		f.spec.UIDMap = []sandbox.IDMap{{Inside: 1000, Outside: m.hostUID, Count: 1}}
		f.spec.GIDMap = []sandbox.IDMap{{Inside: 100, Outside: m.hostGID, Count: 1}}
		f.spec.Setgroups = m.setgroups
	} else {
		f.spec.UID, f.spec.GID = m.hostUID, m.hostGID
	}
	return f
}

// start starts the fixture, skipping when the kernel refuses namespaces.
func (f *fixture) start(t testing.TB, ctx context.Context) *sandbox.Process {
	t.Helper()
	p, err := sandbox.Start(ctx, f.spec)
	if err != nil {
		if strings.Contains(err.Error(), "start init") && (errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.ENOSPC)) {
			t.Skipf("the kernel refuses the namespaces: %v", err)
		}
		t.Fatalf("Start: %v\nlog:\n%s", err, f.log)
	}
	return p
}

func TestSandbox(t *testing.T) {
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			f := newFixture(t, m)
			p := f.start(t, context.Background())
			st, err := p.Wait()
			if err != nil || !st.Success() {
				t.Fatalf("Wait: %v, %v\nlog:\n%s", st, err, f.log)
			}
			var r probeReport
			if err := json.Unmarshal(f.log.Bytes(), &r); err != nil {
				t.Fatalf("probe report: %v\nlog:\n%s", err, f.log)
			}
			checkReport(t, m, f, &r)
		})
	}
}

func checkReport(t *testing.T, m mode, f *fixture, r *probeReport) {
	want := func(what string, got, want any) {
		t.Helper()
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s = %v, want %v", what, got, want)
		}
	}
	want("hostname", r.Hostname, "localhost")
	want("domain name", r.Domainname, "(none)")
	want("uid", []int{r.UID, r.EUID}, []int{1000, 1000})
	want("gid", []int{r.GID, r.EGID}, []int{100, 100})
	if m.userNS && !m.setgroups {
		// The daemon's supplementary groups cannot be dropped without
		// setgroups; they show as the overflow gid.
		for _, g := range r.Groups {
			if g != 65534 {
				t.Errorf("supplementary group %d", g)
			}
		}
	} else if len(r.Groups) != 0 {
		t.Errorf("supplementary groups %v, want none", r.Groups)
	}
	want("/etc/passwd", r.Files["/etc/passwd"], passwd)
	want("/etc/group", r.Files["/etc/group"], group)
	want("/etc/hosts", r.Files["/etc/hosts"], hosts)
	want("interfaces", r.Interfaces, []string{"lo"})
	want("loopback up", r.LoUp, true)
	want("pids", r.Pids, []int{1})
	want("fds", r.FDs, []int{0, 1, 2})
	want("env", r.Env, f.spec.Command.Env)
	want("cwd", r.Cwd, "/build")
	want("status", r.Status, map[string]string{
		"CapInh": "0000000000000000", "CapPrm": "0000000000000000", "CapEff": "0000000000000000",
		"CapAmb": "0000000000000000", "NoNewPrivs": "1", "Seccomp": "2",
	})
	results := []struct{ op, want string }{
		{"read /root", "ENOENT"},
		{"read /etc/shadow", "ENOENT"},
		{"read " + f.marker, "ENOENT"},
		{"write /input/new", "EROFS"},
		{"write /input/file", "EROFS"},
		{"mkdir /input/d", "EROFS"},
		{"write /new", "EROFS"},
		{"write /etc/passwd", "EROFS|EACCES"}, // owned by root without a user namespace
		{"write /dev/new", "EROFS"},
		{"write /build/new", "ok"},
		{"write /tmp/new", "ok"},
		{"write /dev/shm/new", "ok"},
		{"write /dev/null", "ok"},
		{"open /dev/ptmx", "ok"},
		{"mount tmpfs", "EPERM"},
		{"chmod 0755", "ok"},
		{"chmod 04755", "EPERM"},
		{"chmod 02755", "EPERM"},
		{"fchmod 04755", "EPERM"},
		{"fchmodat 06755", "EPERM"},
		{"fchmodat2 04755", "EPERM"},
		{"setxattr", "ENOTSUP"},
		{"lsetxattr", "ENOTSUP"},
		{"fsetxattr", "ENOTSUP"},
		{"io_uring_setup", "ENOSYS"},
		{"mode after", "755"},
	}
	if _, ok := r.Results["i386 chmod 0755"]; ok {
		results = append(results, []struct{ op, want string }{
			{"i386 chmod 0755", "ok"}, // int $0x80 works, so the next EPERM is the filter's
			{"i386 chmod 04755", "EPERM"},
			{"i386 setxattr", "ENOTSUP"},
			{"x32 chmod 04755", "EPERM"},
		}...)
		if got := r.Results["x32 chmod 0755"]; got != "ok" && got != "ENOSYS" {
			t.Errorf("x32 chmod 0755: %s, want ok (x32 kernel) or ENOSYS", got)
		}
	}
	for _, res := range results {
		if got := r.Results[res.op]; !slices.Contains(strings.Split(res.want, "|"), got) {
			t.Errorf("%s: %s, want %s", res.op, got, res.want)
		}
	}
	// The build dir is the host's: what the build wrote is there.
	if _, err := os.Stat(filepath.Join(f.spec.BuildDir, "new")); err != nil {
		t.Errorf("build dir on the host: %v", err)
	}
	if _, err := os.Stat(filepath.Join(f.spec.Root, "etc")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("root dir on the host is not left empty: %v", err)
	}
}

func TestSetupErrors(t *testing.T) {
	m := modes()[0]
	tests := []struct {
		name   string
		modify func(*sandbox.Spec)
		step   string
		errno  error
	}{
		{"missing bind", func(s *sandbox.Spec) {
			s.Binds = append(s.Binds, sandbox.Bind{Source: "/nonexistent-cairn", Target: "/x"})
		}, "bind /nonexistent-cairn", syscall.ENOENT},
		{"missing command", func(s *sandbox.Spec) { s.Command.Path = "/bin/nope" }, "exec /bin/nope", syscall.ENOENT},
		{"missing dir", func(s *sandbox.Spec) { s.Command.Dir = "/nope" }, "chdir /nope", syscall.ENOENT},
		{"file over a bind", func(s *sandbox.Spec) {
			s.Files = append(s.Files, sandbox.File{Path: "/build/x/y", Content: []byte("x")})
			s.Binds = append(s.Binds, sandbox.Bind{Source: "/bin/busybox", Target: "/etc/passwd/x"})
		}, "mount point /etc/passwd/x", syscall.ENOTDIR},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, m)
			tt.modify(f.spec)
			p, err := sandbox.Start(context.Background(), f.spec)
			if err == nil {
				p.Wait()
				t.Fatal("Start: no error")
			}
			var se *sandbox.SetupError
			if !errors.As(err, &se) || se.Step != tt.step || !errors.Is(err, tt.errno) {
				t.Fatalf("Start: %v (%#v), want step %q and %v", err, se, tt.step, tt.errno)
			}
			t.Log(err)
		})
	}
}

func TestNetworkSetup(t *testing.T) {
	m := modes()[0]
	f := newFixture(t, m, "/bin/busybox", "true")
	var sawPid int
	f.spec.NetworkSetup = func(ctx context.Context, pid int) error {
		sawPid = pid
		own, err := os.Readlink("/proc/self/ns/net")
		if err != nil {
			return err
		}
		theirs, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/net")
		if err != nil {
			return err
		}
		if own == theirs {
			return fmt.Errorf("child shares our network namespace %s", own)
		}
		return nil
	}
	p := f.start(t, context.Background())
	if st, err := p.Wait(); err != nil || !st.Success() {
		t.Fatalf("Wait: %v %v\n%s", st, err, f.log)
	}
	if sawPid != p.Pid() {
		t.Errorf("hook saw pid %d, process is %d", sawPid, p.Pid())
	}

	f = newFixture(t, m, "/bin/busybox", "true")
	f.spec.NetworkSetup = func(ctx context.Context, pid int) error { return errors.New("no slirp today") }
	if p, err := sandbox.Start(context.Background(), f.spec); err == nil || !strings.Contains(err.Error(), "no slirp today") {
		if p != nil {
			p.Wait()
		}
		t.Fatalf("Start with a failing hook: %v", err)
	}
}

// TestRootless runs this test binary's sandbox tests again as an
// unprivileged user, so the rootless path (the daemon's own ids mapped to
// 1000/100) is tested when the tests run as root.
func TestRootless(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("already not root: TestSandbox covers the rootless mode")
	}
	uid, gid, err := buildUser()
	if err != nil {
		t.Skipf("no unprivileged user to test with: %v", err)
	}
	if err := testuser.EnsureTun(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/proc/self/exe", "-test.run=^(TestSandbox|TestKill|TestSetupErrors|TestNetworkSetup|TestNet|TestHostCommand)$", "-test.v", "-test.count=1")
	tmp := t.TempDir()
	if err := os.Chown(tmp, uid, gid); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Dir(tmp), 0o755) // t.TempDir's parent is 0700
	cmd.Env = []string{"TMPDIR=" + tmp, "PATH=/usr/bin:/bin"}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	out, err := cmd.CombinedOutput()
	t.Logf("as cairnbuild (uid %d):\n%s", uid, out)
	if err != nil {
		t.Fatalf("rootless tests: %v", err)
	}
	if bytes.Contains(out, []byte("--- SKIP")) {
		t.Skip("rootless tests skipped (see log)")
	}
}

// buildUser returns the uid and gid of the user cairnbuild, made with
// useradd when missing.
func buildUser() (int, int, error) { return testuser.Ensure() }
