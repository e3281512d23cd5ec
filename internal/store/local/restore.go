package local

import (
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"cairn/internal/nar"
)

// restoreStats is what unpacking one path made; Commit chooses how to make it
// durable from it.
type restoreStats struct {
	entries  int   // regular files, directories and symlinks
	symlinks bool  // some entry is a symlink (only syncfs makes its inode durable)
	bytes    int64 // file contents
	rootDir  bool  // the root is a directory, still writable (CanonicaliseRoot)
}

// restoreCanonical unpacks the NAR nr into the new entry name of dirfd, making
// every entry canonical as it is created, through the descriptor it was made
// with: files are created with their final mode (0444 or 0555) and get the
// store's mtime after their last write; a directory gets mode 0555 and the
// mtime once its last entry is made; a symlink gets the mtime. A root
// directory stays writable for the move into the store dir (CanonicaliseRoot).
// Owner and extended attributes need nothing: the entries are new, owned by
// this process, and the add temporary passes down no default ACL (when it
// does, tempDir.inherits, the caller walks the tree with canonicalise
// instead). Like nar.Restore, nothing outside the new entry is touched and no
// symlink is followed; on error the caller removes what was made.
//
// With writeBehind, the write-out of big files starts while they are written
// (see writeBehind).
func restoreCanonical(nr *nar.Reader, dirfd int, name, disk string, umask uint32, buf []byte, writeBehind bool) (restoreStats, error) {
	var st restoreStats
	h, err := nr.Next()
	if err != nil {
		return st, fmt.Errorf("restore nar %s: %w", disk, err)
	}
	rs := canonRestorer{nr: nr, disk: disk, buf: buf, fixMode: umask&0o555 != 0, writeBehind: writeBehind, st: &st}
	defer rs.closeAll()
	if err := rs.create(dirfd, name, h, true); err != nil {
		return st, err
	}
	for {
		h, err := nr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return st, fmt.Errorf("restore nar %s: %w", disk, err)
		}
		parent, base := "", h.Path
		if i := strings.LastIndexByte(h.Path, '/'); i >= 0 {
			parent, base = h.Path[:i], h.Path[i+1:]
		}
		for len(rs.dirs) > 0 && rs.dirs[len(rs.dirs)-1].path != parent {
			if err := rs.pop(); err != nil {
				return st, err
			}
		}
		if len(rs.dirs) == 0 {
			// The Reader guarantees the structure; a bug guard, not input validation.
			return st, fmt.Errorf("restore nar %s: entry %q has no open parent", disk, h.Path)
		}
		if err := rs.create(rs.dirs[len(rs.dirs)-1].fd, base, h, false); err != nil {
			return st, err
		}
	}
	for len(rs.dirs) > 0 {
		if err := rs.pop(); err != nil {
			return st, err
		}
	}
	return st, nil
}

type canonDir struct {
	path string // Header.Path
	fd   int
	root bool
}

type canonRestorer struct {
	nr      *nar.Reader
	disk    string
	buf     []byte
	fixMode bool // the umask may take bits from a created file's mode
	// writeBehind starts writing big files out early.
	writeBehind bool
	dirs        []canonDir
	st          *restoreStats
}

var storeTimes = []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Sec: StoreMtime}}

func (rs *canonRestorer) path(h *nar.Header) string {
	if h.Path == "" {
		return rs.disk
	}
	return rs.disk + "/" + h.Path
}

// pop finishes the innermost open directory: all its entries exist now.
func (rs *canonRestorer) pop() error {
	d := rs.dirs[len(rs.dirs)-1]
	rs.dirs = rs.dirs[:len(rs.dirs)-1]
	defer unix.Close(d.fd)
	if d.root {
		return nil
	}
	if err := unix.Fchmod(d.fd, modeExec); err != nil {
		return &os.PathError{Op: "canonicalise: chmod", Path: rs.disk + "/" + d.path, Err: err}
	}
	if err := futimens(d.fd, storeTimes); err != nil {
		return &os.PathError{Op: "canonicalise: set time", Path: rs.disk + "/" + d.path, Err: err}
	}
	return nil
}

func (rs *canonRestorer) closeAll() {
	for _, d := range rs.dirs {
		unix.Close(d.fd)
	}
	rs.dirs = nil
}

// create makes the node h as name inside dirfd.
func (rs *canonRestorer) create(dirfd int, name string, h *nar.Header, root bool) error {
	rs.st.entries++
	switch h.Type {
	case nar.TypeDirectory:
		if err := mkdirat(dirfd, name, 0o755); err != nil {
			return &os.PathError{Op: "restore nar: mkdir", Path: rs.path(h), Err: err}
		}
		fd, err := openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW)
		if err != nil {
			return &os.PathError{Op: "restore nar: open", Path: rs.path(h), Err: err}
		}
		rs.dirs = append(rs.dirs, canonDir{path: h.Path, fd: fd, root: root})
		rs.st.rootDir = rs.st.rootDir || root
		return nil
	case nar.TypeSymlink:
		rs.st.symlinks = true
		if err := unix.Symlinkat(h.LinkTarget, dirfd, name); err != nil {
			return &os.PathError{Op: "restore nar: symlink", Path: rs.path(h), Err: err}
		}
		if err := unix.UtimesNanoAt(dirfd, name, storeTimes, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return &os.PathError{Op: "canonicalise: set time", Path: rs.path(h), Err: err}
		}
		return nil
	case nar.TypeRegular:
		mode := uint32(modeFile)
		if h.Executable {
			mode = modeExec
		}
		// Created read-only, yet writable through this descriptor.
		fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
		if err != nil {
			return &os.PathError{Op: "restore nar: create", Path: rs.path(h), Err: err}
		}
		err = rs.fill(fd, h, mode)
		if cerr := unix.Close(fd); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("restore nar %s: %w", rs.path(h), err)
		}
		return nil
	}
	return fmt.Errorf("restore nar %s: unknown node type %v", rs.path(h), h.Type)
}

func (rs *canonRestorer) fill(fd int, h *nar.Header, mode uint32) error {
	if rs.fixMode {
		if err := unix.Fchmod(fd, mode); err != nil {
			return err
		}
	}
	var w io.Writer = fdFile{fd: fd}
	if rs.writeBehind && h.Size >= writeBehindChunk {
		w = &writeBehind{fdFile: fdFile{fd: fd}}
	}
	for {
		n, err := rs.nr.Read(rs.buf)
		if n > 0 {
			if _, werr := w.Write(rs.buf[:n]); werr != nil {
				return werr
			}
			rs.st.bytes += int64(n)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	return futimens(fd, storeTimes)
}

func mkdirat(dirfd int, name string, mode uint32) error {
	for {
		err := unix.Mkdirat(dirfd, name, mode)
		if err != unix.EINTR {
			return err
		}
	}
}
