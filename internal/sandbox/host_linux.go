package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"

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
	enc, err := json.Marshal(Command{Path: c.Path, Args: c.Args, Dir: c.Dir, Personality: c.Personality})
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
	var c Command
	if err := json.Unmarshal([]byte(os.Getenv(hostCmdEnv)), &c); err != nil || c.Path == "" || len(c.Args) == 0 {
		return fmt.Errorf("sandbox-init: host command: bad %s (%v)", hostCmdEnv, err)
	}
	env := os.Environ()
	n := 0
	for _, e := range env {
		if !strings.HasPrefix(e, initEnv+"=") && !strings.HasPrefix(e, hostCmdEnv+"=") {
			env[n] = e
			n++
		}
	}
	env = env[:n]
	if c.Dir != "" {
		if err := unix.Chdir(c.Dir); err != nil {
			return fmt.Errorf("changing into '%s': %w", c.Dir, err)
		}
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fail("set no_new_privs", err)
	}
	if err := setPersonality(c.Personality); err != nil {
		return fail("set personality", err)
	}
	if err := installFilter(); err != nil {
		return fail("install seccomp filter", err)
	}
	err := syscall.Exec(c.Path, c.Args, env)
	return fmt.Errorf("executing '%s': %w", c.Path, err)
}
