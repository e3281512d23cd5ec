package local

import (
	"errors"
	"os"
	"strconv"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Unnamed files. A path that is one regular file (most sources, every text
// and .drv) is written into a file without a name (O_TMPFILE, in its slot
// directory, so its inode lands where a named one would) and linked into the
// store dir at commit. A named slot entry costs an entry made in the slot
// directory and, at the rename, one removed: on ext4 about a third of
// creating and writing a small file, and of placing it (docs/benchmarks.md,
// session 11). A file nobody links goes away when it is closed, a crashed
// writer's included. Whatever needs the slot by name (a repair's sync, a
// path already there) names it first (slot.link).

// The states of tmpfiles.state: whether this store's file system takes
// unnamed files and links them, unknown until the first try.
const (
	tmpfileUnknown int32 = iota
	tmpfileYes
	tmpfileNo
)

// maxUnnamed bounds the unnamed files a store keeps open at once; past it,
// slots are named from the start (a batch of thousands of files would
// otherwise hold as many descriptors).
const maxUnnamed = 1024

// tmpfiles tracks a store's unnamed files.
type tmpfiles struct {
	state atomic.Int32
	open  atomic.Int32
}

// create makes the file of slot t with mode: unnamed when the file system
// allows and not too many are open (unnamed reports which), else at t's name.
func (t *slot) create(mode uint32) (fd int, unnamed bool, err error) {
	tf := &t.t.s.tmpfiles
	if tf.state.Load() != tmpfileNo {
		if tf.open.Add(1) <= maxUnnamed {
			if fd, unnamed, ok := t.createUnnamed(mode); ok {
				return fd, unnamed, nil
			}
		} else {
			tf.open.Add(-1)
		}
	}
	fd, err = unix.Openat(t.dirfd, t.name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
	if err != nil {
		return -1, false, &os.PathError{Op: "create", Path: t.contentPath(), Err: err}
	}
	return fd, false, nil
}

// createUnnamed is create's unnamed file, counted in tmpfiles.open; ok is
// false, and the count given back, when none could be made. The store's
// first is named at once, which tells whether a file made so can be linked
// at all; it is then an ordinary named one (unnamed false, not counted).
func (t *slot) createUnnamed(mode uint32) (fd int, unnamed, ok bool) {
	tf := &t.t.s.tmpfiles
	fd, err := unix.Openat(t.dirfd, ".", unix.O_RDWR|unix.O_TMPFILE|unix.O_CLOEXEC, mode)
	if err == nil && tf.state.Load() == tmpfileUnknown {
		if err = linkFD(fd, t.dirfd, t.name); err == nil {
			tf.state.Store(tmpfileYes)
			tf.open.Add(-1)
			return fd, false, true
		}
		unix.Close(fd)
	}
	if err == nil {
		return fd, true, true
	}
	tf.open.Add(-1)
	if unsupported(err) {
		tf.state.Store(tmpfileNo)
	}
	return -1, false, false
}

// keep hands the unnamed file fd, written, to the slot.
func (t *slot) keep(fd int) { t.fd = fd }

// link gives the slot's unnamed file, if it has one, its name in the slot
// directory.
func (t *slot) link() error {
	if t.fd < 0 {
		return nil
	}
	err := linkFD(t.fd, t.dirfd, t.name)
	t.closeFD()
	if err != nil {
		return &os.PathError{Op: "link", Path: t.contentPath(), Err: err}
	}
	return nil
}

// placeFD links the slot's unnamed file into dirfd as name, and reports
// whether it did; then the slot holds nothing.
func (t *slot) placeFD(dirfd int, name string) bool {
	if t.fd < 0 || linkFD(t.fd, dirfd, name) != nil {
		return false
	}
	t.closeFD()
	return true
}

// closeFD closes the slot's unnamed file: unlinked, it is gone.
func (t *slot) closeFD() {
	if t.fd >= 0 {
		unix.Close(t.fd)
		t.fd = -1
		t.t.s.tmpfiles.open.Add(-1)
	}
}

// unsupported reports whether err, from making or linking an unnamed file,
// says that the file system or kernel cannot (rather than a full disk, or too
// many open files).
func unsupported(err error) bool {
	for _, e := range []error{unix.EOPNOTSUPP, unix.EISDIR, unix.EINVAL, unix.ENOENT, unix.EPERM, unix.EACCES, unix.EXDEV} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// linkFD links the file open at fd (with no name, or any) as name in dirfd.
// Kernels before 6.10 let only CAP_DAC_READ_SEARCH link a descriptor
// (AT_EMPTY_PATH), but anyone through /proc.
func linkFD(fd, dirfd int, name string) error {
	err := unix.Linkat(fd, "", dirfd, name, unix.AT_EMPTY_PATH)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EPERM) {
		err = unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), dirfd, name, unix.AT_SYMLINK_FOLLOW)
	}
	return err
}
