package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"strings"
)

// Limits on a Spec. The child reads the Spec from its parent, but it is still
// bounded: a Spec is data and the child trusts nothing unbounded.
const (
	MaxSpecSize   = 16 << 20 // encoded JSON
	MaxMounts     = 50000    // binds + tmpfs mounts
	MaxFiles      = 1000
	MaxFileSize   = 1 << 20
	MaxArgs       = 100000 // args + env entries
	MaxPathLen    = 4095
	MaxMessageLen = 64 << 10 // one report from child to parent
)

// Spec describes one sandbox. It is plain data: everything but Log, Net and
// NetworkSetup crosses to the child as JSON.
type Spec struct {
	// Root is an existing empty directory, private to the caller. The child
	// mounts a tmpfs on it (in its own mount namespace) and builds the new
	// root there.
	Root string `json:"root"`
	// RootSize is the size of the root tmpfs in bytes (0: 16 MiB). It holds
	// only mount points and Files.
	RootSize int64 `json:"root_size,omitempty"`
	// ShmSize is the size of the /dev/shm tmpfs as tmpfs takes it (bytes,
	// a k, m or g suffix, or a % of memory); "" is tmpfs's default, 50%.
	ShmSize string `json:"shm_size,omitempty"`

	Binds []Bind  `json:"binds,omitempty"`
	Tmpfs []Tmpfs `json:"tmpfs,omitempty"`
	Files []File  `json:"files,omitempty"`

	// BuildDir is bound read-write at BuildDirTarget (e.g. /build). Empty:
	// none.
	BuildDir       string `json:"build_dir,omitempty"`
	BuildDirTarget string `json:"build_dir_target,omitempty"`

	// Hostname and Domainname default to "localhost" and "(none)".
	Hostname   string `json:"hostname,omitempty"`
	Domainname string `json:"domainname,omitempty"`

	// UID and GID the command runs as: inside the user namespace when there
	// are id maps, else host ids (the daemon is root).
	UID int `json:"uid"`
	GID int `json:"gid"`
	// UIDMap and GIDMap, when set, put the build in a new user namespace.
	// Every id must be mapped, including the parent's own uid/gid unless
	// the parent is root.
	UIDMap []IDMap `json:"uid_map,omitempty"`
	GIDMap []IDMap `json:"gid_map,omitempty"`
	// Setgroups lets init call setgroups in the user namespace to drop the
	// daemon's supplementary groups; only a root parent may allow it.
	Setgroups bool `json:"setgroups,omitempty"`

	Command Command `json:"command"`

	Rlimits []Rlimit `json:"rlimits,omitempty"`
	Cgroup  Cgroup   `json:"cgroup"`

	// Log receives the command's stdout and stderr (and init's own
	// messages). An *os.File is passed straight through. Nil: discarded.
	Log io.Writer `json:"-"`
	// NetworkSetup, when set, runs in the parent after the child exists and
	// before the command is executed. pid is init's pid in the caller's PID
	// namespace; /proc/<pid>/ns/net is the build's network namespace, which
	// otherwise has only loopback. It is the hook for a user-mode network
	// stack for fixed-output builds.
	NetworkSetup func(ctx context.Context, pid int) error `json:"-"`
	// Net, when set, gives the sandbox's network namespace a user-mode
	// network stack (see Net; LookNet finds one). It is attached before
	// NetworkSetup runs and stopped by Wait.
	Net *Net `json:"-"`
	// Hold makes Start return once init has the spec (and the network, if
	// any, is attached), before the command is executed: init sets the
	// sandbox up and waits for Process.Go. A caller that limits how many
	// commands run at once can so set up the next sandbox while the last
	// command runs.
	Hold bool `json:"-"`
}

// Bind is a bind mount from the host into the root.
type Bind struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	Writable bool   `json:"writable,omitempty"`
	// Optional binds are skipped when Source does not exist.
	Optional bool `json:"optional,omitempty"`
}

// Tmpfs is a fresh tmpfs mounted at Target.
type Tmpfs struct {
	Target string `json:"target"`
	Size   int64  `json:"size,omitempty"` // bytes; 0: the kernel default (half of RAM)
	Mode   uint32 `json:"mode,omitempty"` // 0: 01777
}

// File is written into the root tmpfs (parents made as needed).
type File struct {
	Path    string `json:"path"`
	Content []byte `json:"content"`
	Mode    uint32 `json:"mode,omitempty"` // 0: 0644
}

// IDMap maps Count ids starting at Inside to ids starting at Outside.
type IDMap struct {
	Inside  int `json:"inside"`
	Outside int `json:"outside"`
	Count   int `json:"count"`
}

// Command is what runs in the sandbox.
type Command struct {
	Path string   `json:"path"` // absolute, inside the sandbox
	Args []string `json:"args"` // Args[0] included
	Env  []string `json:"env"`  // exactly this; nothing is inherited
	Dir  string   `json:"dir"`  // absolute, inside the sandbox; "" means /
	// Personality is OR-ed into the process's personality before the
	// exec (ADDR_NO_RANDOMIZE, UNAME26); a persona in its low byte
	// (PER_LINUX32) replaces the current one.
	Personality uint32 `json:"personality,omitempty"`
	// NoSyscallFilter runs the command without the seccomp filter and so,
	// as in Nix, without no_new_privs (filter-syscalls = false).
	NoSyscallFilter bool `json:"no_syscall_filter,omitempty"`
	// NewPrivileges installs the filter without no_new_privs, so that
	// set-id programs and file capabilities work (allow-new-privileges).
	NewPrivileges bool `json:"new_privileges,omitempty"`
}

// Rlimit is applied with setrlimit before the command starts. Resource is
// one of "as", "core", "cpu", "data", "fsize", "memlock", "nofile",
// "nproc", "stack".
type Rlimit struct {
	Resource string `json:"resource"`
	Soft     uint64 `json:"soft"`
	Hard     uint64 `json:"hard"`
}

// Cgroup puts the build in its own cgroup v2 directory, created under Parent
// (a directory the daemon may write: as root, or a delegated subtree; see
// DetectCgroup) and removed after Wait. With no Parent the build has no
// cgroup of its own: the PID namespace alone holds it together.
type Cgroup struct {
	Parent    string `json:"parent,omitempty"`
	Name      string `json:"name,omitempty"`       // "": cairn-build-<pid>-<n>
	MemoryMax int64  `json:"memory_max,omitempty"` // bytes, memory.max
	PidsMax   int64  `json:"pids_max,omitempty"`   // pids.max
	CPUMax    string `json:"cpu_max,omitempty"`    // cpu.max, e.g. "200000 100000"
}

var rlimitNames = map[string]bool{
	"as": true, "core": true, "cpu": true, "data": true, "fsize": true,
	"memlock": true, "nofile": true, "nproc": true, "stack": true,
}

// userNS reports whether the spec asks for a user namespace.
func (s *Spec) userNS() bool { return len(s.UIDMap) > 0 || len(s.GIDMap) > 0 }

// Validate checks the Spec's shape: absolute clean paths, bounded sizes,
// known rlimits. It does not touch the file system.
// shmSizeRE is what ShmSize may be: a tmpfs size, nothing that could add
// another mount option.
var shmSizeRE = regexp.MustCompile(`^([0-9]+[kKmMgGtTpPeE%]?)?$`)

func (s *Spec) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("sandbox: spec: "+format, a...)
	}
	if err := checkAbs(s.Root); err != nil {
		return bad("root: %v", err)
	}
	if !shmSizeRE.MatchString(s.ShmSize) {
		return bad("/dev/shm size %q: not a size", s.ShmSize)
	}
	if len(s.Binds)+len(s.Tmpfs) > MaxMounts {
		return bad("%d mounts (limit %d)", len(s.Binds)+len(s.Tmpfs), MaxMounts)
	}
	for _, b := range s.Binds {
		if err := checkAbs(b.Source); err != nil {
			return bad("bind source %q: %v", b.Source, err)
		}
		if err := checkTarget(b.Target); err != nil {
			return bad("bind target %q: %v", b.Target, err)
		}
	}
	for _, m := range s.Tmpfs {
		if err := checkTarget(m.Target); err != nil {
			return bad("tmpfs target %q: %v", m.Target, err)
		}
		if m.Size < 0 || m.Mode > 0o7777 {
			return bad("tmpfs %q: bad size or mode", m.Target)
		}
	}
	if len(s.Files) > MaxFiles {
		return bad("%d files (limit %d)", len(s.Files), MaxFiles)
	}
	for _, f := range s.Files {
		if err := checkTarget(f.Path); err != nil {
			return bad("file %q: %v", f.Path, err)
		}
		if len(f.Content) > MaxFileSize || f.Mode > 0o777 {
			return bad("file %q: too large or bad mode", f.Path)
		}
	}
	if s.BuildDir != "" {
		if err := checkAbs(s.BuildDir); err != nil {
			return bad("build dir: %v", err)
		}
		if err := checkTarget(s.BuildDirTarget); err != nil {
			return bad("build dir target %q: %v", s.BuildDirTarget, err)
		}
	}
	if len(s.Hostname) > 64 || len(s.Domainname) > 64 {
		return bad("host or domain name longer than 64 bytes")
	}
	if s.UID < 0 || s.GID < 0 {
		return bad("negative uid or gid")
	}
	if s.userNS() {
		if !mapped(s.UIDMap, s.UID) {
			return bad("uid %d is not in the uid map", s.UID)
		}
		if !mapped(s.GIDMap, s.GID) {
			return bad("gid %d is not in the gid map", s.GID)
		}
	}
	for _, m := range append(append([]IDMap(nil), s.UIDMap...), s.GIDMap...) {
		if m.Inside < 0 || m.Outside < 0 || m.Count <= 0 {
			return bad("bad id map %+v", m)
		}
	}
	c := s.Command
	if err := checkAbs(c.Path); err != nil {
		return bad("command path: %v", err)
	}
	if len(c.Args) == 0 {
		return bad("command has no args (args[0] is needed)")
	}
	if len(c.Args)+len(c.Env) > MaxArgs {
		return bad("%d args and env entries (limit %d)", len(c.Args)+len(c.Env), MaxArgs)
	}
	if c.Dir != "" {
		if err := checkAbs(c.Dir); err != nil {
			return bad("command dir: %v", err)
		}
	}
	for _, r := range s.Rlimits {
		if !rlimitNames[r.Resource] {
			return bad("unknown rlimit %q", r.Resource)
		}
		if r.Soft > r.Hard {
			return bad("rlimit %s: soft above hard", r.Resource)
		}
	}
	if n := s.Net; n != nil {
		if n.Tool != NetPasta && n.Tool != NetSlirp4netns {
			return bad("unknown network stack %q", n.Tool)
		}
		if err := checkAbs(n.Path); err != nil {
			return bad("network stack path: %v", err)
		}
		if n.Dir != "" {
			if err := checkAbs(n.Dir); err != nil {
				return bad("network stack dir: %v", err)
			}
		}
		if n.Tool == NetPasta && !s.userNS() {
			// pasta drops its capabilities before it opens the
			// namespace, and then may not open a root process's.
			return bad("pasta needs a user namespace (id maps); slirp4netns does not")
		}
	}
	if s.Cgroup.Parent != "" {
		if err := checkAbs(s.Cgroup.Parent); err != nil {
			return bad("cgroup parent: %v", err)
		}
	}
	if n := s.Cgroup.Name; n != "" && (strings.ContainsAny(n, "/\x00") || n == "." || n == "..") {
		return bad("cgroup name %q", n)
	}
	return nil
}

func mapped(m []IDMap, id int) bool {
	for _, e := range m {
		if id >= e.Inside && id < e.Inside+e.Count {
			return true
		}
	}
	return false
}

var errNotAbs = errors.New("not an absolute clean path")

func checkAbs(p string) error {
	if len(p) > MaxPathLen {
		return errors.New("too long")
	}
	if !path.IsAbs(p) || path.Clean(p) != p || strings.IndexByte(p, 0) >= 0 {
		return errNotAbs
	}
	return nil
}

// checkTarget accepts absolute clean paths other than / and outside /proc
// (which init mounts itself).
func checkTarget(p string) error {
	if err := checkAbs(p); err != nil {
		return err
	}
	if p == "/" || p == "/proc" || strings.HasPrefix(p, "/proc/") {
		return errors.New("reserved")
	}
	return nil
}
