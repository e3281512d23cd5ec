//go:build !linux

package sandbox

import (
	"context"
	"errors"
	"os/exec"
)

var errNotLinux = errors.New("sandbox: builds need Linux namespaces")

// Process is a running sandbox (Linux only).
type Process struct{}

// Start fails: the sandbox needs Linux.
func Start(ctx context.Context, spec *Spec) (*Process, error) { return nil, errNotLinux }

// Pool is Start's pool of inits (Linux only).
type Pool struct{}

// Start fails: the sandbox needs Linux.
func (pl *Pool) Start(ctx context.Context, spec *Spec) (*Process, error) { return nil, errNotLinux }

// Close does nothing.
func (pl *Pool) Close() {}

// Init fails: the sandbox needs Linux.
func Init() error {
	if !IsInit() {
		return errNotInit
	}
	return errNotLinux
}

// DetectCgroup fails: cgroups are Linux's.
func DetectCgroup() (string, error) { return "", errNotLinux }

func (p *Process) Pid() int              { return -1 }
func (p *Process) Cgroup() string        { return "" }
func (p *Process) Kill() error           { return errNotLinux }
func (p *Process) Wait() (Status, error) { return Status{}, errNotLinux }

// HostCgroup is a build cgroup (Linux only).
type HostCgroup struct{}

// NewCgroup fails: cgroups are Linux's.
func NewCgroup(c Cgroup) (*HostCgroup, error) { return nil, errNotLinux }

func (g *HostCgroup) Path() string  { return "" }
func (g *HostCgroup) FD() int       { return -1 }
func (g *HostCgroup) Kill() error   { return errNotLinux }
func (g *HostCgroup) Remove() error { return errNotLinux }

// RemoveStaleCgroups does nothing: cgroups are Linux's.
func RemoveStaleCgroups(parent string) (int, error) { return 0, nil }

// KillUser fails: the sandbox needs Linux.
func KillUser(uid int) error { return errNotLinux }

// HostCommand fails: the seccomp filter needs Linux.
func HostCommand(ctx context.Context, c Command) (*exec.Cmd, error) { return nil, errNotLinux }
