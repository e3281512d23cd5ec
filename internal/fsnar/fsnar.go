// Package fsnar serialises a file tree as a NAR with read-ahead.
//
// nar.Writer is a plain codec and nar.Dump a plain sequential walk; this package adds
// concurrency on the file system side. A walker goroutine lists directories in
// archive order, reader goroutines open and read the regular files it finds, and the
// caller's goroutine writes the archive in order (and so hashes or scans it). On two
// cores the system calls and copies run beside the hashing, which is what makes
// `cairn hash path` and adding a tree to the store faster than Nix's single-threaded
// dump.
//
// The archive is byte-identical to nar.Dump's and `nix-store --dump`'s: entries in
// byte-wise order of their names, the executable flag from the owner's x bit, only
// regular files, directories and symlinks. Memory is bounded whatever the tree: at
// most maxInFlight files are ahead of the writer, each holding at most one chunk.
package fsnar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"cairn/internal/nar"
)

const (
	// chunkSize is how much of a file a reader reads ahead; the writer reads the rest.
	chunkSize = 256 << 10
	// maxInFlight bounds the nodes between the walker and the writer.
	maxInFlight = 64
	// readers is the number of goroutines opening and reading files.
	readers = 2
)

var chunkPool = sync.Pool{New: func() any { b := make([]byte, chunkSize); return &b }}

// dirRef is a directory fd shared by the walker and the readers of its files; the
// last release closes it.
type dirRef struct {
	fd   int
	refs atomic.Int32
}

func (d *dirRef) release() {
	if d.refs.Add(-1) == 0 {
		unix.Close(d.fd)
	}
}

// node is one archive entry on its way from the walker to the writer. For a regular
// file the walker fills in where it is, a reader the rest, then closes ready.
type node struct {
	hdr nar.Header

	// Regular files only.
	dir   *dirRef
	name  string // in dir
	path  string // for messages
	ready chan struct{}
	buf   *[]byte // pooled chunk holding data
	data  []byte  // the first part of the contents
	fd    int     // open when contents remain past data, else -1
	err   error
}

// Dump writes the NAR serialisation of the file system object at path to w.
func Dump(ctx context.Context, w io.Writer, path string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	nodes := make(chan *node, maxInFlight)
	jobs := make(chan *node, maxInFlight)

	var wg sync.WaitGroup
	for i := 0; i < readers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range jobs {
				n.read(ctx)
			}
		}()
	}
	walkErr := make(chan error, 1)
	go func() {
		wk := &walker{ctx: ctx, nodes: nodes, jobs: jobs}
		err := wk.root(path)
		close(jobs)
		close(nodes)
		walkErr <- err
	}()

	nw := nar.NewWriter(w)
	var err error
	var rest []byte
	for n := range nodes {
		if n.ready != nil {
			<-n.ready
		}
		if err == nil {
			if err = n.write(nw, &rest); err != nil {
				cancel() // stop the walker and readers; keep draining to free what they hold
			}
		}
		n.free()
	}
	wg.Wait()
	if werr := <-walkErr; err == nil {
		err = werr
	}
	if err != nil {
		return err
	}
	return nw.Close()
}

// read opens the file and reads its first chunk; it runs on a reader goroutine.
func (n *node) read(ctx context.Context) {
	defer close(n.ready)
	defer n.dir.release()
	n.fd = -1
	if err := ctx.Err(); err != nil {
		n.err = err
		return
	}
	fd, err := openat(n.dir.fd, n.name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
	if err != nil {
		n.err = fmt.Errorf("dump %s: %w", n.path, &os.PathError{Op: "open", Path: n.path, Err: err})
		return
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		n.err = fmt.Errorf("dump %s: %w", n.path, &os.PathError{Op: "fstat", Path: n.path, Err: err})
		return
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		n.err = fmt.Errorf("dump %s: file changed type while dumping", n.path)
		return
	}
	n.hdr.Executable = st.Mode&unix.S_IXUSR != 0
	n.hdr.Size = st.Size
	if st.Size > 0 {
		n.buf = chunkPool.Get().(*[]byte)
		want := (*n.buf)[:min(int64(chunkSize), st.Size)]
		got, err := readFull(fd, want)
		if err == nil && got < len(want) {
			err = errors.New("file shrank while dumping")
		}
		if err != nil {
			unix.Close(fd)
			n.err = fmt.Errorf("dump %s: %w", n.path, err)
			return
		}
		n.data = want
	}
	if int64(len(n.data)) < st.Size {
		n.fd = fd
	} else {
		unix.Close(fd)
	}
}

// write puts the node into the archive; rest is the writer's buffer for file
// contents past the first chunk.
func (n *node) write(nw *nar.Writer, rest *[]byte) error {
	if n.err != nil {
		return n.err
	}
	if err := nw.WriteHeader(&n.hdr); err != nil {
		return err
	}
	if len(n.data) > 0 {
		if _, err := nw.Write(n.data); err != nil {
			return err
		}
	}
	if n.fd < 0 {
		return nil
	}
	if *rest == nil {
		*rest = make([]byte, 1<<20)
	}
	for left := n.hdr.Size - int64(len(n.data)); left > 0; {
		got, err := readFull(n.fd, (*rest)[:min(int64(len(*rest)), left)])
		if err == nil && got == 0 {
			err = errors.New("file shrank while dumping")
		}
		if err != nil {
			return fmt.Errorf("dump %s: %w", n.path, err)
		}
		if _, err := nw.Write((*rest)[:got]); err != nil {
			return err
		}
		left -= int64(got)
	}
	return nil
}

// free returns what the node holds; it runs on the writer's goroutine.
func (n *node) free() {
	if n.fd >= 0 && n.ready != nil {
		unix.Close(n.fd)
		n.fd = -1
	}
	if n.buf != nil {
		chunkPool.Put(n.buf)
		n.buf, n.data = nil, nil
	}
}

// walker lists directories in archive order on its own goroutine.
type walker struct {
	ctx   context.Context
	nodes chan<- *node
	jobs  chan<- *node
}

func (w *walker) send(ch chan<- *node, n *node) error {
	select {
	case ch <- n:
		return nil
	case <-w.ctx.Done():
		return w.ctx.Err()
	}
}

// root dumps the object at path, which may be a file, a symlink or a directory.
func (w *walker) root(path string) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fmt.Errorf("dump %s: %w", path, &os.PathError{Op: "lstat", Path: path, Err: err})
	}
	cwd := &dirRef{fd: unix.AT_FDCWD}
	cwd.refs.Store(1 << 30) // never closed
	return w.node(cwd, path, path, "", st.Mode&unix.S_IFMT)
}

// node dumps the entry name of the directory dir; path is for messages, rel is the
// archive path, and ifmt the entry's type as the directory listing told it.
func (w *walker) node(dir *dirRef, name, path, rel string, ifmt uint32) error {
	switch ifmt {
	case unix.S_IFREG:
		dir.refs.Add(1)
		n := &node{hdr: nar.Header{Path: rel, Type: nar.TypeRegular}, dir: dir, name: name, path: path,
			ready: make(chan struct{}), fd: -1}
		if err := w.send(w.nodes, n); err != nil {
			dir.release()
			return err
		}
		if err := w.send(w.jobs, n); err != nil {
			// The writer already has the node and waits for it to be ready.
			n.err = err
			dir.release()
			close(n.ready)
			return err
		}
		return nil
	case unix.S_IFLNK:
		target, err := readlinkat(dir.fd, name)
		if err != nil {
			return fmt.Errorf("dump %s: %w", path, &os.PathError{Op: "readlink", Path: path, Err: err})
		}
		return w.send(w.nodes, &node{hdr: nar.Header{Path: rel, Type: nar.TypeSymlink, LinkTarget: target}, fd: -1})
	case unix.S_IFDIR:
		return w.dir(dir, name, path, rel)
	}
	return fmt.Errorf("dump %s: file has an unsupported type", path)
}

func (w *walker) dir(parent *dirRef, name, path, rel string) error {
	fd, err := openat(parent.fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
	if err != nil {
		return fmt.Errorf("dump %s: %w", path, &os.PathError{Op: "open", Path: path, Err: err})
	}
	dir := &dirRef{fd: fd}
	dir.refs.Store(1)
	defer dir.release()
	if err := w.send(w.nodes, &node{hdr: nar.Header{Path: rel, Type: nar.TypeDirectory}, fd: -1}); err != nil {
		return err
	}
	entries, err := readDir(fd, path)
	if err != nil {
		return fmt.Errorf("dump %s: %w", path, err)
	}
	for _, e := range entries {
		child := e.name
		if rel != "" {
			child = rel + "/" + e.name
		}
		if err := w.node(dir, e.name, path+"/"+e.name, child, e.ifmt); err != nil {
			return err
		}
	}
	return nil
}

type entry struct {
	name string
	ifmt uint32
}

// readDir lists the directory fd in byte-wise order of names, as Nix orders entries,
// with each entry's type from the listing (or from fstatat where the listing does
// not say).
func readDir(fd int, path string) ([]entry, error) {
	// os.File would take ownership of fd; list through a duplicate instead.
	dup, err := unix.Dup(fd)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dup), path)
	defer f.Close()
	des, err := f.ReadDir(-1)
	if err != nil {
		return nil, err
	}
	entries := make([]entry, len(des))
	for i, de := range des {
		entries[i].name = de.Name()
		switch t := de.Type(); {
		case t.IsRegular():
			entries[i].ifmt = unix.S_IFREG
		case t.IsDir():
			entries[i].ifmt = unix.S_IFDIR
		case t&os.ModeSymlink != 0:
			entries[i].ifmt = unix.S_IFLNK
		default:
			var st unix.Stat_t
			if err := unix.Fstatat(fd, de.Name(), &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return nil, err
			}
			entries[i].ifmt = st.Mode & unix.S_IFMT
		}
	}
	slices.SortFunc(entries, func(a, b entry) int { return strings.Compare(a.name, b.name) })
	return entries, nil
}

func openat(dirfd int, name string, flags int) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, flags, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

func readlinkat(dirfd int, name string) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < len(buf) {
			return string(buf[:n]), nil
		}
		if len(buf) > nar.MaxTargetLen {
			return "", fmt.Errorf("symlink target longer than %d bytes", nar.MaxTargetLen)
		}
		buf = make([]byte, 2*len(buf))
	}
}

func readFull(fd int, p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := unix.Read(fd, p[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		if m == 0 {
			break
		}
		n += m
	}
	return n, nil
}
