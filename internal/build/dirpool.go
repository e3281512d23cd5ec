package build

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"cairn/internal/storepath"
)

// maxPooledDirs bounds the build dirs kept for reuse.
const maxPooledDirs = 16

// Build dirs are reused. Making an inode is the slowest file system call a
// sandboxed build makes (ext4 without a journal scans its bitmaps for one
// that was not recently freed: up to a millisecond when builds come one
// after another), and a build needs one per input: the mount point of each
// input in the scratch store dir. A reused scratch store dir keeps the mount
// points of the inputs the next build shares with the last one, and gives
// the last build's other mount points the names of the next build's inputs
// (a rename allocates no inode); getDirs deletes every other entry, and any
// entry that is not an empty regular file or empty directory of the
// daemon's or the last builder's, so the builder sees exactly its inputs,
// as with a fresh dir.
//
// Everything here that touches what a builder could have touched goes
// through directory descriptors and never follows a symlink: the build dir
// and the scratch store dir are the builder's, and a root daemon must not
// be tricked into deleting, chmodding or chowning anything else.

// getDirs returns build dirs for a build of drvPath, whose input closure is
// inputs, running as id: pooled ones cleaned for it, or new ones.
func (b *Builder) getDirs(drvPath storepath.StorePath, sandboxed bool, inputs []storepath.StorePath, id identity) (*buildDirs, error) {
	if !sandboxed {
		return b.makeDirs(drvPath, false, id)
	}
	b.poolMu.Lock()
	var d *buildDirs
	if n := len(b.pool); n > 0 {
		d, b.pool = b.pool[n-1], b.pool[:n-1]
	}
	b.poolMu.Unlock()
	if d == nil {
		return b.makeDirs(drvPath, true, id)
	}
	keep := make(map[string]string, len(inputs))
	for _, p := range inputs {
		keep[p.Base()] = b.store.RealPath(p)
	}
	// The scratch store dir is the daemon's, writable by the builder's
	// group; the build dir is the builder's.
	if err := resetDir(d.store, keep, linkInputs(id.uid), d.uid, os.Geteuid(), id.gid, 0o1775); err != nil {
		d.remove()
		return b.makeDirs(drvPath, true, id)
	}
	if err := resetDir(d.build, nil, false, d.uid, id.uid, id.gid, 0o700); err != nil {
		d.remove()
		return b.makeDirs(drvPath, true, id)
	}
	d.uid, d.gid, d.count = id.uid, id.gid, id.count
	return d, nil
}

// putDirs takes back a finished build's dirs for reuse, or removes them.
// Nothing of the build may run any more.
func (b *Builder) putDirs(d *buildDirs) {
	if d.store == "" {
		d.remove()
		return
	}
	b.poolMu.Lock()
	defer b.poolMu.Unlock()
	if len(b.pool) >= maxPooledDirs {
		d.remove()
		return
	}
	b.pool = append(b.pool, d)
}

// makeDirs makes the build's directories inside the builder's 0700 dir
// (builds on the host with build users: inside the 0710 host builds dir)
// as few as possible, since making a directory is the slowest file system
// call a build makes.
func (b *Builder) makeDirs(drvPath storepath.StorePath, sandboxed bool, id identity) (*buildDirs, error) {
	parent := b.buildsDir
	if !sandboxed && id.user != nil {
		parent = b.hostBuildsDir
		if err := ensureDir(parent, 0, id.gid, 0o710); err != nil {
			return nil, fmt.Errorf("build %s: %w", drvPath, err)
		}
	}
	name := strings.TrimSuffix(drvPath.Name(), ".drv")
	top := filepath.Join(parent, fmt.Sprintf("nix-build-%s-%d-%d", name, os.Getpid(), b.seq.Add(1)))
	d := &buildDirs{build: top, uid: id.uid, gid: id.gid, count: id.count}
	if err := os.Mkdir(d.build, 0o700); err != nil {
		return nil, fmt.Errorf("build %s: %w", drvPath, err)
	}
	if id.uid != os.Geteuid() || id.gid != os.Getegid() {
		if err := os.Lchown(d.build, id.uid, id.gid); err != nil {
			removeAll(d.build)
			return nil, fmt.Errorf("build %s: %w", drvPath, err)
		}
	}
	if !sandboxed {
		return d, nil
	}
	d.root, d.store = b.rootDir, top+".store"
	// Nix's chroot store dir mode: the build user may write there.
	if err := os.Mkdir(d.store, 0o1775); err != nil {
		removeAll(d.build)
		return nil, fmt.Errorf("build %s: %w", drvPath, err)
	}
	if id.gid != os.Getegid() {
		if err := os.Lchown(d.store, os.Geteuid(), id.gid); err != nil {
			d.remove()
			return nil, err
		}
	}
	if err := os.Chmod(d.store, 0o1775); err != nil { // past the umask
		d.remove()
		return nil, err
	}
	return d, nil
}

// ensureDir makes dir, or makes it uid:gid and mode if it is not.
func ensureDir(dir string, uid, gid int, mode uint32) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return &os.PathError{Op: "stat", Path: dir, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("%s: not a directory", dir)
	}
	if int(st.Uid) != uid || int(st.Gid) != gid {
		if err := os.Lchown(dir, uid, gid); err != nil {
			return err
		}
	}
	if st.Mode&0o7777 != mode {
		if err := unix.Chmod(dir, mode); err != nil {
			return &os.PathError{Op: "chmod", Path: dir, Err: err}
		}
	}
	return nil
}

// remove deletes the build's directories, in the background: nothing waits
// for it.
func (d *buildDirs) remove() {
	go func() {
		removeAll(d.build)
		if d.store != "" {
			removeAll(d.store)
		}
	}()
}

// resetDir empties dir but for mount points of the entries named in keep
// (name to the real path the mount's source is), and gives dir the owner and
// mode of the next build's (the builder may have changed the mode). A mount
// point is an empty regular file with one link or an empty directory, owned
// by the daemon or by prevUID (the last build's init made it): one named in
// keep stays, one of another name is renamed to a name in keep that lacks
// one, of the type the source's (the mount's) is; with links, not to a name
// whose source will be linked (see linkInputs), which needs no mount point.
func resetDir(dir string, keep map[string]string, links bool, prevUID, uid, gid int, mode uint32) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: dir, Err: err}
	}
	f := os.NewFile(uintptr(fd), dir)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if int(st.Uid) != os.Geteuid() && int(st.Uid) != prevUID {
		return errors.New("reset build dir: not ours")
	}
	names, err := f.Readdirnames(-1)
	if err != nil {
		return err
	}
	present := make(map[string]bool, len(names))
	var spare [2][]string // mount points of other names: files, directories
	for _, name := range names {
		if src, ok := keep[name]; ok && isInputLink(fd, name, src) {
			present[name] = true
			continue
		}
		if kind := mountPointKind(fd, name, prevUID); kind >= 0 {
			if _, ok := keep[name]; ok {
				present[name] = true
				continue
			}
			spare[kind] = append(spare[kind], name)
			continue
		}
		if err := removeAt(fd, name); err != nil {
			return err
		}
	}
	if len(spare[0])+len(spare[1]) > 0 {
		var missing []string
		for name := range keep {
			if !present[name] {
				missing = append(missing, name)
			}
		}
		slices.Sort(missing) // the same dir, the same result
		for _, name := range missing {
			src := keep[name]
			var sst unix.Stat_t
			if unix.Stat(src, &sst) != nil { // init's error, if any, is the better one
				continue
			}
			if links {
				var lst unix.Stat_t
				if unix.Lstat(src, &lst) == nil && linkable(&lst) {
					continue
				}
			}
			kind := 0
			if sst.Mode&unix.S_IFMT == unix.S_IFDIR {
				kind = 1
			}
			if n := len(spare[kind]); n > 0 {
				if unix.Renameat2(fd, spare[kind][n-1], fd, name, unix.RENAME_NOREPLACE) == nil {
					spare[kind] = spare[kind][:n-1]
				}
			}
		}
	}
	for _, list := range spare {
		for _, name := range list {
			if err := removeAt(fd, name); err != nil {
				return err
			}
		}
	}
	if int(st.Uid) != uid || int(st.Gid) != gid {
		if err := unix.Fchown(fd, uid, gid); err != nil {
			return err
		}
	}
	return unix.Fchmod(fd, mode)
}

// Inputs that are regular files are hard-linked into the scratch store dir,
// as Nix 2.8 links them into its chroot, rather than bind-mounted, when the
// builder is a build user and the file is root's and nobody else may write
// it: the builder can neither change nor remove a link it does not own in
// the sticky dir. (A builder with the daemon's ids, or root's mapped, owns
// the inode and could change the store through it; those builds bind.)
// A link stays for the next build that has the same input, as a mount
// point does.

// linkInputs reports whether the builds run by uid get file inputs as links.
func linkInputs(uid int) bool { return os.Geteuid() == 0 && uid != 0 }

// linkInput makes name in dirfd a hard link of the store file src, if src
// may be linked (see linkInputs); false means bind it instead.
func linkInput(dirfd int, name, src string) bool {
	var sst unix.Stat_t
	if unix.Lstat(src, &sst) != nil || !linkable(&sst) {
		return false
	}
	var st unix.Stat_t
	if unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
		if st.Dev == sst.Dev && st.Ino == sst.Ino {
			return true
		}
		if unix.Unlinkat(dirfd, name, 0) != nil {
			return false
		}
	}
	return unix.Linkat(unix.AT_FDCWD, src, dirfd, name, 0) == nil
}

// linkable: a regular file of root's that only root may write.
func linkable(st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFREG && st.Uid == 0 && st.Mode&0o7022 == 0
}

// isInputLink reports whether name in dirfd is a link of the store file src.
func isInputLink(dirfd int, name, src string) bool {
	var st, sst unix.Stat_t
	if unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || !linkable(&st) || st.Nlink < 2 {
		return false
	}
	return unix.Lstat(src, &sst) == nil && st.Dev == sst.Dev && st.Ino == sst.Ino
}

// mountPointKind says whether name in dirfd is an empty regular file with
// one link (0) or an empty directory (1), owned by the daemon or by prevUID;
// -1 if it is neither.
func mountPointKind(dirfd int, name string, prevUID int) int {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return -1
	}
	if int(st.Uid) != os.Geteuid() && int(st.Uid) != prevUID {
		return -1
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		if st.Size == 0 && st.Nlink == 1 {
			return 0
		}
	case unix.S_IFDIR:
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1
		}
		defer unix.Close(fd)
		buf := make([]byte, 256)
		for {
			n, err := unix.Getdents(fd, buf)
			if err != nil {
				return -1
			}
			if n == 0 {
				return 1
			}
			var entries []string
			_, _, entries = unix.ParseDirent(buf[:n], -1, entries)
			if len(entries) > 0 {
				return -1
			}
		}
	}
	return -1
}

// removeAll deletes the tree at path (its last component is not followed;
// the directories above it are the daemon's). A missing path is not an
// error.
func removeAll(path string) error {
	path = filepath.Clean(path)
	fd, err := unix.Open(filepath.Dir(path), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return &os.PathError{Op: "remove", Path: path, Err: err}
	}
	defer unix.Close(fd)
	if err := removeAt(fd, filepath.Base(path)); err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// removeAt deletes name in dirfd and everything below it, through directory
// descriptors, never following a symlink: a builder that swaps a symlink
// for a directory it made cannot make the daemon delete or chmod what the
// link points to. Read-only directories (outputs, a builder's chmod) are
// made writable through their own descriptor first. A missing entry is not
// an error.
func removeAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return &os.PathError{Op: "remove", Path: name, Err: err}
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.EACCES) && chmodDir(dirfd, name) == nil {
		fd, err = unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return &os.PathError{Op: "remove: open", Path: name, Err: err}
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return &os.PathError{Op: "remove: read", Path: name, Err: err}
	}
	chmodded := false
	for _, n := range names {
		err := removeAt(fd, n)
		if err != nil && !chmodded && errors.Is(err, unix.EACCES) {
			// A directory we may not write in: make it writable (through
			// its descriptor) and try again.
			chmodded = true
			if unix.Fchmod(fd, 0o700) == nil {
				err = removeAt(fd, n)
			}
		}
		if err != nil {
			return err
		}
	}
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return &os.PathError{Op: "remove", Path: name, Err: err}
	}
	return nil
}

// chmodDir makes the directory name in dirfd, which this process may not
// read, 0700: through an O_PATH descriptor of the directory itself (its
// /proc/self/fd link resolves to that inode, never to a symlink's target).
func chmodDir(dirfd int, name string) error {
	fd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Chmod("/proc/self/fd/"+strconv.Itoa(fd), 0o700)
}
