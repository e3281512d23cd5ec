package builtins

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// MaxSymlinks bounds the symlinks one resolution follows (Linux's limit).
const MaxSymlinks = 40

// maxLinkTarget bounds a symlink's target.
const maxLinkTarget = 4095

// Bind makes Source (a host path) visible at Target.
type Bind struct {
	Target, Source string
}

// View is the file system a builtin reads, in the builder's terms. With
// Host set every path is the host's own; otherwise only the store paths
// named in Paths (at StoreDir/NAME, read from RealStoreDir/NAME) and the
// Binds are visible, as in Nix's sandbox, and the directories leading to
// them exist but cannot be listed.
type View struct {
	Host         bool
	StoreDir     string
	RealStoreDir string
	Paths        map[string]bool // store path base names
	Binds        []Bind
}

// HostView is the host's own file system.
func HostView() *View { return &View{Host: true} }

// Resolve follows every symlink in p, in the view's terms, and returns the
// resolved path as the builder would see it and the host path holding it
// ("" for a directory that only leads to visible paths). Every component of
// host below the visible path's root was checked not to be a symlink.
func (v *View) Resolve(p string) (logical, host string, err error) {
	if !path.IsAbs(p) {
		return "", "", &fs.PathError{Op: "resolve", Path: p, Err: syscall.EINVAL}
	}
	rest := splitPath(p)
	cur := "/"
	links := 0
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case ".":
			continue
		case "..":
			cur = path.Dir(cur)
			continue
		}
		next := path.Join(cur, c)
		h, virtual := v.hostOf(next)
		if virtual {
			cur = next
			continue
		}
		if h == "" {
			return "", "", &fs.PathError{Op: "stat", Path: next, Err: syscall.ENOENT}
		}
		fi, err := os.Lstat(h)
		if err != nil {
			return "", "", &fs.PathError{Op: "stat", Path: next, Err: errnoOf(err)}
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			cur = next
			continue
		}
		if links++; links > MaxSymlinks {
			return "", "", &fs.PathError{Op: "stat", Path: p, Err: syscall.ELOOP}
		}
		target, err := readlink(h)
		if err != nil {
			return "", "", &fs.PathError{Op: "readlink", Path: next, Err: errnoOf(err)}
		}
		if strings.HasPrefix(target, "/") {
			cur = "/"
		}
		rest = append(splitPath(target), rest...)
	}
	h, virtual := v.hostOf(cur)
	if virtual {
		h = ""
	}
	return cur, h, nil
}

// hostOf maps a resolved path to the host: the host path, or virtual for a
// directory that leads to visible paths; "" and false for an invisible
// path.
func (v *View) hostOf(p string) (host string, virtual bool) {
	if v.Host {
		return p, false
	}
	// The longest bind target that is p or a parent of p.
	best := -1
	for i, b := range v.Binds {
		if under(p, b.Target) && (best < 0 || len(b.Target) > len(v.Binds[best].Target)) {
			best = i
		}
	}
	if best >= 0 {
		b := v.Binds[best]
		return b.Source + strings.TrimPrefix(p, b.Target), false
	}
	if rel, ok := strings.CutPrefix(p, v.StoreDir+"/"); ok {
		name, sub, _ := strings.Cut(rel, "/")
		if v.Paths[name] {
			if sub != "" {
				sub = "/" + sub
			}
			return v.RealStoreDir + "/" + name + sub, false
		}
		return "", false
	}
	if under(v.StoreDir, p) {
		return "", true
	}
	for _, b := range v.Binds {
		if under(b.Target, p) {
			return "", true
		}
	}
	return "", false
}

// under reports whether p is dir or inside it.
func under(p, dir string) bool {
	return p == dir || dir == "/" || strings.HasPrefix(p, dir+"/")
}

func splitPath(p string) []string {
	return slices.DeleteFunc(strings.Split(p, "/"), func(s string) bool { return s == "" })
}

func readlink(p string) (string, error) {
	buf := make([]byte, maxLinkTarget+1)
	n, err := unix.Readlink(p, buf)
	if err != nil {
		return "", err
	}
	if n > maxLinkTarget {
		return "", syscall.ENAMETOOLONG
	}
	return string(buf[:n]), nil
}

func errnoOf(err error) error {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return err
}

// Stat returns the file p resolves to.
func (v *View) Stat(p string) (fs.FileInfo, error) {
	logical, host, err := v.Resolve(p)
	if err != nil {
		return nil, err
	}
	if host == "" {
		return virtualDir(path.Base(logical)), nil
	}
	fi, err := os.Lstat(host)
	if err != nil {
		return nil, &fs.PathError{Op: "stat", Path: logical, Err: errnoOf(err)}
	}
	return fi, nil
}

// ReadDir lists the directory p resolves to, sorted by name.
func (v *View) ReadDir(p string) ([]fs.DirEntry, error) {
	logical, host, err := v.Resolve(p)
	if err != nil {
		return nil, err
	}
	if host == "" {
		return nil, &fs.PathError{Op: "open", Path: logical, Err: syscall.EACCES}
	}
	f, err := openNoFollow(host, unix.O_DIRECTORY)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: logical, Err: errnoOf(err)}
	}
	defer f.Close()
	ents, err := f.ReadDir(-1)
	if err != nil {
		return nil, &fs.PathError{Op: "readdir", Path: logical, Err: errnoOf(err)}
	}
	slices.SortFunc(ents, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	return ents, nil
}

// Open opens the file p resolves to for reading.
func (v *View) Open(p string) (*os.File, error) {
	logical, host, err := v.Resolve(p)
	if err != nil {
		return nil, err
	}
	if host == "" {
		return nil, &fs.PathError{Op: "open", Path: logical, Err: syscall.EISDIR}
	}
	f, err := openNoFollow(host, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: logical, Err: errnoOf(err)}
	}
	return f, nil
}

func openNoFollow(host string, flags int) (*os.File, error) {
	fd, err := unix.Open(host, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW|unix.O_NONBLOCK|flags, 0)
	if err != nil {
		return nil, err
	}
	// Only directories and regular files: a FIFO or device would block
	// or read the host's devices.
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if t := st.Mode & unix.S_IFMT; t != unix.S_IFREG && t != unix.S_IFDIR {
		unix.Close(fd)
		return nil, syscall.EINVAL
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), host), nil
}

// virtualDir is the FileInfo of a directory that only leads to visible
// paths.
type virtualDir string

func (d virtualDir) Name() string       { return string(d) }
func (d virtualDir) Size() int64        { return 0 }
func (d virtualDir) Mode() fs.FileMode  { return fs.ModeDir | 0o555 }
func (d virtualDir) ModTime() time.Time { return time.Time{} }
func (d virtualDir) IsDir() bool        { return true }
func (d virtualDir) Sys() any           { return nil }

// errText is an errno's text as strerror gives it ("No such file or
// directory"), as Nix's SysError messages quote it.
func errText(err error) string {
	var e syscall.Errno
	if errors.As(err, &e) {
		s := e.Error()
		if s != "" {
			return strings.ToUpper(s[:1]) + s[1:]
		}
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return fmt.Sprint(err)
}
