package sandbox

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Process is a running sandbox.
type Process struct {
	ctx    context.Context
	init   initProc
	cgroup string
	// unwatch stops the watch on a pooled init's build context.
	unwatch func() bool
	net     *netProc // the network stack, stopped by Wait

	// held is the channel to an init that waits for Go (Spec.Hold).
	held *os.File
	// mountNS holds the sandbox's mount namespace (-1: none), so that its
	// mounts are not torn down by the command's exit, on the build's path,
	// but when Wait lets go of it, in the background.
	mountNS int

	waitOnce sync.Once
	status   Status
	waitErr  error
}

// Pid is init's (then the command's) pid in the caller's PID namespace.
func (p *Process) Pid() int { return p.init.pid() }

// Cgroup is the build's own cgroup directory, or "" when it has none and
// only the PID namespace holds the build together.
func (p *Process) Cgroup() string { return p.cgroup }

// Start runs spec's command in a new sandbox and returns once the command
// has been executed, or with the error that stopped the sandbox's setup. When
// ctx is done the whole build is killed, as by Kill.
func Start(ctx context.Context, spec *Spec) (*Process, error) {
	payload, err := prepare(spec, false)
	if err != nil {
		return nil, err
	}
	p, ch, err := spawn(ctx, spec, spec.Log)
	if err != nil {
		return nil, err
	}
	return p.begin(ctx, spec, ch, payload, nil)
}

// prepare checks spec and encodes it for init; logFD says the log's
// descriptor will travel with it rather than be init's stdout from the start.
func prepare(spec *Spec, logFD bool) ([]byte, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if !spec.userNS() && os.Geteuid() != 0 {
		return nil, errors.New("sandbox: spec: no id maps: a user namespace is needed when not root")
	}
	payload, err := json.Marshal(wireSpec{Spec: spec, Wait: spec.NetworkSetup != nil || spec.Net != nil || spec.Hold, LogFD: logFD})
	if err != nil {
		return nil, fmt.Errorf("sandbox: encode spec: %w", err)
	}
	if len(payload) > MaxSpecSize {
		return nil, fmt.Errorf("sandbox: spec: %d bytes encoded (limit %d)", len(payload), MaxSpecSize)
	}
	if _, err := Filter(runtime.GOARCH); err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	return payload, nil
}

// spawn starts init in new namespaces with the ids and cgroup spec asks for,
// stdio as its stdout and stderr; init then waits on the returned channel for
// the rest of the spec. Only spec's shape (see shapeOf) matters here.
func spawn(ctx context.Context, spec *Spec, stdio io.Writer) (*Process, *os.File, error) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("sandbox: socketpair: %w", err)
	}
	parentEnd := os.NewFile(uintptr(pair[0]), "sandbox channel")
	childEnd := os.NewFile(uintptr(pair[1]), "sandbox channel")
	defer childEnd.Close()

	p := &Process{ctx: ctx, mountNS: -1}
	attr, env, err := initAttr(spec)
	if err != nil {
		parentEnd.Close()
		return nil, nil, err
	}
	var cgroupFD = -1
	if spec.Cgroup.Parent != "" {
		dir, fd, err := makeCgroup(spec.Cgroup)
		if err != nil {
			parentEnd.Close()
			return nil, nil, err
		}
		defer unix.Close(fd)
		p.cgroup = dir
		cgroupFD = fd
	}
	if sw := spawnerFor(spec, stdio); sw != nil {
		// A spare: cloned by the small spawner process, not the daemon.
		ip, err := sw.spawn(spec, childEnd, cgroupFD)
		if err == nil {
			p.init = ip
			if ctx.Done() != nil {
				p.unwatch = context.AfterFunc(ctx, func() { p.Kill() })
			}
			p.holdMountNS()
			return p, parentEnd, nil
		}
		// The spawner is gone; the daemon clones init itself.
	}
	if cgroupFD >= 0 {
		attr.UseCgroupFD = true
		attr.CgroupFD = cgroupFD
	}
	cmd := exec.CommandContext(ctx, InitPath)
	cmd.Args = InitArgs
	cmd.Env = env
	if stdio != nil {
		cmd.Stdout = stdio
		cmd.Stderr = stdio
	}
	cmd.ExtraFiles = []*os.File{childEnd} // fd 3 = channelFD
	cmd.SysProcAttr = attr
	cmd.Cancel = p.Kill
	p.init = execProc{cmd}
	if err := cmd.Start(); err != nil {
		p.removeCgroup()
		parentEnd.Close()
		if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EINVAL) {
			err = &namespacesRefused{err}
		}
		return nil, nil, fmt.Errorf("sandbox: start init: %w", err)
	}
	p.holdMountNS()
	return p, parentEnd, nil
}

// holdMountNS takes hold of init's mount namespace (see Process.mountNS).
func (p *Process) holdMountNS() {
	if fd, err := unix.Open("/proc/"+strconv.Itoa(p.Pid())+"/ns/mnt", unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
		p.mountNS = fd
	}
}

// initAttr is how init is cloned for spec (but for its cgroup) and its
// environment.
func initAttr(spec *Spec) (*syscall.SysProcAttr, []string, error) {
	attr := &syscall.SysProcAttr{
		Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWNET |
			unix.CLONE_NEWIPC | unix.CLONE_NEWUTS,
		Pdeathsig: syscall.SIGKILL,
	}
	if spec.userNS() {
		attr.Cloneflags |= unix.CLONE_NEWUSER
		attr.UidMappings = idMaps(spec.UIDMap)
		attr.GidMappings = idMaps(spec.GIDMap)
		attr.GidMappingsEnableSetgroups = spec.Setgroups
		// init is not root in its namespace, so it keeps what it needs
		// across its own exec as ambient capabilities, and drops them
		// before the command's exec.
		attr.AmbientCaps = []uintptr{unix.CAP_SYS_ADMIN, unix.CAP_NET_ADMIN, unix.CAP_SETUID, unix.CAP_SETGID}
	}
	// init is short-lived: no garbage collection, one P (fewer threads).
	// The command gets exactly its own environment, not this one.
	shape, err := json.Marshal(earlyOf(spec))
	if err != nil {
		return nil, nil, fmt.Errorf("sandbox: encode shape: %w", err)
	}
	return attr, []string{initEnv + "=1", earlyEnv + "=" + string(shape), "GOGC=off", "GOMAXPROCS=1"}, nil
}

// namespacesRefused is init's clone failing with EPERM or EINVAL: the
// kernel (or a container's seccomp profile) refuses the namespaces.
type namespacesRefused struct{ err error }

func (e *namespacesRefused) Error() string { return e.err.Error() }
func (e *namespacesRefused) Unwrap() error { return e.err }

// IsNamespacesRefused reports whether err is Start failing because the
// kernel refused to clone init with the sandbox's namespaces (EPERM or
// EINVAL), where Nix's sandbox-fallback builds without the sandbox.
func IsNamespacesRefused(err error) bool {
	var nr *namespacesRefused
	return errors.As(err, &nr)
}

// initProc is init as the parent sees it: its own child, or the spawner's.
type initProc interface {
	pid() int
	kill() error
	// wait reaps init; ws is nil when that failed.
	wait() (ws *syscall.WaitStatus, err error)
}

type execProc struct{ cmd *exec.Cmd }

func (e execProc) pid() int { return e.cmd.Process.Pid }

func (e execProc) kill() error {
	if err := e.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	return nil
}

func (e execProc) wait() (*syscall.WaitStatus, error) {
	err := e.cmd.Wait()
	if e.cmd.ProcessState == nil {
		return nil, err
	}
	ws := e.cmd.ProcessState.Sys().(syscall.WaitStatus)
	return &ws, err
}

// begin sends init the spec (with log, when not nil, as its stdout and
// stderr) and waits until the command is executed, or, with spec.Hold,
// until init has the spec; it takes ch. On failure init is killed and
// reaped.
func (p *Process) begin(ctx context.Context, spec *Spec, ch *os.File, payload []byte, log *os.File) (*Process, error) {
	if err := p.handshake(ctx, spec, ch, payload, log); err != nil {
		ch.Close()
		return nil, p.abort(ctx, err)
	}
	if spec.Hold {
		p.held = ch
		return p, nil
	}
	ch.Close()
	return p, nil
}

// Go lets a held init (Spec.Hold) execute its command and returns once it
// has, or with the error that stopped the sandbox's setup; then init is
// killed and reaped. Without Hold it does nothing.
func (p *Process) Go(ctx context.Context) error {
	ch := p.held
	if ch == nil {
		return nil
	}
	p.held = nil
	defer ch.Close()
	if _, err := ch.Write([]byte{msgGo}); err != nil {
		if _, rerr := readReports(ch); rerr != nil {
			return p.abort(ctx, rerr)
		}
		return p.abort(ctx, fmt.Errorf("sandbox: send go-ahead: %w", err))
	}
	execd, err := readReports(ch)
	if err == nil && !execd {
		err = errNoExec
	}
	if err != nil {
		return p.abort(ctx, err)
	}
	return nil
}

// abort kills and reaps init after err stopped its setup, and says so.
func (p *Process) abort(ctx context.Context, err error) error {
	p.Kill()
	st, _ := p.Wait()
	if errors.Is(err, errNoExec) {
		err = fmt.Errorf("sandbox: init ended before exec (%v); see the build log", st)
	} else if st != (Status{}) {
		err = fmt.Errorf("%w (init: %v)", err, st)
	}
	if ctx.Err() != nil {
		err = fmt.Errorf("sandbox: %w (%v)", ctx.Err(), err)
	}
	return err
}

var (
	errNoExec   = errors.New("no exec")
	errInitGone = errors.New("init is gone")
)

func (p *Process) handshake(ctx context.Context, spec *Spec, ch *os.File, payload []byte, log *os.File) error {
	msg := make([]byte, 4, 4+len(payload))
	binary.BigEndian.PutUint32(msg, uint32(len(payload)))
	msg = append(msg, payload...)
	if err := sendSpec(ch, msg, log); err != nil {
		execd, rerr := readReports(ch)
		if rerr != nil {
			return rerr
		}
		if !execd {
			return fmt.Errorf("sandbox: send spec: %w: %w", errInitGone, err)
		}
		// The spec got through after all and the command runs (init waits
		// for no go-ahead, or it could not have): only a spare whose init
		// is gone may be replaced, never one that started its command.
		return nil
	}
	if p.net != nil && spec.Net == nil {
		return errors.New("sandbox: a pooled init with a network given a spec without one")
	}
	if spec.Net != nil && p.net == nil { // a pooled init may have its stack already
		np, err := spec.Net.start(ctx, p.Pid())
		if err != nil {
			// init may have failed first (and the stack for want of its
			// namespace): its report is the better error.
			p.Kill()
			var se *SetupError
			if _, rerr := readReports(ch); errors.As(rerr, &se) {
				return rerr
			}
			return fmt.Errorf("sandbox: network: %w", err)
		}
		p.net = np
	}
	if spec.NetworkSetup != nil {
		if err := spec.NetworkSetup(ctx, p.Pid()); err != nil {
			return fmt.Errorf("sandbox: network setup: %w", err)
		}
	}
	if spec.Hold {
		return nil // Go sends the go-ahead
	}
	if spec.NetworkSetup != nil || spec.Net != nil {
		if _, err := ch.Write([]byte{msgGo}); err != nil {
			if _, rerr := readReports(ch); rerr != nil {
				return rerr
			}
			return fmt.Errorf("sandbox: send go-ahead: %w", err)
		}
	}
	execd, err := readReports(ch)
	if err != nil {
		return err
	}
	if !execd {
		return errNoExec
	}
	return nil
}

func idMaps(m []IDMap) []syscall.SysProcIDMap {
	out := make([]syscall.SysProcIDMap, len(m))
	for i, e := range m {
		out[i] = syscall.SysProcIDMap{ContainerID: e.Inside, HostID: e.Outside, Size: e.Count}
	}
	return out
}

// Kill kills everything in the build: the cgroup (cgroup.kill), when there
// is one, and init, whose death makes the kernel kill the rest of its PID
// namespace.
func (p *Process) Kill() error {
	var errs []error
	if p.cgroup != "" {
		if err := killCgroup(p.cgroup); err != nil {
			errs = append(errs, err)
		}
	}
	if err := p.init.kill(); err != nil {
		errs = append(errs, fmt.Errorf("sandbox: kill: %w", err))
	}
	return errors.Join(errs...)
}

// Wait waits for the command to end, then removes the build's cgroup. The
// error is about waiting itself, or says the build was killed because the
// context given to Start was done; the command's own failure is in Status.
func (p *Process) Wait() (Status, error) {
	p.waitOnce.Do(func() {
		if p.held != nil { // killed while held: never let go
			p.held.Close()
			p.held = nil
		}
		ws, err := p.init.wait()
		if ws == nil {
			p.waitErr = fmt.Errorf("sandbox: wait: %w", err)
			return
		}
		switch {
		case ws.Signaled():
			p.status = Status{Code: -1, Signal: ws.Signal()}
		default:
			p.status = Status{Code: ws.ExitStatus()}
		}
		var ee *exec.ExitError
		switch {
		case p.ctx.Err() != nil && p.status.Code < 0:
			p.waitErr = fmt.Errorf("sandbox: killed: %w", context.Cause(p.ctx))
		case err != nil && !errors.As(err, &ee) && !errors.Is(err, p.ctx.Err()):
			p.waitErr = fmt.Errorf("sandbox: wait: %w", err)
		}
		if p.net != nil {
			p.net.stop()
		}
		if err := p.removeCgroup(); err != nil && p.waitErr == nil {
			p.waitErr = err
		}
		if p.unwatch != nil {
			p.unwatch()
		}
		if fd := p.mountNS; fd >= 0 {
			p.mountNS = -1
			go unix.Close(fd) // unmounts everything: an RCU grace period or more
		}
	})
	return p.status, p.waitErr
}

func (p *Process) removeCgroup() error {
	if p.cgroup == "" {
		return nil
	}
	return removeCgroup(p.cgroup)
}
