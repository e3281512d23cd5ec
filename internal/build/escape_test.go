package build

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"cairn/internal/sandbox"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
	"cairn/internal/testutil/testuser"
)

// Escape attempts: builds that try to reach past their sandbox (or, on the
// host, past their build user), each of which must fail. They run in every
// mode buildModes lists, and TestRootlessBuild runs them again as an
// unprivileged daemon.

// outsider runs a busybox shell command as the unprivileged test user
// cairnbuild, an outside user who wants into a build: it returns the
// command's output and whether it succeeded.
func outsider(t *testing.T, script string) (string, bool) {
	t.Helper()
	uid, gid, err := testuser.Ensure()
	if err != nil {
		t.Skipf("no outside user: %v", err)
	}
	cmd := exec.Command("/bin/busybox", "sh", "-c", script)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	out, err := cmd.CombinedOutput()
	return string(out), err == nil
}

// buildDirOf waits for the build dir of the build of a derivation named
// name to hold file, and returns the dir.
func buildDirOf(t *testing.T, b *Builder, name, file string) string {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		for _, parent := range []string{b.buildsDir, b.hostBuildsDir} {
			if parent == "" {
				continue
			}
			m, _ := filepath.Glob(filepath.Join(parent, "nix-build-"+name+"-*"))
			for _, d := range m {
				if !strings.HasSuffix(d, ".store") {
					if _, err := os.Lstat(filepath.Join(d, file)); err == nil {
						return d
					}
				}
			}
		}
	}
	t.Fatalf("no build dir of %s with %s", name, file)
	return ""
}

// checkUnreachable shows an outside user cannot read, write, list or add to
// the world-writable build dir dir, nor traverse to it.
func checkUnreachable(t *testing.T, b *Builder, dir string) {
	t.Helper()
	if os.Geteuid() != 0 {
		// No other user to try as: the dirs above it are this user's
		// alone.
		var st unix.Stat_t
		if err := unix.Stat(b.buildsDir, &st); err != nil || int(st.Uid) != os.Geteuid() || st.Mode&0o077 != 0 {
			t.Errorf("builds dir %s: owner %d mode %o, %v", b.buildsDir, st.Uid, st.Mode&0o7777, err)
		}
		if !strings.HasPrefix(dir, b.buildsDir+"/") {
			t.Errorf("build dir %s is not in %s", dir, b.buildsDir)
		}
		return
	}
	for _, attempt := range []string{
		"cat " + dir + "/f",
		"echo x >> " + dir + "/f",
		"ls " + dir,
		"touch " + dir + "/new",
		"cd " + dir,
	} {
		if out, ok := outsider(t, attempt); ok || !strings.Contains(out, "Permission denied") {
			t.Errorf("as an outside user, %q: ok=%v %q", attempt, ok, out)
		}
	}
	if data, err := os.ReadFile(filepath.Join(dir, "f")); err != nil || string(data) != "secret\n" {
		t.Errorf("the build's file: %q %v", data, err)
	}
}

// TestEscapeWorldWritableBuildDir: a build makes its build dir and a file
// in it world-writable; an outside user still cannot get in, during the
// build or once it is kept after a failure.
func TestEscapeWorldWritableBuildDir(t *testing.T) {
	for _, m := range buildModes() {
		t.Run(m.name, func(t *testing.T) {
			ctx := context.Background()
			st, b, opts := m.setup(t, Config{})
			script := hostPath + `chmod 777 $NIX_BUILD_TOP; echo secret > $NIX_BUILD_TOP/f; chmod 666 $NIX_BUILD_TOP/f
i=0; while [ ! -e $NIX_BUILD_TOP/go ] && [ $i -lt 2000 ]; do sleep 0.01; i=$((i+1)); done
echo > $out`
			p := addDrv(t, st, "open-during", script, nil, nil)
			done := make(chan []Result)
			go func() {
				res, _ := b.Build(ctx, []Target{{Drv: p}}, opts, nil)
				done <- res
			}()
			dir := buildDirOf(t, b, "open-during", "f")
			checkUnreachable(t, b, dir)
			os.WriteFile(filepath.Join(dir, "go"), nil, 0o644)
			if res := <-done; res[0].Status != Built {
				t.Fatalf("build: %d %v", res[0].Status, res[0].Err)
			}

			// Kept after a failure.
			p = addDrv(t, st, "open-after", `chmod 777 $NIX_BUILD_TOP; echo secret > $NIX_BUILD_TOP/f; chmod 666 $NIX_BUILD_TOP/f; exit 1`, nil, nil)
			opts.KeepFailed = true
			log := &testLog{}
			b.Build(ctx, []Target{{Drv: p}}, opts, log)
			dir = keptDir(log)
			if dir == "" {
				t.Fatalf("no kept dir: %q", log.errors)
			}
			checkUnreachable(t, b, dir)
		})
	}
}

// victims makes, in a directory everyone may traverse, a root-owned file
// everyone may write (a hard link to it is allowed under
// protected_hardlinks) and one only root may write (not allowed). The
// rootless run gets the root run's (CAIRN_TEST_VICTIMS).
func victims(t *testing.T) (writable, protected string) {
	t.Helper()
	dir := os.Getenv("CAIRN_TEST_VICTIMS")
	if dir == "" {
		if os.Geteuid() != 0 {
			t.Skip("no root-owned victims (TestRootlessBuild makes them)")
		}
		dir = makeVictims(t)
	}
	return filepath.Join(dir, "writable"), filepath.Join(dir, "protected")
}

func makeVictims(t *testing.T) string {
	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		os.Chmod(d, 0o755)
	}
	for name, mode := range map[string]os.FileMode{"writable": 0o666, "protected": 0o644} {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte("victim\n"), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(f, mode)
	}
	return dir
}

// checkVictim fails unless the file is as makeVictims left it.
func checkVictim(t *testing.T, path string, mode uint32) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	if st.Uid != 0 || st.Gid != 0 || st.Mode&0o7777 != mode || st.Nlink != 1 || string(data) != "victim\n" {
		t.Errorf("%s: %d:%d mode %o, %d links, %q", path, st.Uid, st.Gid, st.Mode&0o7777, st.Nlink, data)
	}
}

// TestEscapeHardLink: a build hard-links host files into its output. In
// the sandbox it cannot see them; on the host, protected_hardlinks refuses
// a file the build user may not write, and the output is refused when it
// holds a file the build user does not own (canonicalising it would have
// made the host's file the daemon's and read-only) — the host's files stay
// as they were.
func TestEscapeHardLink(t *testing.T) {
	writable, protected := victims(t)
	for _, m := range buildModes() {
		t.Run(m.name, func(t *testing.T) {
			ctx := context.Background()
			st, b, opts := m.setup(t, Config{})
			script := hostPath + fmt.Sprintf(`mkdir $out
for f in %s %s; do if ln $f $out/ 2>/dev/null; then echo linked $f; else echo refused $f; fi; done > $out/log`, writable, protected)
			p := addDrv(t, st, "hardlink", script, nil, nil)
			log := &testLog{}
			res, err := b.Build(ctx, []Target{{Drv: p}}, opts, log)
			if err != nil {
				t.Fatal(err)
			}
			if m.sandbox {
				want := fmt.Sprintf("refused %s\nrefused %s\n", writable, protected)
				if res[0].Status != Built || readIn(t, st, res[0].Outputs["out"], "log") != want {
					t.Errorf("status %d %v, want Built with %q", res[0].Status, res[0].Err, want)
				}
			} else if res[0].Status != OutputRejected || !strings.Contains(fmt.Sprint(res[0].Err), "invalid ownership on file '") {
				t.Errorf("status %d %v, want OutputRejected: invalid ownership", res[0].Status, res[0].Err)
			}
			checkVictim(t, writable, 0o666)
			checkVictim(t, protected, 0o644)
			if out := outPath(t, st, p, "out"); !m.sandbox {
				if _, err := os.Lstat(st.RealPath(out)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("the refused output is still in the store dir: %v", err)
				}
			}
		})
	}
}

// TestEscapeSetuid: a build makes setuid and setgid files and directories.
// The seccomp filter refuses the modes (in the sandbox and on the host); what
// is registered would have none of them anyway.
func TestEscapeSetuid(t *testing.T) {
	for _, m := range buildModes() {
		t.Run(m.name, func(t *testing.T) {
			ctx := context.Background()
			st, b, opts := m.setup(t, Config{})
			script := hostPath + `mkdir $out $out/d; echo x > $out/f; chmod 755 $out/f
for mode in 4755 2755 6755; do chmod $mode $out/f 2>/dev/null && echo $mode ok || echo $mode refused; done > $out/log
chmod 2755 $out/d 2>/dev/null; chmod 1777 $out/d 2>/dev/null; true`
			p := addDrv(t, st, "setuid", script, nil, nil)
			res, err := b.Build(ctx, []Target{{Drv: p}}, opts, nil)
			if err != nil {
				t.Fatal(err)
			}
			if res[0].Status != Built {
				t.Fatalf("status %d: %v", res[0].Status, res[0].Err)
			}
			out := st.RealPath(res[0].Outputs["out"])
			log := readIn(t, st, res[0].Outputs["out"], "log")
			// The seccomp filter, in the sandbox and on the host alike.
			if log != "4755 refused\n2755 refused\n6755 refused\n" {
				t.Errorf("chmod: %q", log)
			}
			for name, want := range map[string]uint32{"": 0o555, "f": 0o555, "d": 0o555, "log": 0o444} {
				var fst unix.Stat_t
				if err := unix.Lstat(filepath.Join(out, name), &fst); err != nil || fst.Mode&0o7777 != want {
					t.Errorf("%s/%s: mode %o, %v; want %o", out, name, fst.Mode&0o7777, err, want)
				}
			}
		})
	}
}

// TestEscapeSymlinkCleanup: a build leaves symlinks to a victim directory
// outside where the daemon cleans up — in its build dir, under a read-only
// directory the daemon must make writable to empty, in the scratch store
// dir, in its output — and fails. Cleaning up (a later build reusing the
// dirs, or their removal) goes through directory descriptors and follows
// none of them: the victim survives, its mode too.
func TestEscapeSymlinkCleanup(t *testing.T) {
	for _, m := range buildModes() {
		t.Run(m.name, func(t *testing.T) {
			ctx := context.Background()
			st, b, opts := m.setup(t, Config{})
			victim := t.TempDir()
			os.WriteFile(filepath.Join(victim, "keep"), []byte("keep\n"), 0o644)
			os.Chmod(victim, 0o555)
			t.Cleanup(func() { os.Chmod(victim, 0o755) })
			script := hostPath + fmt.Sprintf(`cd $NIX_BUILD_TOP
V=%s
ln -s $V link; mkdir -p ro/sub; ln -s $V ro/sub/link; ln -s $V/keep ro/keep; ln -s $V ro/link
chmod 0 ro/sub; chmod 0555 ro
ln -s $V $(dirname $out)/planted-link 2>/dev/null
mkdir $out; ln -s $V $out/link; ln -s $V/keep $out/keep; chmod 0555 $out
exit 1`, victim)
			p := addDrv(t, st, "plant", script, nil, nil)
			res, _ := b.Build(ctx, []Target{{Drv: p}}, opts, nil)
			if res[0].Status == Built {
				t.Fatal("the build did not fail")
			}
			dir := ""
			if m.sandbox {
				// The dirs are pooled: the next build resets them.
				q := addDrv(t, st, "next", "echo > $out", nil, nil)
				if res, _ := b.Build(ctx, []Target{{Drv: q}}, opts, nil); res[0].Status != Built {
					t.Fatalf("next build: %v", res[0].Err)
				}
			} else {
				// Removed in the background: wait for it.
				m, _ := filepath.Glob(filepath.Join(b.buildsDir, "nix-build-plant-*"))
				m2, _ := filepath.Glob(filepath.Join(b.hostBuildsDir, "nix-build-plant-*"))
				for _, d := range append(m, m2...) {
					dir = d
				}
				for deadline := time.Now().Add(10 * time.Second); dir != "" && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
					if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
						break
					}
				}
				if _, err := os.Lstat(dir); dir != "" && !errors.Is(err, os.ErrNotExist) {
					t.Errorf("build dir %s not removed: %v", dir, err)
				}
				if _, err := os.Lstat(st.RealPath(outPath(t, st, p, "out"))); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("the failed output is still in the store dir: %v", err)
				}
			}
			var vst unix.Stat_t
			if err := unix.Stat(victim, &vst); err != nil || vst.Mode&0o7777 != 0o555 {
				t.Errorf("victim dir: mode %o, %v", vst.Mode&0o7777, err)
			}
			var kst unix.Stat_t
			if err := unix.Stat(filepath.Join(victim, "keep"), &kst); err != nil || kst.Mode&0o7777 != 0o644 {
				t.Errorf("victim file: mode %o, %v", kst.Mode&0o7777, err)
			}
		})
	}
}

// TestRemoveRace: a process that keeps swapping a directory (with a
// read-only directory in it) for a symlink to a victim while the daemon
// removes the tree — a builder's leftover that outlived it — never gets the
// daemon to delete or chmod the victim.
func TestRemoveRace(t *testing.T) {
	top := t.TempDir()
	victim := t.TempDir()
	os.WriteFile(filepath.Join(victim, "keep"), []byte("keep\n"), 0o644)
	os.Mkdir(filepath.Join(victim, "sub"), 0o555)
	os.Chmod(victim, 0o555)
	t.Cleanup(func() { os.Chmod(victim, 0o755); os.Chmod(filepath.Join(victim, "sub"), 0o755) })
	x := filepath.Join(top, "x")
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() {
		for !stop.Load() {
			os.Remove(x)
			if os.Mkdir(x, 0o755) == nil {
				os.Mkdir(filepath.Join(x, "sub"), 0o755)
				os.WriteFile(filepath.Join(x, "sub", "f"), nil, 0o644)
				os.Chmod(filepath.Join(x, "sub"), 0o555)
				os.Chmod(filepath.Join(x, "sub"), 0o755)
				os.RemoveAll(x)
			}
			os.Symlink(victim, x)
			os.Remove(x)
			os.Symlink(victim, x)
		}
	})
	fd, err := unix.Open(top, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	dirs := 0 // times removeAt met a directory to empty
	for deadline := time.Now().Add(300 * time.Millisecond); time.Now().Before(deadline); {
		var st unix.Stat_t
		if unix.Fstatat(fd, "x", &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			dirs++
		}
		removeAt(fd, "x")
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%d removals met a directory", dirs)
	var st unix.Stat_t
	if err := unix.Stat(victim, &st); err != nil || st.Mode&0o7777 != 0o555 {
		t.Errorf("victim: mode %o, %v", st.Mode&0o7777, err)
	}
	if err := unix.Stat(filepath.Join(victim, "sub"), &st); err != nil || st.Mode&0o7777 != 0o555 {
		t.Errorf("victim/sub: mode %o, %v", st.Mode&0o7777, err)
	}
	if data, err := os.ReadFile(filepath.Join(victim, "keep")); err != nil || string(data) != "keep\n" {
		t.Errorf("victim/keep: %q %v", data, err)
	}
}

// TestFailedOutputs: the outputs of a failed build, made world-writable,
// are never left where others can modify them: on the host they are
// removed from the store dir (kept: made the daemon's and read-only); in
// the sandbox they never leave the 0700 builds dir.
func TestFailedOutputs(t *testing.T) {
	for _, m := range buildModes() {
		for _, keep := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/keep=%v", m.name, keep), func(t *testing.T) {
				ctx := context.Background()
				st, b, opts := m.setup(t, Config{})
				opts.KeepFailed = keep
				p := addDrv(t, st, "open-output", hostPath+`mkdir $out; echo x > $out/f; chmod 666 $out/f; chmod 777 $out; exit 1`, nil, nil)
				b.Build(ctx, []Target{{Drv: p}}, opts, nil)
				real := st.RealPath(outPath(t, st, p, "out"))
				var fst unix.Stat_t
				err := unix.Lstat(real, &fst)
				if m.sandbox || !keep {
					if !errors.Is(err, unix.ENOENT) {
						t.Errorf("%s: %v, want it gone", real, err)
					}
					return
				}
				if err != nil {
					t.Fatalf("kept output: %v", err)
				}
				for _, f := range []string{real, real + "/f"} {
					unix.Lstat(f, &fst)
					if int(fst.Uid) != os.Geteuid() || fst.Mode&0o222 != 0 {
						t.Errorf("kept %s: owner %d mode %o, want the daemon's, read-only", f, fst.Uid, fst.Mode&0o7777)
					}
				}
			})
		}
	}
}

// TestInsideProperties: what a build sees, asserted from inside it: host
// name, ids, /etc, network interfaces, processes, and no host path outside
// its closure.
func TestInsideProperties(t *testing.T) {
	modes := []buildMode{{name: "rootless"}}
	if os.Geteuid() == 0 {
		modes = []buildMode{{name: "pool", users: true}, {name: "root"}}
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			requireSandbox(t)
			ctx := context.Background()
			st := testStore(t) // a chroot store: /nix/store inside
			cfg := Config{CgroupParent: testCgroup(t)}
			if m.users {
				pool(t)
				cfg.BuildUsersGroup = testPool
			}
			b, err := NewWithConfig(st, cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(b.Close)
			marker, err := os.CreateTemp("", "cairn-host-marker-")
			if err != nil {
				t.Fatal(err)
			}
			marker.Close()
			t.Cleanup(func() { os.Remove(marker.Name()) })

			dep := addDrv(t, st, "dep", "echo dep > $out", nil, nil)
			other := addDrv(t, st, "other", "echo other > $out", nil, nil)
			res, err := b.Build(ctx, []Target{{Drv: dep}, {Drv: other}}, testOptions(), nil)
			if err != nil || res[0].Status != Built || res[1].Status != Built {
				t.Fatalf("inputs: %v %v", err, res)
			}
			depOut, otherOut := res[0].Outputs["out"], res[1].Outputs["out"]
			hostPaths := []string{"/etc/shadow", "/etc/machine-id", "/root", "/home", "/var", "/usr", "/sys", "/run", "/boot", "/opt",
				marker.Name(), st.StateDir(), st.RealStoreDir(), otherOut.String(), "/proc/1/root/etc/shadow"}
			script := fmt.Sprintf(`mkdir $out; cd $out
hostname > hostname
id -u > uid; id -g > gid
echo /proc/[0-9]* > procs
ls / > root; ls /etc > etc
cat /etc/passwd > passwd; cat /etc/group > group; cat /etc/hosts > hosts
cat /proc/net/dev > netdev
read x < $dep; echo $x > dep
for p in %s; do if [ -e $p ]; then echo $p; fi; done > readable
true`, strings.Join(hostPaths, " "))
			p := addDrv(t, st, "inside", script, map[storepath.StorePath][]string{dep: {"out"}}, map[string]string{"dep": depOut.String()})
			res, err = b.Build(ctx, []Target{{Drv: p}}, testOptions(), nil)
			if err != nil || res[0].Status != Built {
				t.Fatalf("build: %v %v", err, res[0].Err)
			}
			out := res[0].Outputs["out"]
			read := func(name string) string {
				data, err := os.ReadFile(filepath.Join(st.RealPath(out), name))
				if err != nil {
					t.Fatal(err)
				}
				return string(data)
			}
			for name, want := range map[string]string{
				"hostname": "localhost\n",
				"uid":      "1000\n",
				"gid":      "100\n",
				"procs":    "/proc/1\n", // the builder alone: PID 1 of its namespace
				"root":     "bin\nbuild\ndev\netc\nnix\nproc\ntmp\n",
				"etc":      "group\nhosts\npasswd\n",
				"passwd":   "root:x:0:0:Nix build user:/build:/noshell\nnixbld:x:1000:100:Nix build user:/build:/noshell\nnobody:x:65534:65534:Nobody:/:/noshell\n",
				"group":    "root:x:0:\nnixbld:!:100:\nnogroup:x:65534:\n",
				"hosts":    "127.0.0.1 localhost\n::1 localhost\n",
				"dep":      "dep\n",
				"readable": "",
			} {
				if got := read(name); got != want {
					t.Errorf("%s = %q, want %q", name, got, want)
				}
			}
			var ifaces []string
			for _, l := range strings.Split(read("netdev"), "\n")[2:] {
				if name, _, ok := strings.Cut(l, ":"); ok {
					ifaces = append(ifaces, strings.TrimSpace(name))
				}
			}
			if !slices.Equal(ifaces, []string{"lo"}) {
				t.Errorf("interfaces %v, want only lo", ifaces)
			}
		})
	}
}

// readIn reads the file name in the output p.
func readIn(t testing.TB, st *local.Store, p storepath.StorePath, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(st.RealPath(p), name))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestRootlessBuild runs the identity, cgroup and escape tests again as an
// unprivileged daemon (the cairnbuild user): once in a cgroup delegated to
// it (its builds get cgroups of their own), once without (the PID
// namespace alone holds a sandboxed build; a build on the host has only its
// process group).
func TestRootlessBuild(t *testing.T) {
	requireRoot(t)
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	uid, gid, err := testuser.Ensure()
	if err != nil {
		t.Skipf("no unprivileged user: %v", err)
	}
	victimDir := makeVictims(t)
	for _, delegated := range []bool{true, false} {
		name := "no-cgroup"
		if delegated {
			name = "delegated-cgroup"
		}
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command("/proc/self/exe", "-test.run=^(TestInsideProperties|TestDaemonize|TestEscape.*|TestFailedOutputs)$", "-test.v", "-test.count=1")
			tmp := t.TempDir()
			if err := os.Chown(tmp, uid, gid); err != nil {
				t.Fatal(err)
			}
			os.Chmod(filepath.Dir(tmp), 0o755)
			cmd.Env = []string{"TMPDIR=" + tmp, "PATH=/usr/bin:/bin", "CAIRN_TEST_VICTIMS=" + victimDir}
			cmd.Dir = "/"
			attr := &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
			if delegated {
				dir := delegate(t, uid, gid)
				if dir == "" {
					t.Skip("no cgroup to delegate")
				}
				fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer unix.Close(fd)
				attr.UseCgroupFD, attr.CgroupFD = true, fd
			}
			cmd.SysProcAttr = attr
			out, err := cmd.CombinedOutput()
			t.Logf("as cairnbuild (uid %d):\n%s", uid, out)
			if err != nil {
				t.Fatalf("rootless tests: %v", err)
			}
			if !bytes.Contains(out, []byte("--- PASS: TestInsideProperties")) {
				t.Errorf("the rootless sandbox did not run")
			}
		})
	}
}

// delegate makes a cgroup uid may manage (as systemd's Delegate=yes does:
// the directory and its cgroup.procs, cgroup.threads and
// cgroup.subtree_control are the user's), removed after the test; "" when
// there is no cgroup to make it in.
func delegate(t *testing.T, uid, gid int) string {
	parent, err := sandbox.DetectCgroup()
	if err != nil {
		return ""
	}
	dir, err := os.MkdirTemp(parent, "cairn-test-delegated-")
	if err != nil {
		return ""
	}
	t.Cleanup(func() {
		// What the user's processes started (the sandbox's spawner) dies
		// by its parent-death signal, a moment after the test process.
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if ev, err := os.ReadFile(filepath.Join(dir, "cgroup.events")); err != nil || bytes.Contains(ev, []byte("populated 0")) {
				break
			}
		}
		if err := os.Remove(dir); err != nil {
			t.Errorf("delegated cgroup: %v (left: %v)", err, buildCgroups(dir))
		}
	})
	for _, f := range []string{"", "cgroup.procs", "cgroup.threads", "cgroup.subtree_control"} {
		if err := os.Chown(filepath.Join(dir, f), uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
