//go:build linux

package sandbox_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The probe runs inside the sandbox (the test binary, bound at /probe, with
// CAIRN_SANDBOX_TEST=probe) and reports what it sees as JSON on stdout.
type probeReport struct {
	Hostname, Domainname string
	UID, GID, EUID, EGID int
	Groups               []int
	Files                map[string]string
	Interfaces           []string
	LoUp                 bool
	Pids                 []int
	FDs                  []int
	Env                  []string
	Cwd                  string
	Status               map[string]string // from /proc/self/status
	Results              map[string]string // operation → "ok" or errno name
}

func errName(err error) string {
	if err == nil {
		return "ok"
	}
	var errno unix.Errno
	if errors.As(err, &errno) {
		return unix.ErrnoName(errno)
	}
	return err.Error()
}

// listFDs lists open fds with raw syscalls, leaving out the one it uses.
func listFDs() []int {
	fd, err := unix.Open("/proc/self/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return []int{-1}
	}
	defer unix.Close(fd)
	var fds []int
	buf := make([]byte, 4096)
	for {
		n, err := unix.ReadDirent(fd, buf)
		if err != nil || n == 0 {
			break
		}
		_, _, names := unix.ParseDirent(buf[:n], -1, nil)
		for _, name := range names {
			if i, err := strconv.Atoi(name); err == nil && i != fd {
				fds = append(fds, i)
			}
		}
	}
	sort.Ints(fds)
	return fds
}

func probe() int {
	r := probeReport{FDs: listFDs(), Files: map[string]string{}, Status: map[string]string{}, Results: map[string]string{}}
	var uts unix.Utsname
	unix.Uname(&uts)
	r.Hostname = unix.ByteSliceToString(uts.Nodename[:])
	r.Domainname = unix.ByteSliceToString(uts.Domainname[:])
	r.UID, r.GID, r.EUID, r.EGID = os.Getuid(), os.Getgid(), os.Geteuid(), os.Getegid()
	r.Groups, _ = os.Getgroups()
	for _, f := range []string{"/etc/passwd", "/etc/group", "/etc/hosts"} {
		data, err := os.ReadFile(f)
		if err != nil {
			r.Files[f] = errName(err)
		} else {
			r.Files[f] = string(data)
		}
	}
	if data, err := os.ReadFile("/proc/net/dev"); err == nil {
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		for _, l := range lines[2:] {
			name, _, _ := strings.Cut(l, ":")
			r.Interfaces = append(r.Interfaces, strings.TrimSpace(name))
		}
	}
	if fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0); err == nil {
		ifr, _ := unix.NewIfreq("lo")
		if unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr) == nil {
			r.LoUp = ifr.Uint16()&unix.IFF_UP != 0
		}
		unix.Close(fd)
	}
	if ents, err := os.ReadDir("/proc"); err == nil {
		for _, e := range ents {
			if pid, err := strconv.Atoi(e.Name()); err == nil {
				r.Pids = append(r.Pids, pid)
			}
		}
	}
	r.Env = os.Environ()
	r.Cwd, _ = os.Getwd()
	if data, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			k, v, _ := strings.Cut(l, ":")
			switch k {
			case "CapInh", "CapPrm", "CapEff", "CapAmb", "NoNewPrivs", "Seccomp":
				r.Status[k] = strings.TrimSpace(v)
			}
		}
	}

	res := r.Results
	open := func(name string, flags int) error {
		fd, err := unix.Open(name, flags|unix.O_CLOEXEC, 0o644)
		if err == nil {
			unix.Close(fd)
		}
		return err
	}
	for _, p := range []string{"/root", "/etc/shadow", os.Getenv("HOST_MARKER")} {
		res["read "+p] = errName(open(p, unix.O_RDONLY))
	}
	for _, p := range []string{"/input/new", "/input/file", "/new", "/etc/passwd", "/dev/new",
		"/build/new", "/tmp/new", "/dev/shm/new", "/dev/null"} {
		flags := unix.O_WRONLY
		if strings.HasSuffix(p, "/new") {
			flags |= unix.O_CREAT
		}
		res["write "+p] = errName(open(p, flags))
	}
	res["open /dev/ptmx"] = errName(open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY))
	res["mkdir /input/d"] = errName(unix.Mkdir("/input/d", 0o755))

	const f = "/build/setid"
	os.WriteFile(f, []byte("x"), 0o755)
	res["chmod 0755"] = errName(unix.Chmod(f, 0o755))
	res["chmod 04755"] = errName(unix.Chmod(f, 0o4755))
	res["chmod 02755"] = errName(unix.Chmod(f, 0o2755))
	res["fchmodat 06755"] = errName(unix.Fchmodat(unix.AT_FDCWD, f, 0o6755, 0))
	fp, _ := unix.BytePtrFromString(f)
	_, _, e := unix.Syscall6(unix.SYS_FCHMODAT2, atFDCWD, uintptr(unsafe.Pointer(fp)), 0o4755, 0, 0, 0)
	res["fchmodat2 04755"] = errName(errnoErr(e))
	if fd, err := unix.Open(f, unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
		res["fchmod 04755"] = errName(unix.Fchmod(fd, 0o4755))
		res["fsetxattr"] = errName(unix.Fsetxattr(fd, "user.cairn", []byte("x"), 0))
		unix.Close(fd)
	}
	res["setxattr"] = errName(unix.Setxattr(f, "user.cairn", []byte("x"), 0))
	res["lsetxattr"] = errName(unix.Lsetxattr(f, "user.cairn", []byte("x"), 0))
	_, _, e = unix.Syscall(unix.SYS_IO_URING_SETUP, 1, 0, 0)
	res["io_uring_setup"] = errName(errnoErr(e))
	res["mount tmpfs"] = errName(unix.Mount("tmpfs", "/tmp", "tmpfs", 0, ""))
	var st unix.Stat_t
	if unix.Stat(f, &st) == nil {
		res["mode after"] = fmt.Sprintf("%o", st.Mode&0o7777)
	}
	archProbes(f, res)

	json.NewEncoder(os.Stdout).Encode(r)
	return 0
}

func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

var atFDCWD = func() uintptr { fd := unix.AT_FDCWD; return uintptr(fd) }()
