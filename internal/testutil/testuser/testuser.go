// Package testuser finds or makes the unprivileged system user that rootless tests run as.
package testuser

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// Name is the user rootless tests run as.
const Name = "cairnbuild"

// Ensure returns the uid and gid of Name, adding it with useradd when missing.
func Ensure() (uid, gid int, err error) {
	if uid, gid, ok := lookup(); ok {
		return uid, gid, nil
	}
	if out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", Name).CombinedOutput(); err != nil {
		return 0, 0, fmt.Errorf("useradd %s: %v: %s", Name, err, out)
	}
	if uid, gid, ok := lookup(); ok {
		return uid, gid, nil
	}
	return 0, 0, fmt.Errorf("%s not in /etc/passwd after useradd", Name)
}

// EnsureTun makes /dev/net/tun readable and writable by everyone, as udev
// leaves it on Debian (some containers and VMs have it 0600): the rootless
// network stacks (pasta, slirp4netns) open it as the test user. Only root
// can; a missing device is no error here (the tests then say what fails).
func EnsureTun() error {
	const tun = "/dev/net/tun"
	fi, err := os.Stat(tun)
	if err != nil || fi.Mode().Perm()&0o666 == 0o666 || os.Geteuid() != 0 {
		return nil
	}
	if err := os.Chmod(tun, fi.Mode().Perm()|0o666); err != nil {
		return fmt.Errorf("chmod %s: %w", tun, err)
	}
	return nil
}

// lookup reads /etc/passwd itself: the user may have been added after the
// process's user database was first consulted.
func lookup() (uid, gid int, ok bool) {
	data, _ := os.ReadFile("/etc/passwd")
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Split(l, ":")
		if len(f) > 3 && f[0] == Name {
			uid, err1 := strconv.Atoi(f[2])
			gid, err2 := strconv.Atoi(f[3])
			return uid, gid, err1 == nil && err2 == nil
		}
	}
	return 0, 0, false
}
