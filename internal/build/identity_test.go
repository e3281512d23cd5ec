package build

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"cairn/internal/sandbox"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
	"cairn/internal/testutil/proctest"
	"cairn/internal/testutil/testuser"
)

// testPool is the build-users-group the root tests make (with members
// cairnbld1…3; this package's alone, see testuser.EnsurePool); it stays,
// like the cairnbuild user.
const (
	testPool     = "cairnbld"
	testPoolSize = 3
	// testStartID is an auto-allocate-uids start-id no account on a test
	// machine uses (Nix's default).
	testStartID = 872415232
)

// hostPath finds the host's tools for builds on the host (the builder's PATH
// is /path-not-set; busybox's shell finds its applets without it).
const hostPath = "PATH=/usr/bin:/bin; "

// requireRoot skips unless the test runs as root.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (build users)")
	}
}

// pool makes (or finds) the test's build users.
func pool(t testing.TB) (gid int, uids []int) {
	t.Helper()
	requireRoot(t)
	gid, uids, err := testuser.EnsurePool(testPool, testPoolSize)
	if err != nil {
		t.Skipf("no build users: %v", err)
	}
	return gid, uids
}

// hostStore opens a store whose store dir is its real store dir (so that
// builds may run on the host), in a temp dir every user may traverse; with
// group, the store dir is root:group 1735 as a root daemon's with build users.
func hostStore(t testing.TB, group string) *local.Store {
	t.Helper()
	dir := t.TempDir()
	removable(t, dir)
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := store.ParseURL("local?store="+dir+"/store&state="+dir+"/state&log="+dir+"/log", func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	st, err := local.Open(context.Background(), cfg, local.Options{NoFsync: true, ReservedSize: -1, BuildUsersGroup: group})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// removable makes the directories under dir writable at the end of the
// test, before t.TempDir removes it: not as root, the read-only store
// paths in it could not be removed.
func removable(t testing.TB, dir string) {
	if os.Geteuid() == 0 {
		return
	}
	t.Cleanup(func() {
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				os.Chmod(p, 0o755)
			}
			return nil
		})
	})
}

// A buildMode is one way a daemon runs builds: in the sandbox or on the
// host, with build users or as itself.
type buildMode struct {
	name    string
	sandbox bool
	users   bool // root with the test's build-users-group
	// noCgroups is use-cgroups = false.
	noCgroups bool
}

// sandboxedWithUsers is a root daemon's usual mode: sandboxed builds as
// the test's build users.
var sandboxedWithUsers = buildMode{name: "pool", sandbox: true, users: true}

// buildModes lists the modes this process can test: as root, with build
// users (sandboxed and on the host) and sandboxed as itself; otherwise
// rootless, sandboxed and on the host.
func buildModes() []buildMode {
	if os.Geteuid() != 0 {
		return []buildMode{{name: "rootless"}, {name: "rootless-host"}}
	}
	return []buildMode{{name: "pool", sandbox: true, users: true}, {name: "pool-host", users: true}, {name: "root", sandbox: true}}
}

// setup returns a store, a builder and options for m.
func (m buildMode) setup(t testing.TB, cfg Config) (*local.Store, *Builder, Options) {
	t.Helper()
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	group := ""
	cfg.NoCgroups = cfg.NoCgroups || m.noCgroups
	if m.users {
		pool(t)
		group = testPool
		cfg.BuildUsersGroup = testPool
	}
	st := hostStore(t, group)
	if !cfg.NoCgroups && cfg.CgroupParent == "" {
		cfg.CgroupParent = testCgroup(t)
	}
	b, err := NewWithConfig(st, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	opts := testOptions()
	opts.Sandbox = m.sandbox
	if m.sandbox {
		requireSandbox(t)
	}
	return st, b, opts
}

func (m buildMode) String() string { return m.name }

func TestUserPool(t *testing.T) {
	gid, uids := pool(t)
	ctx := context.Background()
	state := t.TempDir()

	p, err := newUserPool(Config{BuildUsersGroup: testPool}, state)
	if err != nil || p == nil {
		t.Fatalf("newUserPool: %v %v", p, err)
	}
	var held []*buildUser
	for range testPoolSize {
		u, err := p.acquire(ctx, 1, true, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(uids, u.uid) || u.gid != gid || u.count != 1 {
			t.Errorf("acquired %d:%d ×%d, want one of %v : %d", u.uid, u.gid, u.count, uids, gid)
		}
		for _, h := range held {
			if h.uid == u.uid {
				t.Errorf("uid %d handed out twice", u.uid)
			}
		}
		held = append(held, u)
		// Nix's lock: STATE/userpool/<uid>, flocked.
		f, err := os.OpenFile(filepath.Join(state, "userpool", strconv.Itoa(u.uid)), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); !errors.Is(err, unix.EWOULDBLOCK) {
			t.Errorf("lock of uid %d is not held: %v", u.uid, err)
		}
		f.Close()
	}

	// All busy: a build waits, and gets the first one given back.
	tctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	if _, err := p.acquire(tctx, 1, true, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("acquire with every uid busy: %v, want deadline exceeded", err)
	}
	cancel()
	waited := make(chan struct{})
	got := make(chan *buildUser)
	go func() {
		u, err := p.acquire(ctx, 1, true, func() { close(waited) })
		if err != nil {
			t.Error(err)
		}
		got <- u
	}()
	<-waited
	freed := held[1].uid
	held[1].release()
	select {
	case u := <-got:
		if u.uid != freed {
			t.Errorf("waiter got uid %d, want the released %d", u.uid, freed)
		}
		held[1] = u
	case <-time.After(uidPollInterval / 2):
		t.Fatal("a release in this process did not wake the waiter")
	}
	for _, u := range held {
		u.release()
	}

	// Errors in Nix's words.
	for _, tt := range []struct {
		cfg   Config
		count int
		err   string
	}{
		{Config{BuildUsersGroup: "cairn-no-such-group"}, 1, "the group 'cairn-no-such-group' specified in 'build-users-group' does not exist"},
		{Config{BuildUsersGroup: testPool}, idsPerSlot, "feature 'uid-range' requires the setting 'auto-allocate-uids' to be enabled"},
		{Config{AutoAllocateUIDs: true, StartID: testStartID, IDCount: idsPerSlot, BuildUsersGroup: "cairn-no-such-group"}, 1,
			"the group 'cairn-no-such-group' specified in 'build-users-group' does not exist"},
		{Config{AutoAllocateUIDs: true, StartID: 0, IDCount: 1000}, 1, "auto-allocate-uids: start-id 0 and id-count 1000"},
		{Config{AutoAllocateUIDs: true, StartID: int64(uids[0]), IDCount: idsPerSlot}, 1, "auto-allocated UID " + strconv.Itoa(uids[0]) + " clashes with existing user account '" + testPool + "1'"},
	} {
		p, err := newUserPool(tt.cfg, state)
		if err == nil {
			var u *buildUser
			u, err = p.acquire(ctx, tt.count, false, nil)
			if u != nil {
				u.release()
			}
		}
		if err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%+v: %v, want %q", tt.cfg, err, tt.err)
		}
	}
}

func TestAutoAllocatePool(t *testing.T) {
	gid, _ := pool(t)
	ctx := context.Background()
	state := t.TempDir()
	p, err := newUserPool(Config{AutoAllocateUIDs: true, StartID: testStartID, IDCount: 2 * idsPerSlot, BuildUsersGroup: testPool}, state)
	if err != nil {
		t.Fatal(err)
	}
	a, err := p.acquire(ctx, 1, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.acquire(ctx, idsPerSlot, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a.uid != testStartID || a.gid != testStartID || a.count != 1 {
		t.Errorf("first slot %d:%d ×%d, want %d:%d ×1 (sandboxed: gid = uid)", a.uid, a.gid, a.count, testStartID, testStartID)
	}
	if b.uid != testStartID+idsPerSlot || b.gid != gid || b.count != idsPerSlot {
		t.Errorf("second slot %d:%d ×%d, want %d:%d ×%d (on the host: the group's gid)", b.uid, b.gid, b.count, testStartID+idsPerSlot, gid, idsPerSlot)
	}
	for _, f := range []string{"slot-0", "slot-1"} {
		if _, err := os.Stat(filepath.Join(state, "userpool2", f)); err != nil {
			t.Errorf("Nix's slot lock: %v", err)
		}
	}
	tctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := p.acquire(tctx, 1, true, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("third slot of two: %v", err)
	}
	a.release()
	b.release()
}

// TestKillUser: every process of a uid dies, the daemon (this process)
// does not.
func TestKillUser(t *testing.T) {
	_, uids := pool(t)
	uid := uids[len(uids)-1]
	var cmds []*exec.Cmd
	for range 3 {
		cmd := exec.Command("/bin/sleep", "1000")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: &syscall.Credential{Uid: uint32(uid), Gid: 65534}}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	if err := killUser(uid); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range cmds {
		err := cmd.Wait()
		ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
		if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Errorf("sleep as %d: %v, want killed", uid, err)
		}
	}
	if os.Geteuid() != 0 {
		t.Errorf("the daemon lost root: euid %d", os.Geteuid())
	}
	if err := killUser(0); err == nil {
		t.Error("killUser(0) did not refuse")
	}
}

// TestBuildUsers: with build users, each build runs as its own pool uid
// (host ids seen through /proc/self/uid_map in the sandbox, or id on the
// host), outputs end up the daemon's, and the build dir is the builder's.
func TestBuildUsers(t *testing.T) {
	gid, uids := pool(t)
	for _, m := range []buildMode{{name: "sandbox", sandbox: true, users: true}, {name: "host", users: true}} {
		t.Run(m.name, func(t *testing.T) {
			ctx := context.Background()
			st, b, opts := m.setup(t, Config{})
			script := hostPath + `cat /proc/self/uid_map /proc/self/gid_map > $out 2>/dev/null; echo ids $(id -u) $(id -g) >> $out; sleep 0.3`
			var targets []Target
			for i := range testPoolSize + 1 {
				targets = append(targets, Target{Drv: addDrv(t, st, fmt.Sprintf("who-%d", i), script, nil, nil)})
			}
			opts.MaxJobs = len(targets)
			log := &testLog{}
			res, err := b.Build(ctx, targets, opts, log)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range res {
				if r.Status != Built {
					t.Fatalf("status %d: %v", r.Status, r.Err)
				}
				out := r.Outputs["out"]
				got := readOut(t, st, out)
				f := strings.Fields(got)
				var hostUID, hostGID int
				if m.sandbox {
					// uid_map "1000 <uid> 1", gid_map "100 <gid> 1", ids 1000 100.
					if len(f) != 9 || f[0] != "1000" || f[2] != "1" || f[3] != "100" || f[5] != "1" || f[7] != "1000" || f[8] != "100" {
						t.Fatalf("inside: %q", got)
					}
					hostUID, _ = strconv.Atoi(f[1])
					hostGID, _ = strconv.Atoi(f[4])
				} else {
					// The host's own maps, then the pool ids.
					hostUID, _ = strconv.Atoi(f[len(f)-2])
					hostGID, _ = strconv.Atoi(f[len(f)-1])
				}
				if !slices.Contains(uids, hostUID) || hostGID != gid {
					t.Errorf("built as %d:%d, want a pool uid %v and gid %d", hostUID, hostGID, uids, gid)
				}
				var fst unix.Stat_t
				if err := unix.Lstat(st.RealPath(out), &fst); err != nil || fst.Uid != 0 || fst.Gid != 0 || fst.Mode&0o7777 != 0o444 {
					t.Errorf("output %s: uid %d gid %d mode %o, %v", out, fst.Uid, fst.Gid, fst.Mode&0o7777, err)
				}
			}
			if !slices.ContainsFunc(log.errors, func(s string) bool { return strings.HasPrefix(s, "waiting for UID to build") }) {
				t.Logf("no build waited for a uid (%q)", log.errors)
			}

			// The build dir, kept: the builder's, in a dir only root (and,
			// for builds on the host, the pool's group) may enter.
			p := addDrv(t, st, "kept", "echo x > $NIX_BUILD_TOP/f; exit 1", nil, nil)
			opts.KeepFailed = true
			log = &testLog{}
			res, _ = b.Build(ctx, []Target{{Drv: p}}, opts, log)
			dir := keptDir(log)
			if res[0].Status == Built || dir == "" {
				t.Fatalf("kept build: %d %v %q", res[0].Status, res[0].Err, log.errors)
			}
			for _, f := range []string{dir, filepath.Join(dir, "f")} {
				var fst unix.Stat_t
				if err := unix.Lstat(f, &fst); err != nil || !slices.Contains(uids, int(fst.Uid)) || int(fst.Gid) != gid {
					t.Errorf("%s: owner %d:%d, %v; want the build user's", f, fst.Uid, fst.Gid, err)
				}
			}
			var pst unix.Stat_t
			unix.Stat(filepath.Dir(dir), &pst)
			wantMode, wantGID := uint32(0o700), uint32(0)
			if !m.sandbox {
				wantMode, wantGID = 0o710, uint32(gid)
			}
			if pst.Uid != 0 || pst.Gid != wantGID || pst.Mode&0o7777 != wantMode {
				t.Errorf("%s: %d:%d %o, want 0:%d %o", filepath.Dir(dir), pst.Uid, pst.Gid, pst.Mode&0o7777, wantGID, wantMode)
			}
		})
	}
}

// TestBuildUsersManyBuilds: more builds ready at once than build users and
// job places together. Builds set up ahead of their turn hold uids while
// they wait for a place; one holding a place must never wait for a uid,
// or both wait for ever (as they once did).
func TestBuildUsersManyBuilds(t *testing.T) {
	st, b, opts := sandboxedWithUsers.setup(t, Config{})
	var targets []Target
	for i := range 4 * testPoolSize {
		targets = append(targets, Target{Drv: addDrv(t, st, fmt.Sprintf("many-%d", i), fmt.Sprintf("echo %d > $out", i), nil, nil)})
	}
	opts.MaxJobs = testPoolSize + 1
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := b.Build(ctx, targets, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Status != Built {
			t.Errorf("build %d: status %d: %v", i, r.Status, r.Err)
		}
	}
}

// TestBuildUsersLinkedInputs: with build users, an input that is a file is
// a hard link in the sandbox's store dir, not a mount (as in Nix 2.8). The
// builder can read it but neither change nor remove it; a later build in
// the same pooled dirs finds it again, and a build without it does not see
// it.
func TestBuildUsersLinkedInputs(t *testing.T) {
	st, b, opts := sandboxedWithUsers.setup(t, Config{})
	ctx := context.Background()
	opts.MaxJobs = 1
	build := func(drv storepath.StorePath) storepath.StorePath {
		t.Helper()
		res, err := b.Build(ctx, []Target{{Drv: drv}}, opts, nil)
		if err != nil || res[0].Status != Built {
			t.Fatalf("build %s: %v %v", drv, err, res[0].Err)
		}
		return res[0].Outputs["out"]
	}
	inDrv := addDrv(t, st, "input", "echo original > $out", nil, nil)
	in := build(inDrv)
	inputs := map[storepath.StorePath][]string{inDrv: {"out"}}
	tamper := `in=` + in.String() + `
		cat $in > $out
		grep -c " $in " /proc/self/mountinfo >> $out
		echo changed > $in 2>/dev/null && echo wrote >> $out
		chmod 0666 $in 2>/dev/null && echo chmodded >> $out
		rm -f $in 2>/dev/null; mv $in $in.x 2>/dev/null; test -e $in || echo removed >> $out
		true`
	for i := range 2 {
		got := readOut(t, st, build(addDrv(t, st, fmt.Sprintf("reader-%d", i), tamper, inputs, nil)))
		if got != "original\n0\n" {
			t.Errorf("build %d with the input saw %q; want its contents, no mount, no change", i, got)
		}
	}
	if got := readOut(t, st, in); got != "original\n" {
		t.Errorf("the input is now %q", got)
	}
	got := readOut(t, st, build(addDrv(t, st, "other", "test -e "+in.String()+" && echo visible > $out; echo done >> $out", nil, nil)))
	if got != "done\n" {
		t.Errorf("a build without the input: %q", got)
	}
}

// TestAutoAllocateUIDs: auto-allocate-uids gives a build the first id of
// a free slot, or all 65536 with uid-range, where it is root inside.
func TestAutoAllocateUIDs(t *testing.T) {
	gid, _ := pool(t)
	ctx := context.Background()
	cfg := Config{AutoAllocateUIDs: true, StartID: testStartID, IDCount: 2 * idsPerSlot, BuildUsersGroup: testPool}
	for _, tt := range []struct {
		name     string
		sandbox  bool
		features string
		want     string
	}{
		{"sandbox", true, "", "1000 %[1]d 1 100 %[1]d 1 ids 1000 100"},
		{"uid-range", true, "uid-range", "0 %[1]d 65536 0 %[1]d 65536 ids 0 0"},
		{"host", false, "", "ids %[1]d %[2]d"},
		{"host-uid-range", false, "uid-range", "feature 'uid-range' is only supported in sandboxed builds"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := buildMode{sandbox: tt.sandbox}
			st, b, opts := m.setup(t, cfg)
			if !tt.sandbox {
				// Builds on the host write into the store dir as the
				// group: make it the pool's.
				st = hostStore(t, testPool)
				var err error
				if b, err = NewWithConfig(st, cfg); err != nil {
					t.Fatal(err)
				}
			}
			opts.SystemFeatures = append(opts.SystemFeatures, "uid-range")
			env := map[string]string{}
			if tt.features != "" {
				env["requiredSystemFeatures"] = tt.features
			}
			script := `{ cat /proc/self/uid_map /proc/self/gid_map; } > $out 2>/dev/null; [ -n "$NIX_BUILD_TOP" ] && echo ids $(id -u) $(id -g) >> $out`
			if !tt.sandbox {
				script = hostPath + `echo ids $(id -u) $(id -g) > $out`
			}
			p := addDrv(t, st, "auto", script, nil, env)
			res, err := b.Build(ctx, []Target{{Drv: p}}, opts, nil)
			if err != nil {
				t.Fatal(err)
			}
			want := tt.want
			if strings.Contains(want, "%") {
				want = fmt.Sprintf(tt.want, testStartID, gid)
			}
			if strings.HasPrefix(tt.want, "feature") {
				if res[0].Err == nil || res[0].Err.Error() != want {
					t.Fatalf("%d %v, want %q", res[0].Status, res[0].Err, want)
				}
				return
			}
			if res[0].Status != Built {
				t.Fatalf("%d %v", res[0].Status, res[0].Err)
			}
			if got := strings.Join(strings.Fields(readOut(t, st, res[0].Outputs["out"])), " "); got != want {
				t.Errorf("got %q, want %q", got, want)
			}
		})
	}
}

// keptDir is the directory a "note: keeping build directory" names.
func keptDir(log *testLog) string {
	for _, e := range log.errors {
		if rest, ok := strings.CutPrefix(e, "note: keeping build directory '"); ok {
			return strings.TrimSuffix(rest, "'")
		}
	}
	return ""
}

// testCgroup makes a cgroup for one test's builds under the one builds
// would use ("" when there is none), removed at the end of the test.
func testCgroup(t testing.TB) string {
	parent, err := sandbox.DetectCgroup()
	if err != nil {
		return ""
	}
	dir, err := os.MkdirTemp(parent, "cairn-test-")
	if err != nil {
		return ""
	}
	t.Cleanup(func() { os.Remove(dir) })
	return dir
}

// buildCgroups lists the build cgroups under parent.
func buildCgroups(parent string) []string {
	if parent == "" {
		return nil
	}
	ents, _ := os.ReadDir(parent)
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "cairn-build-") {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestDaemonize: a builder that leaves a daemon behind (setsid, in the
// background) — nothing of it runs once the build is over, whether it
// succeeded, failed or timed out, and its cgroup is gone.
func TestDaemonize(t *testing.T) {
	modes := buildModes()
	if os.Geteuid() == 0 {
		// Without cgroups: the build user's processes are killed; as root
		// without build users, nothing reaches a daemon on the host.
		modes = append(modes, buildMode{name: "pool-host-nocgroup", users: true, noCgroups: true},
			buildMode{name: "host-nocgroup", noCgroups: true})
	}
	for _, m := range modes {
		for _, end := range []string{"success", "failure", "timeout", "cancel"} {
			t.Run(m.name+"/"+end, func(t *testing.T) {
				ctx := context.Background()
				if end == "cancel" {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, time.Second)
					defer cancel()
				}
				st, b, opts := m.setup(t, Config{})
				parent, cgErr := b.Cgroups()
				marker := fmt.Sprintf("cairn-daemonize-%d-%d", os.Getpid(), time.Now().UnixNano())
				// The daemon says when it has left the builder's session.
				script := hostPath + `setsid sh -c 'echo > $NIX_BUILD_TOP/detached; sleep 1000; sleep 1000' </dev/null >/dev/null 2>&1 &
while [ ! -e $NIX_BUILD_TOP/detached ]; do sleep 0.01; done
( sleep 1000 & ) ; echo > $out`
				switch end {
				case "failure":
					script += "; exit 1"
				case "timeout":
					script += "; sleep 1000"
					opts.Timeout = time.Second
				case "cancel":
					script += "; sleep 1000"
				}
				p := addDrv(t, st, "daemonize", script, nil, map[string]string{"marker": marker})
				blog := &testLog{}
				res, err := b.Build(ctx, []Target{{Drv: p}}, opts, blog)
				if err != nil {
					t.Fatal(err)
				}
				want := map[string]Status{"success": Built, "failure": PermanentFailure, "timeout": TimedOut, "cancel": MiscFailure}[end]
				if !m.sandbox && end == "failure" {
					want = TransientFailure
				}
				if res[0].Status != want {
					t.Errorf("status %d (%v), want %d; log %q", res[0].Status, res[0].Err, want, blog.lines)
				}
				left := proctest.WithEnv(marker)
				if m.users && cgErr != nil {
					// Killed by kill(-1) as the build user: SIGKILL is sent,
					// the processes take a moment to go.
					for deadline := time.Now().Add(5 * time.Second); len(left) > 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
						left = proctest.WithEnv(marker)
					}
				}
				if !m.sandbox && cgErr != nil && !m.users {
					// No cgroup, no build user, no PID namespace: a process
					// that left the builder's process group is out of reach
					// (and this shows the test sees one).
					if len(left) == 0 {
						t.Errorf("no daemon left by a build on the host without a cgroup: does the test see them?")
					}
					t.Logf("builds on the host without a cgroup (%v) leave daemons behind: %v", cgErr, left)
					for _, pid := range left {
						syscall.Kill(pid, syscall.SIGKILL)
					}
					return
				}
				if len(left) > 0 {
					for _, pid := range left {
						syscall.Kill(pid, syscall.SIGKILL)
					}
					t.Errorf("still running after the build: %v (cgroup %q %v)", left, parent, cgErr)
				}
				// Spare inits wait in cgroups of their own: end them.
				b.Close()
				if cgs := buildCgroups(parent); len(cgs) > 0 {
					t.Errorf("cgroups left under %s: %v", parent, cgs)
				}
			})
		}
	}
}

// TestStaleCgroups: cgroups a killed daemon left are removed when the next
// Builder starts, and what ran in them is killed.
func TestStaleCgroups(t *testing.T) {
	parent, err := sandbox.DetectCgroup()
	if err != nil {
		t.Skipf("no cgroups: %v", err)
	}
	// A process that is gone: a child that exited.
	dead := exec.Command("/bin/true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(parent, fmt.Sprintf("cairn-build-%d-1", dead.Process.Pid))
	if err := os.Mkdir(stale, 0o755); err != nil {
		t.Skipf("cannot make a cgroup: %v", err)
	}
	fd, err := unix.Open(stale, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	orphan := exec.Command("/bin/sleep", "1000")
	orphan.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	err = orphan.Start()
	unix.Close(fd)
	if err != nil {
		os.Remove(stale)
		t.Fatal(err)
	}
	st := testStore(t)
	newBuilder(t, st)
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		orphan.Process.Kill()
		t.Errorf("stale cgroup %s: %v", stale, err)
	}
	if err := orphan.Wait(); err == nil {
		t.Errorf("the process in the stale cgroup was not killed")
	}
}
