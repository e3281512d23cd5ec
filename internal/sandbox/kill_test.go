//go:build linux

package sandbox_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"cairn/internal/sandbox"
	"cairn/internal/testutil/proctest"
)

// forkTree is a build that leaves processes behind: background jobs, a
// double-forked one (reparented to init), and a sleep in front.
const forkTree = `for i in 1 2 3; do /bin/busybox sleep 1000 & done
( /bin/busybox sleep 1000 & )
/bin/busybox sh -c '/bin/busybox sleep 1000 & /bin/busybox sleep 1000' &
/bin/busybox sleep 1000`

func TestKill(t *testing.T) {
	for _, how := range []string{"Kill", "context"} {
		for _, m := range modes() {
			t.Run(how+"/"+m.name, func(t *testing.T) {
				f := newFixture(t, m, "/bin/busybox", "sh", "-c", forkTree)
				marker := "CAIRN_KILL_MARKER=" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
				f.spec.Command.Env = append(f.spec.Command.Env, marker)
				if dir, err := sandbox.DetectCgroup(); err == nil {
					f.spec.Cgroup.Parent = dir
				} else {
					t.Logf("no cgroup; the PID namespace alone holds the build: %v", err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				p := f.start(t, ctx)
				t.Logf("cgroup %q", p.Cgroup())

				// The shell, 3 sleeps, the orphan, the inner shell's two
				// (it execs its last command), the last sleep: 7.
				var pids []int
				for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
					if pids = proctest.WithEnv(marker); len(pids) >= 7 {
						break
					}
				}
				if len(pids) < 7 {
					p.Kill()
					t.Fatalf("only %d processes of the build started (%v)\n%s", len(pids), pids, f.log)
				}
				if how == "Kill" {
					if err := p.Kill(); err != nil {
						t.Errorf("Kill: %v", err)
					}
				} else {
					cancel()
				}
				st, err := p.Wait()
				if st.Signal != syscall.SIGKILL {
					t.Errorf("status %v, want killed by SIGKILL", st)
				}
				if how == "context" && err == nil {
					t.Errorf("Wait after cancel: no error")
				}
				// The namespace's init waits for its members, so nothing
				// should be left once Wait returns.
				if left := proctest.WithEnv(marker); len(left) > 0 {
					t.Errorf("survivors on the host: %v", left)
				}
				if p.Cgroup() != "" {
					if _, err := os.Stat(p.Cgroup()); !os.IsNotExist(err) {
						t.Errorf("cgroup %s not removed: %v", p.Cgroup(), err)
					}
				}
			})
		}
	}
}

func TestCgroup(t *testing.T) {
	dir, err := sandbox.DetectCgroup()
	if err != nil {
		t.Skipf("no cgroup for builds here: %v", err)
	}
	f := newFixture(t, modes()[0], "/bin/busybox", "cat", "/proc/self/cgroup")
	f.spec.Cgroup = sandbox.Cgroup{Parent: dir, Name: "cairn-test-" + strconv.Itoa(os.Getpid())}
	p := f.start(t, context.Background())
	want := filepath.Join(dir, f.spec.Cgroup.Name)
	if p.Cgroup() != want {
		t.Errorf("Cgroup() = %q, want %q", p.Cgroup(), want)
	}
	if st, err := p.Wait(); err != nil || !st.Success() {
		t.Fatalf("Wait: %v %v\n%s", st, err, f.log)
	}
	// Its own cgroup namespace: the build sees itself at the root.
	if got := f.log.String(); !strings.Contains(got, "0::/\n") {
		t.Errorf("/proc/self/cgroup inside:\n%s", got)
	}
	if _, err := os.Stat(want); !os.IsNotExist(err) {
		t.Errorf("cgroup not removed after Wait: %v", err)
	}
}
