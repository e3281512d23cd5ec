package sandbox

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// DetectCgroup returns the cgroup v2 directory the daemon may make build
// cgroups in: its own cgroup, when it can write there (as root, or in a
// delegated subtree). The error says why not; then builds have no cgroup of
// their own and Kill relies on the PID namespace alone.
func DetectCgroup() (string, error) {
	mnt, err := cgroup2Mount()
	if err != nil {
		return "", err
	}
	own, err := ownCgroup()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(mnt, own)
	if err := unix.Access(dir, unix.W_OK|unix.X_OK); err != nil {
		return "", fmt.Errorf("sandbox: cgroup %s: %w", dir, err)
	}
	return dir, nil
}

// cgroup2Mount finds where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup,
// or /sys/fs/cgroup/unified on hybrid systems).
func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("sandbox: cgroup: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options ... - fstype source super
		fields := strings.Fields(sc.Text())
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) && i >= 4 {
				if fields[i+1] == "cgroup2" {
					return unescapeMountinfo(fields[4]), nil
				}
				break
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("sandbox: cgroup: read mountinfo: %w", err)
	}
	return "", errors.New("sandbox: cgroup: no cgroup2 file system mounted")
}

func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ownCgroup is this process's cgroup v2 path ("0::/path" in /proc/self/cgroup).
func ownCgroup() (string, error) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("sandbox: cgroup: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p, nil
		}
	}
	return "", errors.New("sandbox: cgroup: not in a cgroup v2 hierarchy")
}

var cgroupSeq atomic.Uint64

// cgroupPrefix starts the name of every build cgroup Start and NewCgroup
// make: cairn-build-<pid>-<n>.
const cgroupPrefix = "cairn-build-"

// makeCgroup creates the build's cgroup, sets its limits and returns it with
// an fd for clone3's CLONE_INTO_CGROUP.
func makeCgroup(c Cgroup) (dir string, fd int, err error) {
	name := c.Name
	if name == "" {
		name = fmt.Sprintf("%s%d-%d", cgroupPrefix, os.Getpid(), cgroupSeq.Add(1))
	}
	dir = filepath.Join(c.Parent, name)
	if err := unix.Mkdir(dir, 0o755); err != nil {
		return "", -1, fmt.Errorf("sandbox: make cgroup %s: %w", dir, err)
	}
	fail := func(err error) (string, int, error) {
		unix.Rmdir(dir)
		return "", -1, err
	}
	limits := []struct {
		file, controller, value string
	}{
		{"memory.max", "memory", strconv.FormatInt(c.MemoryMax, 10)},
		{"pids.max", "pids", strconv.FormatInt(c.PidsMax, 10)},
		{"cpu.max", "cpu", c.CPUMax},
	}
	for _, l := range limits {
		if l.value == "0" || l.value == "" {
			continue
		}
		if err := writeCgroupFile(dir, l.file, l.value); errors.Is(err, os.ErrNotExist) {
			// Enable the controller for the parent's children, then retry.
			if err := writeCgroupFile(c.Parent, "cgroup.subtree_control", "+"+l.controller); err != nil {
				return fail(fmt.Errorf("sandbox: cgroup %s: enable %s controller: %w", c.Parent, l.controller, err))
			}
			err = writeCgroupFile(dir, l.file, l.value)
			if err != nil {
				return fail(fmt.Errorf("sandbox: cgroup %s: %w", l.file, err))
			}
		} else if err != nil {
			return fail(fmt.Errorf("sandbox: cgroup %s: %w", l.file, err))
		}
	}
	fd, err = unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fail(fmt.Errorf("sandbox: open cgroup %s: %w", dir, err))
	}
	return dir, fd, nil
}

func writeCgroupFile(dir, file, value string) error {
	f, err := os.OpenFile(filepath.Join(dir, file), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// killCgroup kills every process in the cgroup at once (Linux 5.14's
// cgroup.kill). On older kernels it does nothing: the PID namespace still
// takes the build down with its init.
func killCgroup(dir string) error {
	err := writeCgroupFile(dir, "cgroup.kill", "1")
	if err == nil || errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return fmt.Errorf("sandbox: kill cgroup %s: %w", dir, err)
}

// removeCgroup removes the build's cgroup once it is empty, killing what is
// left in it. Processes take a moment to leave after they die.
func removeCgroup(dir string) error {
	delay := 100 * time.Microsecond
	for deadline := time.Now().Add(5 * time.Second); ; {
		err := unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("sandbox: remove cgroup %s: %w", dir, err)
		}
		killCgroup(dir)
		time.Sleep(delay)
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// A HostCgroup is a build cgroup for processes started outside Start (a
// build that runs on the host, sandbox = false): start them straight into it
// with SysProcAttr.UseCgroupFD and CgroupFD = FD(), then Kill and Remove it
// when the build is over, whatever its processes did (setsid, double forks).
type HostCgroup struct {
	dir string
	fd  int
}

// NewCgroup makes a build cgroup under c.Parent, as Start does for a
// sandbox, with c's limits.
func NewCgroup(c Cgroup) (*HostCgroup, error) {
	if err := checkAbs(c.Parent); err != nil {
		return nil, fmt.Errorf("sandbox: cgroup parent %q: %w", c.Parent, err)
	}
	dir, fd, err := makeCgroup(c)
	if err != nil {
		return nil, err
	}
	return &HostCgroup{dir: dir, fd: fd}, nil
}

// Path is the cgroup's directory.
func (g *HostCgroup) Path() string { return g.dir }

// FD is an open descriptor of the cgroup's directory, for CLONE_INTO_CGROUP;
// it stays open until Remove.
func (g *HostCgroup) FD() int { return g.fd }

// Kill kills every process in the cgroup at once.
func (g *HostCgroup) Kill() error { return killCgroup(g.dir) }

// Remove kills whatever is left in the cgroup, waits for it to be empty and
// removes it.
func (g *HostCgroup) Remove() error {
	if g.fd >= 0 {
		unix.Close(g.fd)
		g.fd = -1
	}
	if err := killCgroup(g.dir); err != nil {
		return err
	}
	return removeCgroup(g.dir)
}

// RemoveStaleCgroups removes the build cgroups under parent that processes
// which no longer exist left behind (a daemon killed before it could remove
// them), killing what still runs in them. It returns how many it removed.
func RemoveStaleCgroups(parent string) (int, error) {
	ents, err := os.ReadDir(parent)
	if err != nil {
		return 0, fmt.Errorf("sandbox: stale cgroups: %w", err)
	}
	n := 0
	var errs []error
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), cgroupPrefix)
		if !ok || !e.IsDir() {
			continue
		}
		pidText, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if !ok || err != nil || pid <= 0 {
			continue
		}
		if err := unix.Kill(pid, 0); !errors.Is(err, unix.ESRCH) {
			continue // alive (or not ours to ask): leave it
		}
		dir := filepath.Join(parent, e.Name())
		killCgroup(dir)
		if err := removeCgroup(dir); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}
