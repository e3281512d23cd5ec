package sandbox_test

import (
	"unsafe"

	"cairn/internal/sandbox/internal/int80"

	"golang.org/x/sys/unix"
)

// archProbes makes the i386 (int $0x80) and x32 calls the filter must catch.
func archProbes(f string, res map[string]string) {
	page, err := int80.Low()
	if err != nil {
		res["i386"] = errName(err)
		return
	}
	copy(page, f+"\x00")
	addr := uint32(uintptr(unsafe.Pointer(&page[0])))
	i386 := func(r int32) string {
		if r < 0 {
			return errName(unix.Errno(-r))
		}
		return "ok"
	}
	const chmod32, setxattr32 = 15, 226
	res["i386 chmod 0755"] = i386(int80.Syscall3(chmod32, addr, 0o755, 0))
	res["i386 chmod 04755"] = i386(int80.Syscall3(chmod32, addr, 0o4755, 0))
	res["i386 setxattr"] = i386(int80.Syscall3(setxattr32, addr, 0, 0))

	const x32 = 0x40000000
	_, _, e := unix.Syscall(x32|unix.SYS_CHMOD, uintptr(unsafe.Pointer(&page[0])), 0o4755, 0)
	res["x32 chmod 04755"] = errName(errnoErr(e))
	_, _, e = unix.Syscall(x32|unix.SYS_CHMOD, uintptr(unsafe.Pointer(&page[0])), 0o755, 0)
	res["x32 chmod 0755"] = errName(errnoErr(e))
}
