//go:build amd64 && linux

// Package int80 makes i386 system calls (int $0x80) from a 64-bit process,
// for tests of the sandbox's seccomp filter: the kernel reports such calls
// with arch AUDIT_ARCH_I386 and i386 syscall numbers. Pointers passed must
// lie below 4 GiB (see Low).
package int80

import "golang.org/x/sys/unix"

// Syscall3 makes i386 system call nr with three arguments and returns the
// raw result: a negative errno on failure.
func Syscall3(nr, a1, a2, a3 uint32) int32 {
	return int32(syscall3(uintptr(nr), uintptr(a1), uintptr(a2), uintptr(a3)))
}

func syscall3(nr, a1, a2, a3 uintptr) uintptr

// Low returns a page mapped below 2 GiB (MAP_32BIT), for i386 pointer
// arguments.
func Low() ([]byte, error) {
	return unix.Mmap(-1, 0, unix.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_32BIT)
}
