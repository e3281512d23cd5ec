package sandbox

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Init is the sandbox's init: `cairn sandbox-init` calls it. It reads the
// Spec from its parent, sets the sandbox up and executes the command, so it
// returns only when something failed; the failure has then been reported to
// the parent too, and the caller should exit non-zero.
func Init() error {
	if !IsInit() {
		return errNotInit
	}
	switch os.Getenv(initEnv) {
	case killUserMode:
		return killAll()
	case hostMode:
		return hostExec()
	case spawnerMode:
		return runSpawner()
	}
	runtime.LockOSThread() // namespaces, creds, no_new_privs and seccomp are per thread
	if _, err := unix.GetsockoptInt(channelFD, unix.SOL_SOCKET, unix.SO_TYPE); err != nil {
		return fmt.Errorf("sandbox-init: fd %d is not the channel: %w", channelFD, err)
	}
	unix.CloseOnExec(channelFD)
	err := initSandbox()
	writeAll(channelFD, encodeReport(err))
	return err
}

// fail wraps err as the failure of a named step.
func fail(step string, err error) error {
	if err == nil {
		return nil
	}
	return &SetupError{Step: step, Err: err}
}

func readSpec() (*wireSpec, error) {
	var n [4]byte
	logFD, err := readFirst(n[:])
	if err != nil {
		return nil, fail("read spec", err)
	}
	size := binary.BigEndian.Uint32(n[:])
	if size > MaxSpecSize {
		return nil, fail("read spec", fmt.Errorf("%d bytes (limit %d)", size, MaxSpecSize))
	}
	buf := make([]byte, size)
	if err := readFull(channelFD, buf); err != nil {
		return nil, fail("read spec", err)
	}
	var w wireSpec
	if err := json.Unmarshal(buf, &w); err != nil || w.Spec == nil {
		return nil, fail("read spec", fmt.Errorf("bad spec: %v", err))
	}
	if err := w.Spec.Validate(); err != nil {
		return nil, err
	}
	if w.LogFD != (logFD >= 0) {
		return nil, fail("read spec", errors.New("the log's descriptor and the spec disagree"))
	}
	if logFD >= 0 {
		for _, to := range []int{1, 2} {
			if err := unix.Dup3(logFD, to, 0); err != nil {
				return nil, fail("take the log", err)
			}
		}
		unix.Close(logFD)
	}
	return &w, nil
}

// readFirst fills p from the channel, keeping a descriptor that came with the
// first bytes (-1 when none did).
func readFirst(p []byte) (int, error) {
	oob := make([]byte, unix.CmsgSpace(4))
	for {
		n, oobn, _, _, err := unix.Recvmsg(channelFD, p, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return -1, err
		}
		if n == 0 {
			return -1, io.ErrUnexpectedEOF
		}
		fd := -1
		if oobn > 0 {
			msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
			if err != nil {
				return -1, err
			}
			for _, m := range msgs {
				fds, err := unix.ParseUnixRights(&m)
				if err != nil {
					return -1, err
				}
				for _, f := range fds {
					if fd < 0 {
						fd = f
					} else {
						unix.Close(f)
					}
				}
			}
		}
		if err := readFull(channelFD, p[n:]); err != nil {
			return -1, err
		}
		return fd, nil
	}
}

// mountReq is one mount into the new root, in target order.
type mountReq struct {
	target string // absolute, inside
	tree   int    // detached bind (open_tree), or -1
	isDir  bool
	tmpfs  *Tmpfs
}

var devNodes = []string{"null", "zero", "full", "random", "urandom", "tty"}

// early is what init knows of its sandbox before the spec comes: the shape
// of the spare (see shapeOf), from the environment. It lets a pooled init
// do, while it waits, every step that does not depend on its build.
type early struct {
	Root       string `json:"root"`
	RootSize   int64  `json:"root_size,omitempty"`
	ShmSize    string `json:"shm_size,omitempty"`
	Hostname   string `json:"hostname,omitempty"`
	Domainname string `json:"domainname,omitempty"`
	UID        int    `json:"uid"`
	GID        int    `json:"gid"`
	UserNS     bool   `json:"user_ns,omitempty"`
	Setgroups  bool   `json:"setgroups,omitempty"`
}

func earlyOf(s *Spec) early {
	return early{Root: s.Root, RootSize: s.RootSize, ShmSize: s.ShmSize, Hostname: s.Hostname, Domainname: s.Domainname,
		UID: s.UID, GID: s.GID, UserNS: s.userNS(), Setgroups: s.Setgroups}
}

// setup is init's state between the early steps and the spec's.
type setup struct {
	e      early
	devs   []mountReq // the device nodes, cloned from the host's /dev
	rootFD int        // the new root, once mounted; -1 before
	t      *tree
}

func initSandbox() error {
	var e early
	if err := json.Unmarshal([]byte(os.Getenv(earlyEnv)), &e); err != nil {
		return fail("read shape", err)
	}
	st := &setup{e: e, rootFD: -1}
	if err := st.before(); err != nil {
		return err
	}
	w, err := readSpec()
	if err != nil {
		return err
	}
	if got := earlyOf(w.Spec); got != e {
		return fail("read spec", fmt.Errorf("spec %+v does not match init's shape %+v", got, e))
	}
	return st.finish(w)
}

const (
	mountRO     = unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV
	mountRW     = unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV
	mountDevice = unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NOEXEC
)

// cloneMount clones src into a detached mount with attr set, for target.
// optional: a missing src is skipped (ok false).
func cloneMount(src, target string, attr uint64, optional bool) (m mountReq, ok bool, err error) {
	tree, err := unix.OpenTree(unix.AT_FDCWD, src,
		unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	if err != nil {
		if optional && errors.Is(err, unix.ENOENT) {
			return m, false, nil
		}
		if errors.Is(err, unix.ENOSYS) {
			err = fmt.Errorf("%w (Linux 5.12 or later needed)", err)
		}
		return m, false, fail("bind "+src, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(tree, &st); err != nil {
		unix.Close(tree)
		return m, false, fail("bind "+src, err)
	}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE,
		&unix.MountAttr{Attr_set: attr}); err != nil {
		unix.Close(tree)
		return m, false, fail("set attributes of bind "+src, err)
	}
	return mountReq{target: target, tree: tree, isDir: st.Mode&unix.S_IFMT == unix.S_IFDIR}, true, nil
}

// before takes the steps that need nothing from the spec: namespaces made
// private, the device nodes cloned, host name and loopback set, and, when
// init already has the build's ids (no build user to switch to), the root
// tmpfs with /proc and /dev. A pooled init takes them while it waits.
func (st *setup) before() error {
	e := st.e
	unix.Umask(0o022)
	if err := unix.Unshare(unix.CLONE_NEWCGROUP); err != nil {
		return fail("unshare cgroup namespace", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fail("make mounts private", err)
	}
	for _, name := range devNodes {
		m, ok, err := cloneMount("/dev/"+name, "/dev/"+name, mountDevice, name == "tty")
		if err != nil {
			return err
		}
		if ok {
			st.devs = append(st.devs, m)
		}
	}
	hostname, domain := e.Hostname, e.Domainname
	if hostname == "" {
		hostname = "localhost"
	}
	if domain == "" {
		domain = "(none)"
	}
	if err := unix.Sethostname([]byte(hostname)); err != nil {
		return fail("set host name", err)
	}
	if err := unix.Setdomainname([]byte(domain)); err != nil {
		return fail("set domain name", err)
	}
	if err := loopbackUp(); err != nil {
		return fail("bring up loopback", err)
	}
	// Switching to a build user's ids would lock init out of the daemon's
	// private directories, whose binds come with the spec: then the root
	// waits for them.
	if !e.UserNS || (unix.Getuid() == e.UID && unix.Getgid() == e.GID) {
		return st.makeRoot()
	}
	return nil
}

// makeRoot mounts the root tmpfs and, under it, /proc and /dev. In a user
// namespace init takes the build's ids first: files made on the root need
// owners mapped in the namespace.
func (st *setup) makeRoot() error {
	e := st.e
	size := e.RootSize
	if size == 0 {
		size = 16 << 20
	}
	opts := "mode=0755,size=" + strconv.FormatInt(size, 10)
	if e.UserNS {
		opts += ",uid=" + strconv.Itoa(e.UID) + ",gid=" + strconv.Itoa(e.GID)
	}
	if err := unix.Mount("tmpfs", e.Root, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return fail("mount root tmpfs on "+e.Root, err)
	}
	rootFD, err := unix.Open(e.Root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fail("open root", err)
	}
	st.rootFD = rootFD
	if e.UserNS {
		if err := switchIDs(e); err != nil {
			return err
		}
	}
	t := &tree{root: rootFD, dirs: map[string]int{}}
	st.t = t
	if err := t.mountFS("/proc", "proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return err
	}
	if err := t.mountFS("/dev", "tmpfs", "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0755,size=65536"); err != nil {
		return err
	}
	for _, m := range st.devs {
		if err := t.attach(m); err != nil {
			return err
		}
	}
	st.devs = nil
	if err := t.mountFS("/dev/pts", "devpts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC,
		"newinstance,ptmxmode=0666,mode=0620"); err != nil {
		return err
	}
	shmOpts := "mode=01777"
	if st.e.ShmSize != "" {
		shmOpts += ",size=" + st.e.ShmSize
	}
	if err := t.mountFS("/dev/shm", "tmpfs", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, shmOpts); err != nil {
		return err
	}
	devFD, err := t.dir("dev")
	if err != nil {
		return fail("open /dev", err)
	}
	for _, l := range [][2]string{
		{"ptmx", "pts/ptmx"}, {"fd", "/proc/self/fd"},
		{"stdin", "/proc/self/fd/0"}, {"stdout", "/proc/self/fd/1"}, {"stderr", "/proc/self/fd/2"},
	} {
		if err := unix.Symlinkat(l[1], devFD, l[0]); err != nil {
			return fail("symlink /dev/"+l[0], err)
		}
	}
	return nil
}

// finish builds the rest of the root from the spec and executes the command.
func (st *setup) finish(w *wireSpec) error {
	s := w.Spec
	userNS := s.userNS()

	// With the ids init started with, clone every source into a detached
	// mount: the daemon's private directories are reachable now, and may
	// not be after a switch to a build user's ids.
	var mounts []mountReq
	clone := func(src, target string, attr uint64, optional bool) error {
		m, ok, err := cloneMount(src, target, attr, optional)
		if ok {
			mounts = append(mounts, m)
		}
		return err
	}
	for _, b := range s.Binds {
		attr := uint64(mountRO)
		if b.Writable {
			attr = mountRW
		}
		if err := clone(b.Source, b.Target, attr, b.Optional); err != nil {
			return err
		}
	}
	if s.BuildDir != "" {
		if err := clone(s.BuildDir, s.BuildDirTarget, mountRW, false); err != nil {
			return err
		}
	}
	for i := range s.Tmpfs {
		mounts = append(mounts, mountReq{target: s.Tmpfs[i].Target, tree: -1, isDir: true, tmpfs: &s.Tmpfs[i]})
	}
	if st.rootFD < 0 {
		if err := st.makeRoot(); err != nil {
			return err
		}
	}
	t, rootFD := st.t, st.rootFD
	for _, f := range s.Files {
		if err := t.writeFile(f); err != nil {
			return err
		}
	}
	sort.SliceStable(mounts, func(i, j int) bool { return mounts[i].target < mounts[j].target })
	for _, m := range mounts {
		if err := t.attach(m); err != nil {
			return err
		}
	}
	// The root and /dev are read-only (not their submounts).
	devMount, err := t.dir("dev")
	if err != nil {
		return fail("open /dev", err)
	}
	for _, m := range []struct {
		fd   int
		name string
	}{{devMount, "/dev"}, {rootFD, "/"}} {
		if err := unix.MountSetattr(m.fd, "", unix.AT_EMPTY_PATH,
			&unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}); err != nil {
			return fail("make "+m.name+" read-only", err)
		}
	}
	t.closeAll()

	if err := unix.Fchdir(rootFD); err != nil {
		return fail("chdir to root", err)
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fail("pivot_root", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fail("detach old root", err)
	}
	unix.Close(rootFD)
	dir := s.Command.Dir
	if dir == "" {
		dir = "/"
	}
	if err := unix.Chdir(dir); err != nil {
		return fail("chdir "+dir, err)
	}

	for _, r := range s.Rlimits {
		lim := syscall.Rlimit{Cur: r.Soft, Max: r.Hard}
		if err := syscall.Setrlimit(rlimitResource(r.Resource), &lim); err != nil {
			return fail("setrlimit "+r.Resource, err)
		}
	}
	if w.Wait {
		var b [1]byte
		if err := readFull(channelFD, b[:]); err != nil || b[0] != msgGo {
			return fail("wait for parent", fmt.Errorf("no go-ahead (%v)", err))
		}
	}
	if !userNS {
		if err := switchIDs(st.e); err != nil {
			return err
		}
	}
	// Credential changes clear the parent-death signal.
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		return fail("set parent-death signal", err)
	}
	if err := s.Command.privileges(true); err != nil {
		return fail("set no_new_privs or install seccomp filter", err)
	}
	if err := dropCapabilities(); err != nil {
		return fail("drop capabilities", err)
	}
	if err := setPersonality(s.Command.Personality); err != nil {
		return fail("set personality", err)
	}
	if err := s.Command.privileges(false); err != nil {
		return fail("install seccomp filter", err)
	}
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return fail("close inherited fds", err)
	}
	if err := writeAll(channelFD, []byte{msgExec}); err != nil {
		return fail("report exec", err)
	}
	err = syscall.Exec(s.Command.Path, s.Command.Args, s.Command.Env)
	return fail("exec "+s.Command.Path, err)
}

// setPersonality ORs p into this thread's personality (what the exec
// keeps), with p's persona, if any, in place of the current one.
func setPersonality(p uint32) error {
	if p == 0 {
		return nil
	}
	cur, _, e := unix.RawSyscall(unix.SYS_PERSONALITY, 0xffffffff, 0, 0)
	if e != 0 {
		return e
	}
	next := uint32(cur) | p&^0xff
	if p&0xff != 0 {
		next = next&^0xff | p&0xff
	}
	if _, _, e := unix.RawSyscall(unix.SYS_PERSONALITY, uintptr(next), 0, 0); e != 0 {
		return e
	}
	return nil
}

// switchIDs makes init's thread the build's user: supplementary groups
// dropped (when allowed), then gid, then uid. Only this thread: it is the one
// that executes the command, and asking every thread of the Go runtime
// (syscall.Setresuid) costs up to 100 ms when some are asleep.
func switchIDs(s early) error {
	if !s.UserNS || s.Setgroups {
		if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, 0, 0, 0); e != 0 {
			return fail("setgroups", e)
		}
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(s.GID), uintptr(s.GID), uintptr(s.GID)); e != 0 {
		return fail("setgid "+strconv.Itoa(s.GID), e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(s.UID), uintptr(s.UID), uintptr(s.UID)); e != 0 {
		return fail("setuid "+strconv.Itoa(s.UID), e)
	}
	return nil
}

// dropCapabilities empties this thread's ambient, inheritable, permitted and
// effective sets; execve then grants none (no_new_privs keeps file
// capabilities and set-id bits from granting any).
func dropCapabilities() error {
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil &&
		!errors.Is(err, unix.EINVAL) {
		return err
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	return unix.Capset(&hdr, &data[0])
}

// privileges installs what c asks for of the seccomp filter and
// no_new_privs; the filter without no_new_privs needs CAP_SYS_ADMIN, so
// call it with early set before the capabilities are dropped, and again
// (early unset) after.
func (c *Command) privileges(early bool) error {
	switch {
	case c.NoSyscallFilter:
		return nil
	case c.NewPrivileges:
		if early {
			return installFilter()
		}
		return nil
	case early:
		return unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
	}
	return installFilter()
}

func installFilter() error {
	prog, err := Filter(runtime.GOARCH)
	if err != nil {
		return err
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	return unix.Prctl(unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, uintptr(unsafe.Pointer(&fprog)), 0, 0)
}

func rlimitResource(name string) int {
	return map[string]int{
		"as": unix.RLIMIT_AS, "core": unix.RLIMIT_CORE, "cpu": unix.RLIMIT_CPU,
		"data": unix.RLIMIT_DATA, "fsize": unix.RLIMIT_FSIZE, "memlock": unix.RLIMIT_MEMLOCK,
		"nofile": unix.RLIMIT_NOFILE, "nproc": unix.RLIMIT_NPROC, "stack": unix.RLIMIT_STACK,
	}[name]
}

// loopbackUp sets IFF_UP on "lo", the only interface of a new network
// namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// tree makes mount points and files under the new root through directory
// fds, never following a symlink, so nothing already in a bound directory
// can redirect a mount outside the root.
type tree struct {
	root int
	dirs map[string]int // relative dir → O_PATH fd
}

func (t *tree) closeAll() {
	for _, fd := range t.dirs {
		unix.Close(fd)
	}
	clear(t.dirs)
}

// dir opens (making as needed) the relative directory rel; "" or "." is the root.
func (t *tree) dir(rel string) (int, error) {
	if rel == "" || rel == "." {
		return t.root, nil
	}
	if fd, ok := t.dirs[rel]; ok {
		return fd, nil
	}
	parent, err := t.dir(path.Dir(rel))
	if err != nil {
		return -1, err
	}
	name := path.Base(rel)
	if err := unix.Mkdirat(parent, name, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
		return -1, err
	}
	fd, err := unix.Openat(parent, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	t.dirs[rel] = fd
	return fd, nil
}

// forget drops cached fds at and below rel: a mount there hides them.
func (t *tree) forget(rel string) {
	for d, fd := range t.dirs {
		if d == rel || strings.HasPrefix(d, rel+"/") {
			unix.Close(fd)
			delete(t.dirs, d)
		}
	}
}

// mountPoint makes (or finds) the directory or file target and returns an
// O_PATH fd of it, which the caller closes.
func (t *tree) mountPoint(target string, isDir bool) (int, error) {
	rel := target[1:]
	parent, err := t.dir(path.Dir(rel))
	if err != nil {
		return -1, err
	}
	name := path.Base(rel)
	flags := unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC
	if isDir {
		if err := unix.Mkdirat(parent, name, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			return -1, err
		}
		flags |= unix.O_DIRECTORY
	} else if err := unix.Mknodat(parent, name, unix.S_IFREG|0o644, 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return -1, err
	}
	fd, err := unix.Openat(parent, name, flags, 0)
	if err != nil {
		return -1, err
	}
	if !isDir {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			unix.Close(fd)
			return -1, fmt.Errorf("mount point is not a regular file")
		}
	}
	return fd, nil
}

// attach puts a detached bind or a new tmpfs at m.target.
func (t *tree) attach(m mountReq) error {
	if m.tmpfs != nil {
		mode := m.tmpfs.Mode
		if mode == 0 {
			mode = 0o1777
		}
		opts := "mode=" + strconv.FormatUint(uint64(mode), 8)
		if m.tmpfs.Size > 0 {
			opts += ",size=" + strconv.FormatInt(m.tmpfs.Size, 10)
		}
		return t.mountFS(m.target, "tmpfs", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts)
	}
	fd, err := t.mountPoint(m.target, m.isDir)
	if err != nil {
		return fail("mount point "+m.target, err)
	}
	defer unix.Close(fd)
	err = unix.MoveMount(m.tree, "", fd, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH)
	unix.Close(m.tree)
	if err != nil {
		return fail("mount "+m.target, err)
	}
	t.forget(m.target[1:])
	return nil
}

// mountFS mounts a new file system on the directory target.
func (t *tree) mountFS(target, source, fstype string, flags uintptr, data string) error {
	fd, err := t.mountPoint(target, true)
	if err != nil {
		return fail("mount point "+target, err)
	}
	defer unix.Close(fd)
	if err := unix.Mount(source, "/proc/self/fd/"+strconv.Itoa(fd), fstype, flags, data); err != nil {
		return fail("mount "+target, err)
	}
	t.forget(target[1:])
	return nil
}

func (t *tree) writeFile(f File) error {
	rel := f.Path[1:]
	parent, err := t.dir(path.Dir(rel))
	if err != nil {
		return fail("write "+f.Path, err)
	}
	mode := f.Mode
	if mode == 0 {
		mode = 0o644
	}
	fd, err := unix.Openat(parent, path.Base(rel), unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
	if err != nil {
		return fail("write "+f.Path, err)
	}
	defer unix.Close(fd)
	if err := writeAll(fd, f.Content); err != nil {
		return fail("write "+f.Path, err)
	}
	return fail("chmod "+f.Path, unix.Fchmod(fd, mode))
}

func readFull(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Read(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrUnexpectedEOF
		}
		b = b[n:]
	}
	return nil
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}
