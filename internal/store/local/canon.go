package local

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Canonical metadata of every file in the store.
const (
	// StoreMtime is the modification time of every store file: one second into the epoch.
	StoreMtime = 1
	modeFile   = 0o444
	modeExec   = 0o555
)

// DefaultIgnoredACLs is Nix 2.8's ignored-acls: extended attributes the
// kernel or file system manages, which canonicalisation leaves alone.
var DefaultIgnoredACLs = []string{"security.selinux", "system.nfs4_acl"}

// ignored is the ignored-acls setting as a set, for the whole process
// as Nix's settings are (SetIgnoredACLs).
var ignored atomic.Pointer[map[string]bool]

func init() { SetIgnoredACLs(DefaultIgnoredACLs) }

// SetIgnoredACLs sets the extended attributes canonicalisation keeps
// (ignored-acls), for every store of the process.
func SetIgnoredACLs(names []string) {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	ignored.Store(&m)
}

func ignoredXattr(name []byte) bool { return (*ignored.Load())[string(name)] }

// Canonicalise makes the tree at name inside the directory dirfd look like a store
// path: regular files and directories mode 0444, or 0555 when the owner may
// execute (which also clears setuid, setgid and sticky bits), modification time
// StoreMtime, no extended attributes or ACLs, and owned by this process's
// effective user. Symlinks keep their mode but get the time and owner. Only
// regular files, directories and symlinks are allowed. Nothing is followed:
// every call is relative to a directory descriptor.
//
// With keepRootWritable, a directory at the root keeps its mode (so it can still
// be renamed into another directory); call CanonicaliseRoot after moving it.
func Canonicalise(dirfd int, name string, keepRootWritable bool) error {
	_, err := canonicalise(dirfd, name, keepRootWritable)
	return err
}

// CanonicaliseBuilt is Canonicalise for a tree a builder left: every entry
// must be owned by a uid in [fromUID, fromUID+count), the builder's, or
// be a further link of a regular file met earlier in the walk (which
// canonicalising it made ours). Anything else fails with "invalid ownership
// on file '…'" before it is touched: the builder hard-linked a file that is
// not its own into its output, and canonicalising it would change the
// owner and mode of that file wherever else it is linked. Nix 2.8 checks
// the same.
func CanonicaliseBuilt(dirfd int, name string, keepRootWritable bool, fromUID, count int) error {
	c := canon{uid: os.Geteuid(), gid: os.Getegid(), checkFrom: true, fromUID: fromUID, fromCount: count}
	return c.walk(dirfd, name, name, !keepRootWritable)
}

// OwnershipError is CanonicaliseBuilt's refusal of an entry a builder did
// not own.
type OwnershipError struct{ Path string }

func (e *OwnershipError) Error() string { return fmt.Sprintf("invalid ownership on file '%s'", e.Path) }

// canonicalise is Canonicalise, also reporting whether the root is a
// directory: only then does keepRootWritable leave anything for CanonicaliseRoot.
func canonicalise(dirfd int, name string, keepRootWritable bool) (rootIsDir bool, err error) {
	c := canon{uid: os.Geteuid(), gid: os.Getegid()}
	err = c.walk(dirfd, name, name, !keepRootWritable)
	return c.rootIsDir, err
}

// CanonicaliseRoot finishes Canonicalise(…, true) for the root entry alone.
func CanonicaliseRoot(dirfd int, name string) error {
	c := canon{uid: os.Geteuid(), gid: os.Getegid()}
	var st unix.Stat_t
	if err := fstatat(dirfd, name, &st); err != nil {
		return &os.PathError{Op: "canonicalise: stat", Path: name, Err: err}
	}
	return c.fix(dirfd, name, name, &st, true)
}

type canon struct {
	uid, gid  int
	xbuf      []byte
	small     [256]byte // xbuf's first backing
	rootIsDir bool

	// With checkFrom, entries must be owned by [fromUID, fromUID+fromCount)
	// or be links of regular files in seen.
	checkFrom          bool
	fromUID, fromCount int
	seen               map[inode]bool
}

type inode struct{ dev, ino uint64 }

func (c *canon) walk(dirfd int, name, disk string, setMode bool) error {
	var st unix.Stat_t
	if err := fstatat(dirfd, name, &st); err != nil {
		return &os.PathError{Op: "canonicalise: stat", Path: disk, Err: err}
	}
	if !setMode {
		// Only a directory at the root needs to stay writable.
		c.rootIsDir = st.Mode&unix.S_IFMT == unix.S_IFDIR
		setMode = !c.rootIsDir
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		fd, err := openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW)
		if err != nil {
			return &os.PathError{Op: "canonicalise: open", Path: disk, Err: err}
		}
		f := os.NewFile(uintptr(fd), disk)
		names, err := f.Readdirnames(-1)
		if err == nil {
			for _, n := range names {
				if err = c.walk(fd, n, disk+"/"+n, true); err != nil {
					break
				}
			}
		} else {
			err = &os.PathError{Op: "canonicalise: read directory", Path: disk, Err: err}
		}
		f.Close()
		if err != nil {
			return err
		}
	}
	return c.fix(dirfd, name, disk, &st, setMode)
}

// fix canonicalises one entry whose lstat is st.
func (c *canon) fix(dirfd int, name, disk string, st *unix.Stat_t, setMode bool) error {
	typ := st.Mode & unix.S_IFMT
	if typ != unix.S_IFREG && typ != unix.S_IFDIR && typ != unix.S_IFLNK {
		return fmt.Errorf("canonicalise %s: file has an unsupported type", disk)
	}
	if c.checkFrom {
		id := inode{uint64(st.Dev), st.Ino}
		if int64(st.Uid) < int64(c.fromUID) || int64(st.Uid) >= int64(c.fromUID)+int64(c.fromCount) {
			if typ == unix.S_IFREG && c.seen[id] {
				return nil // a link of a file fixed earlier in this walk
			}
			return &OwnershipError{Path: disk}
		}
		if typ == unix.S_IFREG && st.Nlink > 1 {
			if c.seen == nil {
				c.seen = map[inode]bool{}
			}
			c.seen[id] = true
		}
	}
	if err := c.stripXattrs(dirfd, name, disk); err != nil {
		return err
	}
	if int(st.Uid) != c.uid {
		if err := unix.Fchownat(dirfd, name, c.uid, c.gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return &os.PathError{Op: "canonicalise: chown", Path: disk, Err: err}
		}
	}
	if typ != unix.S_IFLNK && setMode {
		perm := st.Mode & 0o7777
		if perm != modeFile && perm != modeExec {
			want := uint32(modeFile)
			if st.Mode&unix.S_IXUSR != 0 {
				want = modeExec
			}
			if err := unix.Fchmodat(dirfd, name, want, 0); err != nil {
				return &os.PathError{Op: "canonicalise: chmod", Path: disk, Err: err}
			}
		}
	}
	if st.Mtim.Sec != StoreMtime || st.Mtim.Nsec != 0 {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Sec: StoreMtime}}
		if err := unix.UtimesNanoAt(dirfd, name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return &os.PathError{Op: "canonicalise: set time", Path: disk, Err: err}
		}
	}
	return nil
}

// stripXattrs removes every extended attribute (ACLs included) but the ignored
// ones. There is no *xattrat system call before Linux 6.13, so the entry is
// named through its directory's /proc/self/fd link: only the last component is
// resolved, and the l* calls do not follow it.
func (c *canon) stripXattrs(dirfd int, name, disk string) error {
	p := "/proc/self/fd/" + strconv.Itoa(dirfd) + "/" + name
	if dirfd == unix.AT_FDCWD {
		p = name
	}
	if c.xbuf == nil {
		c.xbuf = c.small[:]
	}
	n, err := unix.Llistxattr(p, c.xbuf)
	if errors.Is(err, unix.ERANGE) {
		size, err2 := unix.Llistxattr(p, nil)
		if err2 != nil {
			return &os.PathError{Op: "canonicalise: list attributes", Path: disk, Err: err2}
		}
		c.xbuf = make([]byte, size+64)
		n, err = unix.Llistxattr(p, c.xbuf)
	}
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.ENODATA) {
			return nil
		}
		return &os.PathError{Op: "canonicalise: list attributes", Path: disk, Err: err}
	}
	for _, a := range bytes.Split(c.xbuf[:n], []byte{0}) {
		if len(a) == 0 || ignoredXattr(a) {
			continue
		}
		if err := unix.Lremovexattr(p, string(a)); err != nil {
			return &os.PathError{Op: "canonicalise: remove attribute " + string(a), Path: disk, Err: err}
		}
	}
	return nil
}

func fstatat(dirfd int, name string, st *unix.Stat_t) error {
	for {
		err := unix.Fstatat(dirfd, name, st, unix.AT_SYMLINK_NOFOLLOW)
		if err != unix.EINTR {
			return err
		}
	}
}

func openat(dirfd int, name string, flags int) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, flags|unix.O_CLOEXEC, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// removeTree deletes the entry name in dirfd and everything below it, making
// read-only directories writable first. It never follows symlinks. A missing
// entry is not an error.
func removeTree(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return &os.PathError{Op: "remove", Path: name, Err: err}
	}
	fd, err := openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW)
	if err != nil {
		return &os.PathError{Op: "remove: open", Path: name, Err: err}
	}
	unix.Fchmod(fd, 0o700)
	f := os.NewFile(uintptr(fd), name)
	names, err := f.Readdirnames(-1)
	if err == nil {
		for _, n := range names {
			if err = removeTree(fd, n); err != nil {
				break
			}
		}
	}
	f.Close()
	if err != nil {
		return err
	}
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return &os.PathError{Op: "remove", Path: name, Err: err}
	}
	return nil
}

// canonicaliseFD makes the regular file open at fd, which this process just
// created (so it is owned by the effective user), canonical: mode, no extended
// attributes but the ignored ones (when xattrs says it may have any), mode
// (when chmod says the umask may have changed it), modification time
// StoreMtime. It must come after the last write.
func canonicaliseFD(fd int, mode uint32, disk string, xattrs, chmod bool) error {
	if xattrs {
		if err := stripXattrsFD(fd, disk); err != nil {
			return err
		}
	}
	if chmod {
		if err := unix.Fchmod(fd, mode); err != nil {
			return &os.PathError{Op: "canonicalise: chmod", Path: disk, Err: err}
		}
	}
	ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Sec: StoreMtime}}
	if err := futimens(fd, ts); err != nil {
		return &os.PathError{Op: "canonicalise: set time", Path: disk, Err: err}
	}
	return nil
}

// stripXattrsFD removes the extended attributes of the file open at fd but
// the ignored ones.
func stripXattrsFD(fd int, disk string) error {
	var small [256]byte
	buf := small[:]
	n, err := unix.Flistxattr(fd, buf)
	if errors.Is(err, unix.ERANGE) {
		size, err2 := unix.Flistxattr(fd, nil)
		if err2 != nil {
			return &os.PathError{Op: "canonicalise: list attributes", Path: disk, Err: err2}
		}
		buf = make([]byte, size+64)
		n, err = unix.Flistxattr(fd, buf)
	}
	switch {
	case err == nil:
		for _, a := range bytes.Split(buf[:n], []byte{0}) {
			if len(a) == 0 || ignoredXattr(a) {
				continue
			}
			if err := unix.Fremovexattr(fd, string(a)); err != nil {
				return &os.PathError{Op: "canonicalise: remove attribute " + string(a), Path: disk, Err: err}
			}
		}
	case errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.ENODATA):
	default:
		return &os.PathError{Op: "canonicalise: list attributes", Path: disk, Err: err}
	}
	return nil
}

// futimens sets the times of the file open at fd: utimensat with a null path.
func futimens(fd int, ts []unix.Timespec) error {
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}
