package sandbox

import (
	"encoding/binary"
	"fmt"
	"testing"

	"golang.org/x/sys/unix"
)

// runBPF evaluates a classic BPF seccomp program on a seccomp_data record,
// supporting the instructions Filter emits (and failing on any other).
func runBPF(t *testing.T, prog []unix.SockFilter, data []byte) uint32 {
	t.Helper()
	var acc uint32
	for pc := 0; pc < len(prog); pc++ {
		in := prog[pc]
		switch in.Code {
		case ldAbsW:
			if int(in.K)+4 > len(data) {
				t.Fatalf("pc %d: load beyond seccomp_data", pc)
			}
			acc = binary.LittleEndian.Uint32(data[in.K:])
		case jeqK:
			if acc == in.K {
				pc += int(in.Jt)
			} else {
				pc += int(in.Jf)
			}
		case jsetK:
			if acc&in.K != 0 {
				pc += int(in.Jt)
			} else {
				pc += int(in.Jf)
			}
		case retK:
			return in.K
		default:
			t.Fatalf("pc %d: unexpected instruction %#x", pc, in.Code)
		}
	}
	t.Fatal("program fell off its end")
	return 0
}

func seccompData(arch uint32, nr uint32, args ...uint64) []byte {
	b := make([]byte, 64)
	binary.LittleEndian.PutUint32(b[0:], nr)
	binary.LittleEndian.PutUint32(b[4:], arch)
	for i, a := range args {
		binary.LittleEndian.PutUint64(b[16+8*i:], a)
	}
	return b
}

func TestFilter(t *testing.T) {
	prog, err := Filter("amd64")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d instructions", len(prog))
	const (
		x64   = unix.AUDIT_ARCH_X86_64
		i386  = unix.AUDIT_ARCH_I386
		arm64 = unix.AUDIT_ARCH_AARCH64
		arm   = unix.AUDIT_ARCH_ARM
		x32   = x32SyscallBit
	)
	allow := uint32(unix.SECCOMP_RET_ALLOW)
	eperm := uint32(unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM))
	enotsup := uint32(unix.SECCOMP_RET_ERRNO | uint32(unix.ENOTSUP))
	enosys := uint32(unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS))
	kill := uint32(unix.SECCOMP_RET_KILL_PROCESS)
	tests := []struct {
		name string
		arch uint32
		nr   uint32
		args []uint64
		want uint32
	}{
		{"x86-64 chmod 0755", x64, 90, []uint64{0, 0o755}, allow},
		{"x86-64 chmod 04755", x64, 90, []uint64{0, 0o4755}, eperm},
		{"x86-64 chmod 02755", x64, 90, []uint64{0, 0o2755}, eperm},
		{"x86-64 chmod high garbage", x64, 90, []uint64{0, 0xffffffff00000000 | 0o755}, allow},
		{"x86-64 fchmod 04000", x64, 91, []uint64{3, 0o4000}, eperm},
		{"x86-64 fchmod 01777", x64, 91, []uint64{3, 0o1777}, allow},
		{"x86-64 fchmodat mode in arg1 ignored", x64, 268, []uint64{3, 0o4755, 0o755}, allow},
		{"x86-64 fchmodat 06755", x64, 268, []uint64{3, 0, 0o6755}, eperm},
		{"x86-64 fchmodat2 04755", x64, 452, []uint64{3, 0, 0o4755, 0}, eperm},
		{"x86-64 setxattr", x64, 188, nil, enotsup},
		{"x86-64 lsetxattr", x64, 189, nil, enotsup},
		{"x86-64 fsetxattr", x64, 190, nil, enotsup},
		{"x86-64 setxattrat", x64, 463, nil, enotsup},
		{"x86-64 getxattr", x64, 191, nil, allow},
		{"x86-64 removexattr", x64, 197, nil, allow},
		{"x86-64 io_uring_setup", x64, 425, nil, enosys},
		{"x86-64 read", x64, 0, nil, allow},
		{"x32 chmod 04755", x64, x32 | 90, []uint64{0, 0o4755}, eperm},
		{"x32 chmod 0755", x64, x32 | 90, []uint64{0, 0o755}, allow},
		{"x32 fchmodat 02000", x64, x32 | 268, []uint64{0, 0, 0o2000}, eperm},
		{"x32 fsetxattr", x64, x32 | 190, nil, enotsup},
		{"i386 chmod 04755", i386, 15, []uint64{0, 0o4755}, eperm},
		{"i386 chmod 0644", i386, 15, []uint64{0, 0o644}, allow},
		{"i386 fchmod 02755", i386, 94, []uint64{0, 0o2755}, eperm},
		{"i386 fchmodat 04755", i386, 306, []uint64{0, 0, 0o4755}, eperm},
		{"i386 setxattr", i386, 226, nil, enotsup},
		{"i386 x86-64 chmod number is not chmod", i386, 90, []uint64{0, 0o4755}, allow},
		{"aarch64 fchmodat 04755", arm64, 53, []uint64{0, 0, 0o4755}, eperm},
		{"aarch64 setxattr", arm64, 5, nil, enotsup},
		{"arm fchmodat 04755", arm, 333, []uint64{0, 0, 0o4755}, eperm},
		{"unknown arch", 0x12345678, 0, nil, kill},
		{"mips", unix.AUDIT_ARCH_MIPS, 15, []uint64{0, 0o755}, kill},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := runBPF(t, prog, seccompData(tt.arch, tt.nr, tt.args...))
			if got != tt.want {
				t.Errorf("action = %#x, want %#x", got, tt.want)
			}
		})
	}
}

func TestFilterArches(t *testing.T) {
	for _, goarch := range []string{"amd64", "386", "arm64", "arm", "riscv64"} {
		if _, err := Filter(goarch); err != nil {
			t.Errorf("Filter(%s): %v", goarch, err)
		}
	}
	if _, err := Filter("s390x"); err == nil {
		t.Error("Filter(s390x): no error for an architecture without a table")
	}
}

func TestSpecValidate(t *testing.T) {
	good := func() *Spec {
		return &Spec{
			Root:    "/tmp/r",
			UID:     1000,
			GID:     100,
			UIDMap:  []IDMap{{Inside: 1000, Outside: 4000, Count: 1}},
			GIDMap:  []IDMap{{Inside: 100, Outside: 4000, Count: 1}},
			Command: Command{Path: "/bin/sh", Args: []string{"sh"}},
		}
	}
	if err := good().Validate(); err != nil {
		t.Fatalf("good spec: %v", err)
	}
	for _, size := range []string{"50%", "64m", "1048576", "2G"} {
		s := good()
		s.ShmSize = size
		if err := s.Validate(); err != nil {
			t.Errorf("shm size %q: %v", size, err)
		}
	}
	tests := []struct {
		name   string
		modify func(*Spec)
	}{
		{"relative root", func(s *Spec) { s.Root = "tmp/r" }},
		{"unclean root", func(s *Spec) { s.Root = "/tmp/../r" }},
		{"bind onto /", func(s *Spec) { s.Binds = []Bind{{Source: "/a", Target: "/"}} }},
		{"bind under /proc", func(s *Spec) { s.Binds = []Bind{{Source: "/a", Target: "/proc/sys"}} }},
		{"bind with dotdot", func(s *Spec) { s.Binds = []Bind{{Source: "/a", Target: "/x/../../y"}} }},
		{"relative command", func(s *Spec) { s.Command.Path = "sh" }},
		{"no args", func(s *Spec) { s.Command.Args = nil }},
		{"uid not mapped", func(s *Spec) { s.UID = 0 }},
		{"gid not mapped", func(s *Spec) { s.GID = 0 }},
		{"empty map entry", func(s *Spec) { s.UIDMap = append(s.UIDMap, IDMap{Count: 0}) }},
		{"unknown rlimit", func(s *Spec) { s.Rlimits = []Rlimit{{Resource: "bogus"}} }},
		{"soft above hard", func(s *Spec) { s.Rlimits = []Rlimit{{Resource: "nofile", Soft: 2, Hard: 1}} }},
		{"big file", func(s *Spec) { s.Files = []File{{Path: "/etc/x", Content: make([]byte, MaxFileSize+1)}} }},
		{"build dir without target", func(s *Spec) { s.BuildDir = "/tmp/b" }},
		{"cgroup name with slash", func(s *Spec) { s.Cgroup = Cgroup{Parent: "/sys/fs/cgroup", Name: "a/b"} }},
		{"long hostname", func(s *Spec) { s.Hostname = fmt.Sprintf("%065d", 0) }},
		{"shm size with another option", func(s *Spec) { s.ShmSize = "1m,uid=0" }},
		{"shm size not a size", func(s *Spec) { s.ShmSize = "half" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := good()
			tt.modify(s)
			if err := s.Validate(); err == nil {
				t.Error("no error")
			}
		})
	}
}

// model is the filter's rules stated plainly, to check the BPF against.
func model(arch, nr uint32, args [6]uint64) uint32 {
	for _, t := range syscallTables {
		if t.audit != arch {
			continue
		}
		if t.x32 {
			nr &^= x32SyscallBit
		}
		setid := func(i int) uint32 {
			if uint32(args[i])&0o6000 != 0 {
				return unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
			}
			return unix.SECCOMP_RET_ALLOW
		}
		switch int(nr) {
		case t.chmod, t.fchmod:
			return setid(1)
		case t.fchmodat, t.fchmodat2:
			return setid(2)
		case t.setxattr, t.lsetxattr, t.fsetxattr, t.setxattrat:
			return unix.SECCOMP_RET_ERRNO | uint32(unix.ENOTSUP)
		case t.ioUringSetup:
			return unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)
		}
		return unix.SECCOMP_RET_ALLOW
	}
	return unix.SECCOMP_RET_KILL_PROCESS
}

func FuzzFilter(f *testing.F) {
	f.Add(uint32(unix.AUDIT_ARCH_X86_64), uint32(90), uint64(0o4755), uint64(0))
	f.Add(uint32(unix.AUDIT_ARCH_X86_64), uint32(x32SyscallBit|268), uint64(0), uint64(0o2000))
	f.Add(uint32(unix.AUDIT_ARCH_I386), uint32(15), uint64(0o4755), uint64(0))
	f.Add(uint32(unix.AUDIT_ARCH_AARCH64), uint32(53), uint64(0), uint64(0o6000))
	f.Add(uint32(0), uint32(0), uint64(0), uint64(0))
	prog, err := Filter("amd64")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, arch, nr uint32, a1, a2 uint64) {
		// Keep the interesting numbers likely: fold nr into the tables' range.
		if nr&0x3fffffff > 500 {
			nr = nr&x32SyscallBit | nr%500
		}
		args := [6]uint64{0, a1, a2}
		got := runBPF(t, prog, seccompData(arch, nr, args[:]...))
		if want := model(arch, nr, args); got != want {
			t.Fatalf("arch %#x nr %d args %o %o: %#x, want %#x", arch, nr, a1, a2, got, want)
		}
	})
}
