package build

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"cairn/internal/storepath"
)

// maxPooledDirs bounds the build dirs kept for reuse.
const maxPooledDirs = 16

// Build dirs are reused. Making an inode is the slowest file system call a
// sandboxed build makes (ext4 scans its bitmaps for one that was not
// recently freed), and a build makes one per input: the mount point of each
// input in the scratch store dir. A reused scratch store dir keeps the mount
// points of the inputs the next build shares with the last one, and
// nothing else: getDirs deletes every other entry, and any entry that is
// not an empty regular file or empty directory of ours, so the builder sees
// exactly its inputs, as with a fresh dir.

// getDirs returns build dirs for a build of drvPath whose input closure is
// inputs: pooled ones cleaned for it, or new ones.
func (b *Builder) getDirs(drvPath storepath.StorePath, sandboxed bool, inputs []storepath.StorePath) (*buildDirs, error) {
	if !sandboxed {
		return b.makeDirs(drvPath, false)
	}
	b.poolMu.Lock()
	var d *buildDirs
	if n := len(b.pool); n > 0 {
		d, b.pool = b.pool[n-1], b.pool[:n-1]
	}
	b.poolMu.Unlock()
	if d == nil {
		return b.makeDirs(drvPath, true)
	}
	keep := make(map[string]bool, len(inputs))
	for _, p := range inputs {
		keep[p.Base()] = true
	}
	if err := resetDir(d.store, keep); err != nil {
		d.remove()
		return b.makeDirs(drvPath, true)
	}
	if err := resetDir(d.build, nil); err != nil {
		d.remove()
		return b.makeDirs(drvPath, true)
	}
	return d, nil
}

// putDirs takes back a finished build's dirs for reuse, or removes them.
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

// resetDir empties dir but for the entries named in keep that are empty
// regular files or empty directories owned by this process, and gives dir
// back its mode (the builder may have changed it).
func resetDir(dir string, keep map[string]bool) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return err
	}
	if int(st.Uid) != os.Geteuid() || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return errors.New("reset build dir: not ours")
	}
	names, err := f.Readdirnames(-1)
	if err != nil {
		return err
	}
	for _, name := range names {
		if keep[name] && isEmptyMountPoint(int(f.Fd()), name) {
			continue
		}
		if err := removeAll(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	mode := uint32(0o700)
	if keep != nil {
		mode = 0o1775
	}
	return unix.Fchmod(int(f.Fd()), mode)
}

// isEmptyMountPoint reports whether name in dirfd is an empty regular file
// with one link or an empty directory, owned by this process.
func isEmptyMountPoint(dirfd int, name string) bool {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return false
	}
	if int(st.Uid) != os.Geteuid() {
		return false
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		return st.Size == 0 && st.Nlink == 1
	case unix.S_IFDIR:
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return false
		}
		defer unix.Close(fd)
		buf := make([]byte, 256)
		for {
			n, err := unix.Getdents(fd, buf)
			if err != nil {
				return false
			}
			if n == 0 {
				return true
			}
			var entries []string
			_, _, entries = unix.ParseDirent(buf[:n], -1, entries)
			if len(entries) > 0 {
				return false
			}
		}
	}
	return false
}
