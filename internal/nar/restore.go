package nar

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// RestoreOptions adjusts Restore.
type RestoreOptions struct {
	// CaseHack renames an entry whose name equals an earlier entry's of the same
	// directory up to ASCII case: it gets CaseHackSuffix and a counter, kept per
	// original name and starting at 1 (Nix's use-case-hack, for case-insensitive
	// file systems).
	CaseHack bool
}

// restoreBufferSize is the copy buffer for file contents.
const restoreBufferSize = 256 << 10

// Restore reads a NAR from r and recreates its tree at dir, which must not exist.
// The root may be a directory, a regular file or a symlink. If r is a *Reader it
// is used as is (it must not have been advanced); otherwise Restore reads the
// archive from r and nothing past it.
//
// Every file is created relative to its parent directory's descriptor with
// O_EXCL/O_NOFOLLOW semantics, so nothing is written outside dir and no symlink
// is followed. Files are created mode 0666 and executables get the execute bits
// added, both subject to the umask, as Nix does. On error, whatever was already
// created is left in place: restore into a fresh temporary name and remove it on
// failure.
func Restore(r io.Reader, dir string, opts RestoreOptions) error {
	nr, ok := r.(*Reader)
	if !ok {
		nr = NewReader(r)
	}
	h, err := nr.Next()
	if err != nil {
		return fmt.Errorf("restore nar %s: %w", dir, err)
	}
	parent, base := filepath.Split(filepath.Clean(dir))
	if base == "" || base == "." || base == ".." || base == "/" {
		return fmt.Errorf("restore nar %s: not a name for a new file", dir)
	}
	if parent == "" {
		parent = "."
	}
	pfd, err := openat(atFDCWD, parent, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		return &os.PathError{Op: "restore nar: open", Path: parent, Err: err}
	}
	rs := &restorer{r: nr, opts: opts, root: dir, buf: make([]byte, restoreBufferSize)}
	defer rs.closeAll()
	err = rs.create(pfd, base, h)
	syscall.Close(pfd)
	if err != nil {
		return err
	}
	for {
		h, err := nr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("restore nar %s: %w", dir, err)
		}
		parent, name := "", h.Path
		if i := strings.LastIndexByte(h.Path, '/'); i >= 0 {
			parent, name = h.Path[:i], h.Path[i+1:]
		}
		for len(rs.dirs) > 0 && rs.dirs[len(rs.dirs)-1].path != parent {
			rs.pop()
		}
		if len(rs.dirs) == 0 {
			// The Reader guarantees structure; this is a bug guard, not input validation.
			return fmt.Errorf("restore nar %s: entry %q has no open parent", dir, h.Path)
		}
		top := &rs.dirs[len(rs.dirs)-1]
		if opts.CaseHack {
			key := asciiLower(name)
			if n, seen := top.names[key]; seen {
				n++
				top.names[key] = n
				name += CaseHackSuffix + strconv.Itoa(n)
			} else {
				top.names[key] = 0
			}
		}
		if err := rs.create(top.fd, name, h); err != nil {
			return err
		}
	}
}

type restoreDir struct {
	path  string // Header.Path
	fd    int
	names map[string]int // case hack: lower-cased name → collisions so far
}

type restorer struct {
	r    *Reader
	opts RestoreOptions
	root string
	dirs []restoreDir
	buf  []byte
}

func (rs *restorer) pop() {
	syscall.Close(rs.dirs[len(rs.dirs)-1].fd)
	rs.dirs = rs.dirs[:len(rs.dirs)-1]
}

func (rs *restorer) closeAll() {
	for len(rs.dirs) > 0 {
		rs.pop()
	}
}

// create makes node h as name inside dirfd.
func (rs *restorer) create(dirfd int, name string, h *Header) error {
	disk := filepath.Join(rs.root, filepath.FromSlash(h.Path))
	switch h.Type {
	case TypeDirectory:
		if err := mkdirat(dirfd, name, 0o777); err != nil {
			return &os.PathError{Op: "restore nar: mkdir", Path: disk, Err: err}
		}
		fd, err := openat(dirfd, name, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW, 0)
		if err != nil {
			return &os.PathError{Op: "restore nar: open", Path: disk, Err: err}
		}
		d := restoreDir{path: h.Path, fd: fd}
		if rs.opts.CaseHack {
			d.names = map[string]int{}
		}
		rs.dirs = append(rs.dirs, d)
		return nil
	case TypeSymlink:
		if err := symlinkat(h.LinkTarget, dirfd, name); err != nil {
			return &os.PathError{Op: "restore nar: symlink", Path: disk, Err: err}
		}
		return nil
	case TypeRegular:
		fd, err := openat(dirfd, name, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_NOFOLLOW, 0o666)
		if err != nil {
			return &os.PathError{Op: "restore nar: create", Path: disk, Err: err}
		}
		err = rs.fill(fd, h)
		if cerr := syscall.Close(fd); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("restore nar %s: %w", disk, err)
		}
		return nil
	}
	return fmt.Errorf("restore nar %s: unknown node type %v", disk, h.Type)
}

func (rs *restorer) fill(fd int, h *Header) error {
	if h.Executable {
		var st syscall.Stat_t
		if err := syscall.Fstat(fd, &st); err != nil {
			return err
		}
		if err := syscall.Fchmod(fd, st.Mode&0o7777|0o111); err != nil {
			return err
		}
	}
	for {
		n, err := rs.r.Read(rs.buf)
		if n > 0 {
			if werr := writeAll(fd, rs.buf[:n]); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// writeAll writes p to fd, a regular file, retrying short writes and EINTR.
func writeAll(fd int, p []byte) error {
	for len(p) > 0 {
		n, err := syscall.Write(fd, p)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrShortWrite
		}
		p = p[n:]
	}
	return nil
}

func mkdirat(dirfd int, name string, mode uint32) error {
	for {
		err := syscall.Mkdirat(dirfd, name, mode)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

func asciiLower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if 'A' <= b[j] && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}
