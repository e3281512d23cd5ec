package build

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"cairn/internal/derivation"
	"cairn/internal/sandbox"
	"cairn/internal/store/local"
)

// identity is who a build runs as on the host.
type identity struct {
	uid, gid int
	count    int        // ids from uid on: 1, or 65536 for a uid-range build
	groups   []int      // supplementary groups, for builds on the host
	user     *buildUser // nil: the daemon's own ids
}

// identity gives g's build its ids: a build user's (root with build users),
// else the daemon's own. release gives them back; call it when the build is
// over and nothing of it runs any more.
func (b *Builder) identity(g *goal, r *request, sandboxed bool) (id identity, release func(), err error) {
	uidRange := slices.Contains(strings.Fields(g.drv.Env["requiredSystemFeatures"]), "uid-range")
	if uidRange && !sandboxed {
		return id, nil, errors.New("feature 'uid-range' is only supported in sandboxed builds")
	}
	if b.users == nil || isBuiltin(g.drv) {
		// Builtin builders run in the daemon, as the daemon.
		if uidRange {
			return id, nil, errors.New("feature 'uid-range' requires the setting 'auto-allocate-uids' to be enabled")
		}
		return identity{uid: os.Geteuid(), gid: os.Getegid(), count: 1}, func() {}, nil
	}
	count := 1
	if uidRange {
		count = idsPerSlot
	}
	// A build takes its uid before its place to run, never after: a build
	// holding a place must not wait for a uid that builds waiting for a
	// place hold (with more builds set up ahead than uids to spare, that
	// waited for ever).
	u, err := b.users.acquire(g.ctx, count, sandboxed, func() {
		if r.log != nil {
			r.log.Error(fmt.Sprintf("waiting for UID to build '%s'", hl(g.drvPath.String())))
		}
	})
	if err != nil {
		return id, nil, err
	}
	return b.userIdentity(u)
}

// userIdentity is the identity of build user u, whose uid nothing an earlier
// build left running may use any more (as Nix). With cgroups nothing can be
// left: every build on the host ran in one and was killed with it, and a
// killed daemon's are killed when the next starts; sandboxed builds end with
// their PID namespace.
func (b *Builder) userIdentity(u *buildUser) (identity, func(), error) {
	if b.cgroupParent == "" {
		if err := killUser(u.uid); err != nil {
			u.release()
			return identity{}, nil, err
		}
	}
	return identity{uid: u.uid, gid: u.gid, count: u.count, groups: u.groups, user: u}, u.release, nil
}

// hostProcess is a builder running on the host (sandbox = false): in its
// own process group, and in a cgroup of its own when the daemon can make
// one.
type hostProcess struct {
	cmd    *exec.Cmd
	cgroup *sandbox.HostCgroup // nil: none
	// uid, without a cgroup, is the build user whose every process dies
	// with the build; 0: none.
	uid int
}

// startHost starts drv's builder on the host as id, in dirs.build.
// When ctx is done the build is killed.
// As in Nix 2.8, the builder runs behind the sandbox's seccomp filter (no
// setuid or setgid files: with build users, an outside user could run one
// to become the build user and change the output before it is registered)
// and with no_new_privs, set by init before it executes the builder.
func (b *Builder) startHost(ctx context.Context, drv *derivation.Derivation, opts Options, env *Env, dirs *buildDirs, id identity, log *os.File) (*hostProcess, error) {
	if _, err := os.Stat(drv.Builder); err != nil {
		return nil, fmt.Errorf("executing '%s': %w", drv.Builder, err)
	}
	args := append([]string{filepath.Base(drv.Builder)}, rewriteAll(env.Rewrite, drv.Args)...)
	c := sandbox.Command{Path: drv.Builder, Args: args, Env: env.List(), Dir: dirs.build,
		Personality: personality(drv.Platform, opts), NoSyscallFilter: opts.NoSyscallFilter, NewPrivileges: opts.AllowNewPrivileges}
	// The filter without no_new_privs needs init to start as root and take
	// the build user's ids itself, after installing it (as Nix's child).
	var ids *sandbox.HostIDs
	if id.user != nil && c.NewPrivileges && !c.NoSyscallFilter {
		ids = &sandbox.HostIDs{UID: id.uid, GID: id.gid, Groups: id.groups}
	}
	cmd, err := sandbox.HostCommandAs(ctx, c, ids)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = log, log
	attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	hp := &hostProcess{cmd: cmd}
	cmd.Cancel = func() error { hp.Kill(); return nil }
	if id.user != nil {
		if ids == nil {
			groups := make([]uint32, len(id.groups))
			for i, g := range id.groups {
				groups[i] = uint32(g)
			}
			attr.Credential = &syscall.Credential{Uid: uint32(id.uid), Gid: uint32(id.gid), Groups: groups}
		}
		if b.cgroupParent == "" {
			hp.uid = id.uid
		}
	}
	if b.cgroupParent != "" {
		cg, err := sandbox.NewCgroup(sandbox.Cgroup{Parent: b.cgroupParent})
		if err != nil {
			return nil, err
		}
		attr.UseCgroupFD, attr.CgroupFD = true, cg.FD()
		hp.cgroup = cg
	}
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		if hp.cgroup != nil {
			hp.cgroup.Remove()
		}
		return nil, fmt.Errorf("executing '%s': %w", drv.Builder, err)
	}
	return hp, nil
}

func (h *hostProcess) Wait() (int, syscall.Signal, error) {
	err := h.cmd.Wait()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return -1, 0, err
	}
	ws := h.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return -1, ws.Signal(), nil
	}
	return ws.ExitStatus(), 0, nil
}

// Kill kills the build: its cgroup, its process group, its build user's
// processes.
func (h *hostProcess) Kill() {
	if h.cgroup != nil {
		h.cgroup.Kill()
	}
	syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
	if h.uid != 0 {
		killUser(h.uid)
	}
}

// end kills whatever the builder left running and removes its cgroup, once
// the builder itself has exited. Without a cgroup or a build user, a
// process that left the builder's process group (setsid) survives.
func (h *hostProcess) end() error {
	h.Kill()
	if h.cgroup != nil {
		return h.cgroup.Remove()
	}
	return nil
}

// secureFailedOutputs deals with what a failed build on the host left at its
// outputs' paths in the store dir, once nothing of the build runs: owned by
// the builder and perhaps writable by anyone, they must not stay as they
// are. Kept (keep-failed) they are canonicalised (the daemon's, read-only)
// where that works; otherwise they are deleted.
func (b *Builder) secureFailedOutputs(ctx context.Context, drv *derivation.Derivation, dirs *buildDirs, keep bool) {
	st := b.store
	for _, name := range drv.OutputNames() {
		p := drv.Outputs[name].Path
		if valid, err := st.IsValidPath(ctx, p); err != nil || valid {
			continue
		}
		real := st.RealPath(p)
		if _, err := os.Lstat(real); err != nil {
			continue
		}
		if keep && canonicalise(real, dirs) == nil && canonicaliseRoot(real) == nil {
			continue
		}
		removeAll(real)
	}
}

// writeFiles writes the files the environment names (passAsFile,
// structured attrs, exportReferencesGraph) into the build dir, as the
// builder's. Nothing there is followed: the dir is fresh or emptied.
func (d *buildDirs) writeFiles(files map[string][]byte) error {
	if len(files) == 0 {
		return nil
	}
	dfd, err := unix.Open(d.build, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: d.build, Err: err}
	}
	defer unix.Close(dfd)
	chown := d.uid != os.Geteuid() || d.gid != os.Getegid()
	for name, data := range files {
		fd, err := unix.Openat(dfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
		if err != nil {
			return &os.PathError{Op: "create", Path: filepath.Join(d.build, name), Err: err}
		}
		f := os.NewFile(uintptr(fd), filepath.Join(d.build, name))
		_, err = f.Write(data)
		if err == nil && chown {
			err = unix.Fchown(fd, d.uid, d.gid)
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// canonicalise canonicalises the tree at path that a builder running as
// dirs' ids made (nil dirs: a tree of ours, e.g. a copy), keeping a
// directory root writable so that it can still be moved.
func canonicalise(path string, dirs *buildDirs) error {
	fd, err := unix.Open(filepath.Dir(path), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if dirs == nil {
		return local.Canonicalise(fd, filepath.Base(path), true)
	}
	return local.CanonicaliseBuilt(fd, filepath.Base(path), true, dirs.uid, dirs.count)
}

// canonicaliseRoot finishes canonicalise for the root of the tree.
func canonicaliseRoot(path string) error {
	fd, err := unix.Open(filepath.Dir(path), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return local.CanonicaliseRoot(fd, filepath.Base(path))
}
