package sandbox

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// The seccomp filter follows Nix 2.8's (setupSeccomp in
// local-derivation-goal.cc), written here as a classic BPF program:
//
//   - chmod, fchmod, fchmodat (and fchmodat2, which Nix added later) fail with
//     EPERM when the mode has S_ISUID or S_ISGID;
//   - setxattr, lsetxattr, fsetxattr fail with ENOTSUP, Nix's choice: tools
//     such as cp -a and tar treat ENOTSUP as "this file system has no
//     xattrs" and carry on. We add setxattrat (Linux 6.13), which Nix 2.8
//     predates;
//   - io_uring_setup fails with ENOSYS (callers fall back to plain
//     syscalls): io_uring can set xattrs without a syscall seccomp sees.
//     Nix does not do this;
//   - everything else is allowed;
//   - calls from an architecture not in the table kill the process (as
//     libseccomp does for Nix). The table has the x86 family (x86-64, its
//     x32 ABI, i386) and the ARM and RISC-V ones.
//
// x32 calls arrive with arch AUDIT_ARCH_X86_64 and bit 0x40000000 set in the
// number; every x86-64 rule is also installed with that bit.

const (
	x32SyscallBit = 0x40000000
	modeSetIDBits = 0o6000 // S_ISUID|S_ISGID

	// seccomp_data offsets (linux/seccomp.h): nr, arch, instruction pointer,
	// then six 64-bit args. Every table arch is little-endian, so the low
	// 32 bits of args[i] are at 16+8*i.
	offNr   = 0
	offArch = 4
	offArgs = 16

	retAllow = unix.SECCOMP_RET_ALLOW
	retKill  = unix.SECCOMP_RET_KILL_PROCESS
	retErrno = unix.SECCOMP_RET_ERRNO
)

// syscallTable holds one architecture's numbers; -1: no such call.
type syscallTable struct {
	name                           string
	audit                          uint32
	x32                            bool // also match numbers | x32SyscallBit
	chmod, fchmod, fchmodat        int
	fchmodat2                      int
	setxattr, lsetxattr, fsetxattr int
	setxattrat, ioUringSetup       int
}

// Numbers from the kernel's syscall tables (as in x/sys/unix zsysnum_linux_*).
var syscallTables = []syscallTable{
	{"x86-64", unix.AUDIT_ARCH_X86_64, true, 90, 91, 268, 452, 188, 189, 190, 463, 425},
	{"i386", unix.AUDIT_ARCH_I386, false, 15, 94, 306, 452, 226, 227, 228, 463, 425},
	{"aarch64", unix.AUDIT_ARCH_AARCH64, false, -1, 52, 53, 452, 5, 6, 7, 463, 425},
	{"arm", unix.AUDIT_ARCH_ARM, false, 15, 94, 333, 452, 226, 227, 228, 463, 425},
	{"riscv64", unix.AUDIT_ARCH_RISCV64, false, -1, 52, 53, 452, 5, 6, 7, 463, 425},
}

// nativeArch maps GOARCH to the audit arch the filter must know.
var nativeArch = map[string]uint32{
	"amd64": unix.AUDIT_ARCH_X86_64, "386": unix.AUDIT_ARCH_I386,
	"arm64": unix.AUDIT_ARCH_AARCH64, "arm": unix.AUDIT_ARCH_ARM,
	"riscv64": unix.AUDIT_ARCH_RISCV64,
}

// bpfAsm assembles a classic BPF program with forward jumps to labels.
type bpfAsm struct {
	prog   []unix.SockFilter
	labels map[string]int
	fixups []fixup
}

type fixup struct {
	at     int
	jt, jf string // "" = next instruction
}

func (a *bpfAsm) label(name string) { a.labels[name] = len(a.prog) }

func (a *bpfAsm) stmt(code uint16, k uint32) {
	a.prog = append(a.prog, unix.SockFilter{Code: code, K: k})
}

func (a *bpfAsm) jump(code uint16, k uint32, jt, jf string) {
	a.fixups = append(a.fixups, fixup{at: len(a.prog), jt: jt, jf: jf})
	a.prog = append(a.prog, unix.SockFilter{Code: code, K: k})
}

func (a *bpfAsm) resolve() ([]unix.SockFilter, error) {
	off := func(from int, name string) (uint8, error) {
		if name == "" {
			return 0, nil
		}
		to, ok := a.labels[name]
		if !ok {
			return 0, fmt.Errorf("seccomp: no label %q", name)
		}
		d := to - from - 1
		if d < 0 || d > 255 {
			return 0, fmt.Errorf("seccomp: jump to %q out of range", name)
		}
		return uint8(d), nil
	}
	for _, f := range a.fixups {
		var err error
		if a.prog[f.at].Jt, err = off(f.at, f.jt); err != nil {
			return nil, err
		}
		if a.prog[f.at].Jf, err = off(f.at, f.jf); err != nil {
			return nil, err
		}
	}
	return a.prog, nil
}

const (
	ldAbsW  = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
	jeqK    = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
	jsetK   = unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K
	retK    = unix.BPF_RET | unix.BPF_K
	maxProg = unix.BPF_MAXINSNS
)

// Filter returns the seccomp program init installs. goarch is the running
// program's GOARCH: its architecture must be in the table.
func Filter(goarch string) ([]unix.SockFilter, error) {
	native, ok := nativeArch[goarch]
	if !ok {
		return nil, fmt.Errorf("seccomp: no syscall table for GOARCH %s", goarch)
	}
	known := false
	for _, t := range syscallTables {
		known = known || t.audit == native
	}
	if !known {
		return nil, fmt.Errorf("seccomp: no syscall table for GOARCH %s", goarch)
	}
	a := &bpfAsm{labels: map[string]int{}}
	a.stmt(ldAbsW, offArch)
	for _, t := range syscallTables {
		a.jump(jeqK, t.audit, t.name, "")
	}
	a.stmt(retK, retKill)
	for _, t := range syscallTables {
		a.label(t.name)
		a.stmt(ldAbsW, offNr)
		type rule struct {
			nr     int
			target string
		}
		rules := []rule{
			{t.chmod, "mode1"}, {t.fchmod, "mode1"}, {t.fchmodat, "mode2"}, {t.fchmodat2, "mode2"},
			{t.setxattr, "enotsup"}, {t.lsetxattr, "enotsup"}, {t.fsetxattr, "enotsup"},
			{t.setxattrat, "enotsup"}, {t.ioUringSetup, "enosys"},
		}
		for _, r := range rules {
			if r.nr < 0 {
				continue
			}
			a.jump(jeqK, uint32(r.nr), t.name+r.target, "")
			if t.x32 {
				a.jump(jeqK, uint32(r.nr)|x32SyscallBit, t.name+r.target, "")
			}
		}
		a.stmt(retK, retAllow)
		for i, l := range []string{"mode1", "mode2"} {
			a.label(t.name + l)
			a.stmt(ldAbsW, uint32(offArgs+8*(i+1)))
			a.jump(jsetK, modeSetIDBits, t.name+"eperm", "")
			a.stmt(retK, retAllow)
		}
		a.label(t.name + "eperm")
		a.stmt(retK, retErrno|uint32(unix.EPERM))
		a.label(t.name + "enotsup")
		a.stmt(retK, retErrno|uint32(unix.ENOTSUP))
		a.label(t.name + "enosys")
		a.stmt(retK, retErrno|uint32(unix.ENOSYS))
	}
	prog, err := a.resolve()
	if err != nil {
		return nil, err
	}
	if len(prog) > maxProg {
		return nil, fmt.Errorf("seccomp: program of %d instructions", len(prog))
	}
	return prog, nil
}
