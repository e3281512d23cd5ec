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

// EnsurePool returns the gid of group and the uids of its n members
// <group>1…<group>n, a build-users-group pool for tests, adding the group
// and users with groupadd and useradd when missing (so calling it again is
// cheap). They are left in place, like Name.
//
// Each package's tests need a pool of their own: go test runs packages at
// once, and a daemon (Nix's too) kills every process of a build user before
// and after using it, so two daemons with separate state dirs sharing uids
// kill each other's builds.
func EnsurePool(group string, n int) (gid int, uids []int, err error) {
	db := func() (map[string]int, map[string]int) {
		users, groups := map[string]int{}, map[string]int{}
		for file, m := range map[string]map[string]int{"/etc/passwd": users, "/etc/group": groups} {
			data, _ := os.ReadFile(file)
			for _, l := range strings.Split(string(data), "\n") {
				f := strings.Split(l, ":")
				if len(f) > 3 {
					if id, err := strconv.Atoi(f[2]); err == nil {
						m[f[0]] = id
					}
				}
			}
		}
		return users, groups
	}
	users, groups := db()
	if _, ok := groups[group]; !ok {
		if out, err := exec.Command("groupadd", "--system", group).CombinedOutput(); err != nil {
			return 0, nil, fmt.Errorf("groupadd %s: %v: %s", group, err, out)
		}
	}
	for i := 1; i <= n; i++ {
		name := group + strconv.Itoa(i)
		if _, ok := users[name]; ok {
			continue
		}
		if out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
			"--gid", group, "--groups", group, name).CombinedOutput(); err != nil {
			return 0, nil, fmt.Errorf("useradd %s: %v: %s", name, err, out)
		}
	}
	users, groups = db()
	gid, ok := groups[group]
	if !ok {
		return 0, nil, fmt.Errorf("%s not in /etc/group after groupadd", group)
	}
	for i := 1; i <= n; i++ {
		uid, ok := users[group+strconv.Itoa(i)]
		if !ok {
			return 0, nil, fmt.Errorf("%s%d not in /etc/passwd after useradd", group, i)
		}
		uids = append(uids, uid)
	}
	return gid, uids, nil
}
