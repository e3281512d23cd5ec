// Package fsnar serialises a file tree as a NAR with read-ahead.
//
// nar.Writer is a plain codec; this package adds the file system side: a second
// goroutine walks the tree and reads file contents into a small ring of buffers
// while the caller's goroutine feeds them to the nar.Writer (and so to whatever
// hashes or scans the archive). On a machine with two cores, hashing on one overlaps
// the walk and the reads on the other, which is what makes `cairn hash path` and
// adding a tree to the store faster than Nix's single-threaded dump.
//
// The walker's vocabulary: a directory is listed with getdents64 into one buffer
// and sorted; a run is up to ringSlots consecutive regular files of one listing.
// Where io_uring is available, a run takes two rounds of an io_uring (type ring;
// not to be confused with the ring of buffers), each one io_uring_enter: the open round opens every file of the run (OPENAT, and the
// CLOSEs left from before); then each file is fstat'ed (a plain call: STATX
// through the ring always goes to the kernel's worker threads), and the read round
// reads every file that fits the current batch straight into it, each READ
// followed by the file's CLOSE. A file larger than the batch's room is streamed by
// plain reads. Where io_uring is missing or refused (ENOSYS, EPERM from seccomp or
// io_uring_disabled), or for a single file, files are opened, read and closed by
// plain system calls; a file the ring could not open or read whole is retried that
// way, which gives the error.
//
// The archive is byte-identical to nar.Dump's and `nix-store --dump`'s: entries in
// byte-wise order of their names, the executable flag from the owner's x bit, only
// regular files, directories and symlinks. Memory use is bounded by the ring
// (ringBuffers × bufferSize) whatever the size of the tree or its files.
package fsnar

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"cairn/internal/nar"
)

const (
	// bufferSize is the size of one read-ahead buffer; small files share one.
	bufferSize = 1 << 20
	// ringBuffers is how many buffers may be in flight between the two goroutines.
	ringBuffers = 8
	// maxEventsPerBatch bounds the headers carried by one buffer.
	maxEventsPerBatch = 512
)

// event is one step of the archive: a header with the first part of its contents, or
// (hdr == nil) more contents of the current file.
type event struct {
	hdr  *nar.Header
	data []byte
}

type batch struct {
	events  []event
	headers []nar.Header // what the events' headers point to; never grows past cap
	buf     []byte
	err     error // set on the last batch when the walk failed
}

// Dump writes the NAR serialisation of the file system object at path to w.
func Dump(ctx context.Context, w io.Writer, path string) error {
	return dumpNAR(ctx, nar.NewWriter(w), path)
}

// DumpDirect is Dump for a destination that is as cheap to call as to copy into,
// such as a hash: the contents of files go to w without a copy (see
// nar.NewWriterDirect).
func DumpDirect(ctx context.Context, w io.Writer, path string) error {
	return dumpNAR(ctx, nar.NewWriterDirect(w), path)
}

func dumpNAR(parent context.Context, nw *nar.Writer, path string) error {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	free := make(chan *batch, ringBuffers)
	defer func() {
		// Every batch not held by a canceled walker is back in free by now.
		for {
			select {
			case b := <-free:
				batchPool.Put(b)
			default:
				return
			}
		}
	}()
	full := make(chan *batch, ringBuffers)
	w1 := &walker{ctx: ctx, free: free, full: full}
	go w1.run(path)

	var err error
	for b := range full {
		if err == nil {
			err = writeBatch(nw, b)
			if err != nil {
				cancel() // stop the walker; keep draining so it can exit
			}
		}
		if b.err != nil && err == nil {
			err = b.err
		}
		b.reset()
		select {
		case free <- b:
		default:
		}
	}
	if err == nil {
		err = parent.Err() // the walker stops quietly when canceled
	}
	if err != nil {
		return err
	}
	return nw.Close()
}

func writeBatch(nw *nar.Writer, b *batch) error {
	for _, e := range b.events {
		if e.hdr != nil {
			if err := nw.WriteHeader(e.hdr); err != nil {
				return err
			}
		}
		if len(e.data) > 0 {
			if _, err := nw.Write(e.data); err != nil {
				return err
			}
		}
	}
	return nil
}

// batchPool keeps batches between dumps: a build registers many tiny outputs,
// and a fresh ring of megabyte buffers for each was most of a build's garbage.
var batchPool = sync.Pool{New: func() any {
	return &batch{
		buf:     make([]byte, 0, bufferSize),
		events:  make([]event, 0, maxEventsPerBatch),
		headers: make([]nar.Header, 0, maxEventsPerBatch),
	}
}}

// reset empties b for reuse, dropping what its events point to.
func (b *batch) reset() {
	clear(b.events)
	clear(b.headers)
	b.events, b.headers, b.buf, b.err = b.events[:0], b.headers[:0], b.buf[:0], nil
}

// walker runs on its own goroutine and owns the batch it is filling.
type walker struct {
	ctx  context.Context
	free chan *batch
	full chan *batch
	cur  *batch
	made int // batches taken from batchPool, at most ringBuffers

	direntBuf *[direntBufferSize]byte // getdents64 buffer, from direntPool
	nameBuf   []byte                  // the names of the directory being listed

	ring   *ring // nil until a directory has a run of files, and without io_uring
	noRing bool  // io_uring is unavailable or failed: use plain system calls
	ringState

	// Fetching ahead (prefetch.go).
	rootPath string
	progress progress
	probed   bool // this directory's first file was checked
	fetching bool // a fetcher runs
}

var errCanceled = errors.New("canceled")

func (w *walker) run(root string) {
	defer close(w.full)
	defer w.progress.done.Store(true)
	w.rootPath = root
	err := w.root(root)
	if w.ring != nil {
		w.closeRing()
	}
	if w.direntBuf != nil {
		direntPool.Put(w.direntBuf)
	}
	if errors.Is(err, errCanceled) {
		return
	}
	if w.cur == nil {
		if !w.take() {
			return
		}
	}
	w.cur.err = err
	w.full <- w.cur
}

// take gets an empty batch, or reports false when the consumer has gone.
func (w *walker) take() bool {
	if w.ctx.Err() != nil {
		return false
	}
	// The ring grows to ringBuffers only when the consumer falls behind, so a
	// small tree uses one batch.
	if w.made < ringBuffers {
		select {
		case b := <-w.free:
			w.cur = b
		default:
			w.cur = batchPool.Get().(*batch)
			w.made++
		}
		return true
	}
	select {
	case b := <-w.free:
		w.cur = b
		return true
	case <-w.ctx.Done():
		return false
	}
}

func (w *walker) flush() error {
	if w.cur != nil {
		select {
		case w.full <- w.cur:
		case <-w.ctx.Done():
			return errCanceled
		}
		w.cur = nil
	}
	if !w.take() {
		return errCanceled
	}
	return nil
}

// emit adds an event, flushing first if the batch has no room for the header.
func (w *walker) emit(h nar.Header) error {
	if w.cur == nil || len(w.cur.events) == cap(w.cur.events) {
		if err := w.flush(); err != nil {
			return err
		}
	}
	b := w.cur
	b.headers = append(b.headers, h)
	b.events = append(b.events, event{hdr: &b.headers[len(b.headers)-1]})
	return nil
}

// root dumps the object at path, which may be a file, a symlink or a directory.
func (w *walker) root(path string) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fmt.Errorf("dump %s: %w", path, &os.PathError{Op: "lstat", Path: path, Err: err})
	}
	return w.node(unix.AT_FDCWD, "", path, "", st.Mode&unix.S_IFMT)
}

// node dumps the entry name of the directory dirfd; dir is that directory's path
// ("" for the root, whose name is its path), rel the archive path, and ifmt the
// entry's type as the directory listing told it.
func (w *walker) node(dirfd int, dir, name, rel string, ifmt uint32) error {
	if ifmt == unix.S_IFREG {
		return w.file(dirfd, dir, name, rel)
	}
	path := join(dir, name)
	switch ifmt {
	case unix.S_IFLNK:
		target, err := readlinkat(dirfd, name)
		if err != nil {
			return fmt.Errorf("dump %s: %w", path, &os.PathError{Op: "readlink", Path: path, Err: err})
		}
		return w.emit(nar.Header{Path: rel, Type: nar.TypeSymlink, LinkTarget: target})
	case unix.S_IFDIR:
		return w.dir(dirfd, name, path, rel)
	}
	return fmt.Errorf("dump %s: file has an unsupported type", path)
}

func (w *walker) dir(dirfd int, name, path, rel string) error {
	fd, err := openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
	if err != nil {
		return fmt.Errorf("dump %s: %w", path, &os.PathError{Op: "open", Path: path, Err: err})
	}
	defer unix.Close(fd)
	if err := w.emit(nar.Header{Path: rel, Type: nar.TypeDirectory}); err != nil {
		return err
	}
	w.probed = false
	entries, err := w.readDir(fd)
	if err != nil {
		return fmt.Errorf("dump %s: %w", path, &os.PathError{Op: "getdents", Path: path, Err: err})
	}
	// Byte-wise order of names, as Nix orders entries.
	slices.SortFunc(entries, func(a, b dirent) int { return strings.Compare(a.name, b.name) })
	for i := 0; i < len(entries); {
		// A run of regular files goes to the ring, when there is one.
		if j := regularRun(entries, i); j-i >= minRingRun && w.useRing() {
			if err := w.files(fd, path, rel, entries[i:j]); err != nil {
				return err
			}
			i = j
			continue
		}
		e := entries[i]
		i++
		child := e.name
		if rel != "" {
			child = rel + "/" + e.name
		}
		ifmt, err := entryType(fd, e)
		if err != nil {
			return fmt.Errorf("dump %s/%s: %w", path, e.name, err)
		}
		if err := w.node(fd, path, e.name, child, ifmt); err != nil {
			return err
		}
	}
	return nil
}

// regularRun returns the end of the run of regular files starting at entries[i],
// at most ringSlots long.
func regularRun(entries []dirent, i int) int {
	j := i
	for j < len(entries) && j-i < ringSlots && entries[j].typ == unix.DT_REG {
		j++
	}
	return j
}

// dirent is one entry of a directory listing.
type dirent struct {
	// name is a substring of one string holding all the directory's names, each
	// followed by a NUL, so that its bytes can go to the kernel as they are.
	name string
	typ  uint8 // DT_REG, DT_DIR, DT_LNK, DT_UNKNOWN, ...
}

// direntBufferSize is the buffer for one getdents64 call; dirent names are at most
// 255 bytes, so any entry fits.
const direntBufferSize = 32 << 10

var direntPool = sync.Pool{New: func() any { return new([direntBufferSize]byte) }}

// readDir lists the directory open as fd, without "." and "..".
func (w *walker) readDir(fd int) ([]dirent, error) {
	if w.direntBuf == nil {
		w.direntBuf = direntPool.Get().(*[direntBufferSize]byte)
	}
	type span struct {
		off, len int
		typ      uint8
	}
	var spans []span
	names := w.nameBuf[:0]
	err := readDirents(fd, w.direntBuf[:], func(name []byte, typ uint8) {
		spans = append(spans, span{len(names), len(name), typ})
		names = append(names, name...)
		names = append(names, 0)
	})
	if err != nil {
		return nil, err
	}
	w.nameBuf = names
	all := string(names)
	entries := make([]dirent, len(spans))
	for i, sp := range spans {
		entries[i] = dirent{name: all[sp.off : sp.off+sp.len], typ: sp.typ}
	}
	return entries, nil
}

var errBadDirent = errors.New("malformed directory entry")

// parseDirents calls fn for each entry of a getdents64 buffer but "." and "..".
func parseDirents(b []byte, fn func(name []byte, typ uint8)) error {
	for len(b) > 0 {
		// struct linux_dirent64: u64 d_ino, s64 d_off, u16 d_reclen, u8 d_type, d_name
		if len(b) < 19 {
			return errBadDirent
		}
		reclen := int(binary.NativeEndian.Uint16(b[16:]))
		if reclen < 19 || reclen > len(b) {
			return errBadDirent
		}
		typ, name := b[18], b[19:reclen]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		b = b[reclen:]
		if len(name) == 0 || string(name) == "." || string(name) == ".." {
			continue
		}
		fn(name, typ)
	}
	return nil
}

// readDirents calls fn for each entry of the directory open as fd but "."
// and "..", reading it with getdents64 into buf.
func readDirents(fd int, buf []byte, fn func(name []byte, typ uint8)) error {
	for {
		n, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n <= 0 {
			return nil
		}
		if err := parseDirents(buf[:n], fn); err != nil {
			return err
		}
	}
}

// entryType maps a directory entry's type to S_IFMT bits, asking the file system
// only when the listing did not say.
func entryType(dirfd int, e dirent) (uint32, error) {
	switch e.typ {
	case unix.DT_REG:
		return unix.S_IFREG, nil
	case unix.DT_DIR:
		return unix.S_IFDIR, nil
	case unix.DT_LNK:
		return unix.S_IFLNK, nil
	}
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, e.name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return 0, err
	}
	return st.Mode & unix.S_IFMT, nil
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

// join is dir/name, or name for the root.
func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

func (w *walker) file(dirfd int, dir, name, rel string) error {
	fd, err := openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
	if err != nil {
		path := join(dir, name)
		return fmt.Errorf("dump %s: %w", path, &os.PathError{Op: "open", Path: path, Err: err})
	}
	defer unix.Close(fd)
	return w.contents(fd, dir, name, rel)
}

// contents dumps the regular file open as fd, the entry name of directory dir.
func (w *walker) contents(fd int, dir, name, rel string) error {
	var st unix.Stat_t
	if err := fstatRegular(fd, dir, name, &st); err != nil {
		return err
	}
	w.seen(fd, &st)
	return w.stream(fd, &st, rel, dir, name)
}

// fstatRegular stats the file open as fd, which must still be a regular file.
func fstatRegular(fd int, dir, name string, st *unix.Stat_t) error {
	if err := unix.Fstat(fd, st); err != nil {
		path := join(dir, name)
		return fmt.Errorf("dump %s: %w", path, &os.PathError{Op: "fstat", Path: path, Err: err})
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("dump %s: file changed type while dumping", join(dir, name))
	}
	return nil
}

// stream emits the header of the file open as fd and reads its contents into as
// many batches as they take.
func (w *walker) stream(fd int, st *unix.Stat_t, rel, dir, name string) error {
	h := nar.Header{Path: rel, Type: nar.TypeRegular, Executable: st.Mode&unix.S_IXUSR != 0, Size: st.Size}
	if err := w.emit(h); err != nil {
		return err
	}
	left := st.Size
	first := true
	for left > 0 {
		if len(w.cur.buf) == cap(w.cur.buf) || (!first && len(w.cur.events) == cap(w.cur.events)) {
			if err := w.flush(); err != nil {
				return err
			}
			first = false // the header went out with the previous batch
		}
		b := w.cur
		room := int64(cap(b.buf) - len(b.buf))
		want := min(left, room)
		start := len(b.buf)
		chunk := b.buf[start : start+int(want)]
		n, err := readFull(fd, chunk)
		if err != nil {
			path := join(dir, name)
			return fmt.Errorf("dump %s: %w", path, &os.PathError{Op: "read", Path: path, Err: err})
		}
		if n < len(chunk) {
			return fmt.Errorf("dump %s: file shrank while dumping", join(dir, name))
		}
		b.buf = b.buf[:start+n]
		if first {
			b.events[len(b.events)-1].data = chunk
			first = false
		} else {
			b.events = append(b.events, event{data: chunk})
		}
		left -= int64(n)
	}
	return nil
}

// reread reads the file the ring could not read into chunk, through plain system
// calls.
func reread(dirfd int, dir, name string, chunk []byte) error {
	fd, err := openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
	if err != nil {
		path := join(dir, name)
		return fmt.Errorf("dump %s: %w", path, &os.PathError{Op: "open", Path: path, Err: err})
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := fstatRegular(fd, dir, name, &st); err != nil {
		return err
	}
	if st.Size != int64(len(chunk)) {
		return fmt.Errorf("dump %s: file changed size while dumping", join(dir, name))
	}
	n, err := readFull(fd, chunk)
	if err != nil {
		path := join(dir, name)
		return fmt.Errorf("dump %s: %w", path, &os.PathError{Op: "read", Path: path, Err: err})
	}
	if n < len(chunk) {
		return fmt.Errorf("dump %s: file shrank while dumping", join(dir, name))
	}
	return nil
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
