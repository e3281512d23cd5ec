package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// hostMode is initEnv's value when init executes a command on the host
// (HostCommand); hostCmdEnv carries the command.
const (
	hostMode   = "host"
	hostCmdEnv = "CAIRN_SANDBOX_HOST_COMMAND"
)

// HostCommand returns a command that runs c on the host — no namespaces,
// no new root — behind the sandbox's seccomp filter (no setuid or setgid
// modes, no extended attributes) with no_new_privs, as Nix 2.8 runs a build
// with sandbox = false: init is started in a mode that installs the filter
// and executes c.Path with exactly c.Args and c.Env in c.Dir. The caller sets what
// any exec.Cmd has (stdio, SysProcAttr with credentials, cgroup,
// process group, parent-death signal). When ctx is done the command is
// killed as exec.CommandContext does.
func HostCommand(ctx context.Context, c Command) (*exec.Cmd, error) {
	return HostCommandAs(ctx, c, nil)
}

// HostIDs are a user's ids for HostCommandAs.
type HostIDs struct {
	UID    int   `json:"uid"`
	GID    int   `json:"gid"`
	Groups []int `json:"groups"`
}

// hostCommand is what init in HostCommand's mode reads.
type hostCommand struct {
	Command
	IDs *HostIDs `json:"ids,omitempty"`
}

// HostCommandAs is HostCommand for a command that runs as ids, which init
// (started with the caller's credentials, root) takes itself once the
// filter is installed: c.NewPrivileges needs that, as the filter without
// no_new_privs needs CAP_SYS_ADMIN. nil ids: the caller sets credentials.
func HostCommandAs(ctx context.Context, c Command, ids *HostIDs) (*exec.Cmd, error) {
	if err := checkAbs(c.Path); err != nil || len(c.Args) == 0 {
		return nil, fmt.Errorf("sandbox: host command %q: needs an absolute path and args[0]", c.Path)
	}
	if len(c.Args)+len(c.Env) > MaxArgs {
		return nil, fmt.Errorf("sandbox: host command: %d args and env entries (limit %d)", len(c.Args)+len(c.Env), MaxArgs)
	}
	if _, err := Filter(runtime.GOARCH); err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	if c.Dir != "" {
		if err := checkAbs(c.Dir); err != nil {
			return nil, fmt.Errorf("sandbox: host command dir %q: not absolute", c.Dir)
		}
	}
	// init changes into c.Dir after taking the build user's credentials, so
	// a directory that user cannot enter is reported by name, not as the
	// exec of init failing.
	enc, err := json.Marshal(hostCommand{Command: Command{Path: c.Path, Args: c.Args, Dir: c.Dir, Personality: c.Personality,
		NoSyscallFilter: c.NoSyscallFilter, NewPrivileges: c.NewPrivileges}, IDs: ids})
	if err != nil {
		return nil, fmt.Errorf("sandbox: encode host command: %w", err)
	}
	cmd := exec.CommandContext(ctx, InitPath)
	cmd.Args = InitArgs
	cmd.Env = append(append([]string(nil), c.Env...), initEnv+"="+hostMode, hostCmdEnv+"="+string(enc))
	return cmd, nil
}

// hostExec is init in HostCommand's mode.
func hostExec() error {
	runtime.LockOSThread()
	var hc hostCommand
	if err := json.Unmarshal([]byte(os.Getenv(hostCmdEnv)), &hc); err != nil || hc.Path == "" || len(hc.Args) == 0 {
		return fmt.Errorf("sandbox-init: host command: bad %s (%v)", hostCmdEnv, err)
	}
	c := &hc.Command
	env := os.Environ()
	n := 0
	for _, e := range env {
		if !strings.HasPrefix(e, initEnv+"=") && !strings.HasPrefix(e, hostCmdEnv+"=") {
			env[n] = e
			n++
		}
	}
	env = env[:n]
	if err := c.privileges(true); err != nil {
		return fail("set no_new_privs or install seccomp filter", err)
	}
	if hc.IDs != nil {
		if err := switchHostIDs(hc.IDs); err != nil {
			return err
		}
	}
	if c.Dir != "" {
		if err := unix.Chdir(c.Dir); err != nil {
			return fmt.Errorf("changing into '%s': %w", c.Dir, err)
		}
	}
	if err := setPersonality(c.Personality); err != nil {
		return fail("set personality", err)
	}
	if err := c.privileges(false); err != nil {
		return fail("install seccomp filter", err)
	}
	err := syscall.Exec(c.Path, c.Args, env)
	return fmt.Errorf("executing '%s': %w", c.Path, err)
}

// switchHostIDs makes this thread (the one that executes the command) the
// user ids names: groups, then gid, then uid, which drops every
// capability; the parent-death signal, cleared by the change, is set again.
func switchHostIDs(ids *HostIDs) error {
	groups := make([]uint32, len(ids.Groups))
	for i, g := range ids.Groups {
		groups[i] = uint32(g)
	}
	var ptr unsafe.Pointer
	if len(groups) > 0 {
		ptr = unsafe.Pointer(&groups[0])
	}
	_, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(groups)), uintptr(ptr), 0)
	runtime.KeepAlive(groups)
	if e != 0 {
		return fail("setgroups", e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(ids.GID), uintptr(ids.GID), uintptr(ids.GID)); e != 0 {
		return fail("setgid "+strconv.Itoa(ids.GID), e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(ids.UID), uintptr(ids.UID), uintptr(ids.UID)); e != 0 {
		return fail("setuid "+strconv.Itoa(ids.UID), e)
	}
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		return fail("set parent-death signal", err)
	}
	return nil
}
