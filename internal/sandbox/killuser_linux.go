package sandbox

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// killUserMode is initEnv's value when init is started by KillUser.
const killUserMode = "kill-user"

// KillUser kills every process whose real or saved uid is uid, as Nix does
// for a build user before and after a build that has no cgroup: it runs
// init as uid (and gid nobody, no supplementary groups), which calls
// kill(-1, SIGKILL) — every process it may signal but itself — and exits.
//
// A process of its own does it, not a thread of the caller's with a
// changed uid: while a thread of the daemon has the build user's uid, the
// build user may signal that thread, and SIGKILL to one thread kills the
// whole daemon.
func KillUser(uid int) error {
	if uid <= 0 {
		return fmt.Errorf("sandbox: kill processes of uid %d: refused", uid)
	}
	cmd := exec.Command(InitPath)
	cmd.Args = InitArgs
	cmd.Env = []string{initEnv + "=" + killUserMode, "GOGC=off", "GOMAXPROCS=1"}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uint32(uid), Gid: nobody, NoSetGroups: false},
		Pdeathsig:  syscall.SIGKILL,
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("sandbox: kill processes of uid %d: %v: %s", uid, err, out)
	}
	return nil
}

// nobody is the gid KillUser's process runs with.
const nobody = 65534

// killAll is init in KillUser's mode: kill(-1, SIGKILL), once it has
// signalled something or there is nothing to signal.
func killAll() error {
	if os.Getuid() == 0 || os.Geteuid() == 0 {
		return errors.New("sandbox-init: kill-user: running as root")
	}
	for {
		err := unix.Kill(-1, unix.SIGKILL)
		switch {
		case err == nil, errors.Is(err, unix.ESRCH), errors.Is(err, unix.EPERM):
			os.Exit(0)
		case errors.Is(err, unix.EINTR):
			continue
		default:
			return fmt.Errorf("sandbox-init: kill-user %s: %w", strconv.Itoa(os.Getuid()), err)
		}
	}
}
