package builtins

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"golang.org/x/sys/unix"
)

// Limits of builtin:unpack-channel.
const (
	// MaxTarEntries bounds the entries of a channel tarball (a nixpkgs
	// channel has tens of thousands).
	MaxTarEntries = 1 << 22
	// MaxTarPath bounds an entry's name, and a hard link's target, once
	// cleaned (PATH_MAX less its NUL; libarchive cannot stat a longer
	// path either).
	MaxTarPath = 4095
	// MaxFilters bounds the compression layers taken off a tarball (a
	// .tar.gz.xz has two).
	MaxFilters = 4
	// MaxXZDict bounds the dictionary an xz stream's first block may ask
	// for (xz -9 uses 64 MiB).
	MaxXZDict = 256 << 20
	// MaxZstdWindow bounds a zstd frame's window (zstd --long uses
	// 128 MiB).
	MaxZstdWindow = 256 << 20
	// maxCachedDirs bounds the directory descriptors kept open between
	// entries; deeper directories are opened for one entry only.
	maxCachedDirs = 64
	// unpackBufferSize is the buffer file contents are copied through.
	unpackBufferSize = 256 << 10
	// readAheadBuffers and readAheadSize are the ring a decompressed
	// tarball is read ahead into.
	readAheadBuffers = 4
	readAheadSize    = 1 << 20
	// peekSize is the read-ahead used to recognise a compression (an xz
	// block header is at most 1024 bytes after the 12-byte stream
	// header).
	peekSize = 64 << 10
)

// unpackChannel is builtin:unpack-channel, as Nix 2.8's
// builtinUnpackChannel: unpack the tarball src into out, which must then
// hold exactly one entry, renamed channelName.
func unpackChannel(ctx context.Context, j *Job) error {
	out, err := attr(j.Env, "out")
	if err != nil {
		return err
	}
	channelName, err := attr(j.Env, "channelName")
	if err != nil {
		return err
	}
	src, err := attr(j.Env, "src")
	if err != nil {
		return err
	}
	if err := os.Mkdir(j.Out, 0o755); err != nil && !os.IsExist(err) {
		return fmt.Errorf("creating directory '%s': %s", hl(out), errText(err))
	}
	root, err := unix.Open(j.Out, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening directory '%s': %s", hl(out), errText(err))
	}
	defer unix.Close(root)

	f, err := j.View.Open(src)
	if err != nil {
		return fmt.Errorf("failed to open archive: %s", hl(fmt.Sprintf("Failed to open '%s'", src)))
	}
	defer f.Close()
	if err := unpackTarball(ctx, f, root, out); err != nil {
		return err
	}

	names, err := topLevel(root)
	if err != nil {
		return fmt.Errorf("reading directory '%s': %s", hl(out), errText(err))
	}
	if len(names) != 1 {
		return fmt.Errorf("channel tarball '%s' contains more than one file", hl(src))
	}
	// Nix renames OUT/NAME to OUT/channelName; a name that is not one
	// component would leave the output.
	if channelName == "" || channelName == "." || channelName == ".." || strings.Contains(channelName, "/") {
		return fmt.Errorf("renaming channel directory: %s", errText(unix.EINVAL))
	}
	if err := unix.Renameat(root, names[0], root, channelName); err != nil {
		return fmt.Errorf("renaming channel directory: %s", errText(err))
	}
	return nil
}

// topLevel lists up to two names in the directory dirfd.
func topLevel(dirfd int) ([]string, error) {
	fd, err := unix.Openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	d := os.NewFile(uintptr(fd), ".")
	defer d.Close()
	names, err := d.Readdirnames(2)
	if err == io.EOF {
		err = nil
	}
	return names, err
}

// unpackTarball extracts the tarball r (compressed or not) into the
// directory dirfd as Nix 2.8's unpackTarfile does through libarchive
// (permissions kept, ".." refused, never through a symlink), except that
// device nodes and FIFOs are refused (Nix's output would fail anyway). out
// names dirfd in messages.
func unpackTarball(ctx context.Context, r io.Reader, dirfd int, out string) error {
	dr, layers, closeFn, err := decompress(r)
	if err != nil {
		return fmt.Errorf("failed to open archive: %s", hl(err.Error()))
	}
	defer closeFn()
	if layers > 0 {
		// Decompressing overlaps the file system work.
		ra := newReadAhead(dr)
		defer ra.Close()
		dr = ra
	}
	x := &extractor{root: dirfd, out: out, buf: make([]byte, unpackBufferSize)}
	defer x.closeDirs(0)
	tr := tar.NewReader(dr)
	for n := 0; ; n++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil && !errors.Is(err, tar.ErrInsecurePath) {
			if n == 0 && (errors.Is(err, tar.ErrHeader) || errors.Is(err, io.ErrUnexpectedEOF)) {
				return fmt.Errorf("failed to open archive: %s", hl("Unrecognized archive format"))
			}
			return fmt.Errorf("cannot get archive member name: %s", tarError(err))
		}
		if n >= MaxTarEntries {
			return fmt.Errorf("failed to extract archive (%s)", hl(fmt.Sprintf("more than %d entries", MaxTarEntries)))
		}
		if err := x.entry(ctx, h, tr); err != nil {
			return err
		}
	}
}

// tarError is archive/tar's error in libarchive's words.
func tarError(err error) string {
	switch {
	case errors.Is(err, tar.ErrHeader):
		return "Damaged tar archive"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "Truncated tar archive"
	}
	return err.Error()
}

var (
	gzipMagic  = []byte{0x1f, 0x8b}
	bzip2Magic = []byte("BZh")
	xzMagic    = []byte{0xfd, '7', 'z', 'X', 'Z', 0}
	zstdMagic  = []byte{0x28, 0xb5, 0x2f, 0xfd}
	// bzip2's block and end-of-stream magics, after "BZh" and the level.
	bzip2Block = []byte{0x31, 0x41, 0x59, 0x26, 0x53, 0x59}
	bzip2End   = []byte{0x17, 0x72, 0x45, 0x38, 0x50, 0x90}
)

// decompress takes off the compressions r starts with (gzip, bzip2, xz,
// zstd, recognised by their magic bytes as libarchive's filters are) and
// returns the plain stream, the number of layers taken off and a function
// releasing the decoders.
func decompress(r io.Reader) (io.Reader, int, func(), error) {
	var closers []func()
	closeAll := func() {
		for _, c := range closers {
			c()
		}
	}
	br := bufio.NewReaderSize(r, peekSize)
	for layer := 0; ; layer++ {
		magic, err := br.Peek(10)
		if err != nil && err != io.EOF && err != bufio.ErrBufferFull {
			closeAll()
			return nil, 0, nil, err
		}
		var next io.Reader
		switch {
		case bytes.HasPrefix(magic, gzipMagic):
			zr, err := gzip.NewReader(br)
			if err != nil {
				closeAll()
				return nil, 0, nil, fmt.Errorf("gzip: %w", err)
			}
			next = zr
		case bytes.HasPrefix(magic, bzip2Magic) && len(magic) == 10 && magic[3] >= '1' && magic[3] <= '9' &&
			(bytes.Equal(magic[4:], bzip2Block) || bytes.Equal(magic[4:], bzip2End)):
			next = bzip2.NewReader(br)
		case bytes.HasPrefix(magic, xzMagic):
			if dict, ok := xzFirstDict(br); ok && dict > MaxXZDict {
				closeAll()
				return nil, 0, nil, fmt.Errorf("xz: dictionary of %d bytes exceeds %d", dict, MaxXZDict)
			}
			zr, err := xz.NewReader(br)
			if err != nil {
				closeAll()
				return nil, 0, nil, err
			}
			next = zr
		case bytes.HasPrefix(magic, zstdMagic):
			zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
				zstd.WithDecoderMaxWindow(MaxZstdWindow))
			if err != nil {
				closeAll()
				return nil, 0, nil, fmt.Errorf("zstd: %w", err)
			}
			closers = append(closers, zr.Close)
			next = zr
		default:
			return br, layer, closeAll, nil
		}
		if layer == MaxFilters {
			closeAll()
			return nil, 0, nil, fmt.Errorf("more than %d compression layers", MaxFilters)
		}
		br = bufio.NewReaderSize(next, peekSize)
	}
}

// xzFirstDict reads the LZMA2 dictionary size from the first block header
// of the xz stream br starts with.
func xzFirstDict(br *bufio.Reader) (int64, bool) {
	const streamHeader = 12
	head, _ := br.Peek(streamHeader + 1024)
	if len(head) < streamHeader+2 || head[streamHeader] == 0 {
		return 0, false
	}
	size := (int(head[streamHeader]) + 1) * 4
	if len(head) < streamHeader+size {
		return 0, false
	}
	h := head[streamHeader+2 : streamHeader+size]
	flags := head[streamHeader+1]
	varint := func() (uint64, bool) {
		var v uint64
		for i := 0; i < 9 && i < len(h); i++ {
			v |= uint64(h[i]&0x7f) << (7 * i)
			if h[i]&0x80 == 0 {
				h = h[i+1:]
				return v, true
			}
		}
		return 0, false
	}
	if flags&0x40 != 0 {
		if _, ok := varint(); !ok {
			return 0, false
		}
	}
	if flags&0x80 != 0 {
		if _, ok := varint(); !ok {
			return 0, false
		}
	}
	for range int(flags&3) + 1 {
		id, ok1 := varint()
		n, ok2 := varint()
		if !ok1 || !ok2 || uint64(len(h)) < n {
			return 0, false
		}
		if id == 0x21 && n == 1 {
			d := h[0]
			if d > 40 {
				return 0, false
			}
			if d == 40 {
				return 1<<32 - 1, true
			}
			return int64(2|d&1) << (d/2 + 11), true
		}
		h = h[n:]
	}
	return 0, false
}

// extractor writes a tarball's entries under root, through directory
// descriptors opened without following symlinks, as libarchive's
// write-disk does with Nix's flags (ARCHIVE_EXTRACT_PERM, _SECURE_SYMLINKS,
// _SECURE_NODOTDOT).
type extractor struct {
	root int
	out  string // root's path in messages
	// dirs are the open directories leading to the last entry:
	// dirs[i] is its parent's first i+1 components.
	dirs []openDir
	buf  []byte
}

type openDir struct {
	name string
	fd   int
}

func (x *extractor) closeDirs(keep int) {
	for _, d := range x.dirs[keep:] {
		unix.Close(d.fd)
	}
	x.dirs = x.dirs[:keep]
}

// extractError is libarchive's message, as Nix's extract_archive
// reports it.
func extractError(format string, args ...any) error {
	return fmt.Errorf("failed to extract archive (%s)", hl(fmt.Sprintf(format, args...)))
}

// cleanName splits name as libarchive's cleanup_pathname does: empty and
// "." components dropped (a leading "/" too: Nix prefixes the output), ".."
// refused.
func cleanName(name string) ([]string, error) {
	var comps []string
	for c := range strings.SplitSeq(name, "/") {
		switch c {
		case "", ".":
			continue
		case "..":
			return nil, extractError("Path contains '..'")
		}
		comps = append(comps, c)
	}
	return comps, nil
}

func (x *extractor) path(comps []string) string {
	if len(comps) == 0 {
		return x.out
	}
	return x.out + "/" + strings.Join(comps, "/")
}

// What an entry makes.
const (
	kindFile = iota
	kindDir
	kindSymlink
	kindHardlink
	kindDevice
	kindFIFO
	kindSkip
)

func entryKind(h *tar.Header) int {
	switch h.Typeflag {
	case tar.TypeDir, 'D':
		return kindDir
	case tar.TypeSymlink:
		if h.Linkname == "" {
			return kindFile // libarchive has no link name: a regular file
		}
		return kindSymlink
	case tar.TypeLink:
		if h.Linkname == "" {
			return kindFile
		}
		return kindHardlink
	case tar.TypeChar, tar.TypeBlock:
		return kindDevice
	case tar.TypeFifo:
		return kindFIFO
	case tar.TypeXGlobalHeader, 'V', 'A', 'X':
		return kindSkip // headers libarchive reads for itself
	}
	// Regular files and every type libarchive does not know, which POSIX
	// says to treat as regular files; "name/" is a directory.
	if strings.HasSuffix(h.Name, "/") {
		return kindDir
	}
	return kindFile
}

// entry extracts one entry; r reads its contents.
func (x *extractor) entry(ctx context.Context, h *tar.Header, r io.Reader) error {
	kind := entryKind(h)
	if kind == kindSkip {
		return nil
	}
	comps, err := cleanName(h.Name)
	if err != nil {
		return err
	}
	full := x.path(comps)
	if len(full)-len(x.out) > MaxTarPath {
		return extractError("Could not stat %s", full)
	}
	if kind == kindHardlink && len(comps) > 0 && h.Linkname == strings.Join(comps, "/") {
		return extractError("Skipping hardlink pointing to itself: %s", full)
	}
	if len(comps) == 0 {
		if kind == kindDir {
			return nil // the output itself
		}
		return extractError("Can't replace existing directory with non-directory")
	}
	parent, transient, err := x.parent(comps, full)
	if err != nil {
		return err
	}
	if transient {
		defer unix.Close(parent)
	}
	name := comps[len(comps)-1]
	switch kind {
	case kindDir:
		return x.mkdir(parent, name, full)
	case kindSymlink:
		if len(h.Linkname) > maxLinkTarget {
			return extractError("Can't create '%s'", full)
		}
		return x.create(parent, name, full, func() error { return unix.Symlinkat(h.Linkname, parent, name) })
	case kindHardlink:
		return x.hardlink(parent, name, full, h.Linkname)
	case kindDevice:
		// What a build user's mknod gets.
		return extractError("Can't create '%s'", full)
	case kindFIFO:
		// Nix makes it, and then fails on the output's unsupported type.
		return fmt.Errorf("file '%s' has an unsupported type", hl(full))
	}
	perm := uint32(0o644)
	if h.Mode&0o100 != 0 {
		perm = 0o755
	}
	fd := -1
	err = x.create(parent, name, full, func() error {
		var err error
		fd, err = unix.Openat(parent, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, perm)
		return err
	})
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	// Zeros are skipped, not written: a sparse entry stays sparse on disk
	// (as libarchive leaves it), whatever size it claims.
	var off int64
	hole := false
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, rerr := r.Read(x.buf)
		p := x.buf[:n]
		if allZero(p) {
			off += int64(n)
			hole = hole || n > 0
			p = nil
		}
		for len(p) > 0 {
			w, err := unix.Pwrite(fd, p, off)
			if err != nil {
				return extractError("Write failed for '%s': %s", full, errText(err))
			}
			p, off, hole = p[w:], off+int64(w), false
		}
		if rerr == io.EOF {
			if hole {
				if err := unix.Ftruncate(fd, off); err != nil {
					return extractError("Write failed for '%s': %s", full, errText(err))
				}
			}
			return nil
		}
		if rerr != nil {
			return extractError("%s", tarError(rerr))
		}
	}
}

var zeros [4096]byte

// allZero reports whether p holds only zero bytes.
func allZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeros))
		if !bytes.Equal(p[:n], zeros[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

// parent opens the directory holding comps's last component, making the
// missing ones; transient says the caller closes it. A symlink on the way
// is refused (ARCHIVE_EXTRACT_SECURE_SYMLINKS).
func (x *extractor) parent(comps []string, full string) (fd int, transient bool, err error) {
	dirs := comps[:len(comps)-1]
	n := 0
	for n < len(x.dirs) && n < len(dirs) && x.dirs[n].name == dirs[n] {
		n++
	}
	x.closeDirs(n)
	fd = x.root
	if n > 0 {
		fd = x.dirs[n-1].fd
	}
	for _, c := range dirs[n:] {
		next, err := openOrMkdir(fd, c, full)
		if transient {
			unix.Close(fd)
		}
		if err != nil {
			return -1, false, err
		}
		if !transient && len(x.dirs) < maxCachedDirs {
			x.dirs = append(x.dirs, openDir{c, next})
		} else {
			transient = true
		}
		fd = next
	}
	return fd, transient, nil
}

// openOrMkdir opens the directory name in dirfd, making it if missing.
func openOrMkdir(dirfd int, name, full string) (int, error) {
	for try := 0; ; try++ {
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err == nil {
			return fd, nil
		}
		if err == unix.ENOENT && try == 0 {
			if err := unix.Mkdirat(dirfd, name, 0o755); err != nil && err != unix.EEXIST {
				return -1, extractError("Can't create directory '%s'", full)
			}
			continue
		}
		return -1, notDirError(dirfd, name, full)
	}
}

// notDirError is libarchive's complaint about a component that is not a
// directory: a symlink, or anything else.
func notDirError(dirfd int, name, full string) error {
	var st unix.Stat_t
	if unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return extractError("Cannot extract through symlink %s", full)
	}
	return extractError("Could not stat %s", full)
}

// mkdir makes the directory name, or keeps the one there; anything else
// in the way is removed.
func (x *extractor) mkdir(dirfd int, name, full string) error {
	err := unix.Mkdirat(dirfd, name, 0o755)
	if err != unix.EEXIST {
		if err != nil {
			return extractError("Can't create '%s'", full)
		}
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return extractError("Can't stat existing object")
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return nil
	}
	if err := unix.Unlinkat(dirfd, name, 0); err != nil {
		return extractError("Can't unlink already-existing object")
	}
	if err := unix.Mkdirat(dirfd, name, 0o755); err != nil {
		return extractError("Can't create '%s'", full)
	}
	return nil
}

// create runs mk, which makes a non-directory name in dirfd; when
// something is in the way it is removed (a directory only when empty) and
// mk runs again.
func (x *extractor) create(dirfd int, name, full string, mk func() error) error {
	err := mk()
	if err != unix.EEXIST {
		if err != nil {
			return extractError("Can't create '%s'", full)
		}
		return nil
	}
	if err := removeInTheWay(dirfd, name); err != nil {
		return err
	}
	if err := mk(); err != nil {
		return extractError("Can't create '%s'", full)
	}
	return nil
}

// removeInTheWay removes what is at name for a non-directory to take its
// place.
func removeInTheWay(dirfd int, name string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return extractError("Can't stat existing object")
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil {
			return extractError("Can't replace existing directory with non-directory")
		}
		return nil
	}
	if err := unix.Unlinkat(dirfd, name, 0); err != nil {
		return extractError("Can't unlink already-existing object")
	}
	return nil
}

// hardlink links name in dirfd to the entry link names. As libarchive, it
// first removes a symlink at name, refuses ".." and symlinks on the way to
// the target, and links a symlink target itself, not what it points to.
func (x *extractor) hardlink(dirfd int, name, full, link string) error {
	var st unix.Stat_t
	if unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
		if err := unix.Unlinkat(dirfd, name, 0); err != nil {
			return extractError("Could not remove symlink %s", full)
		}
	}
	lcomps, err := cleanName(link)
	if err != nil {
		return err
	}
	lfull := x.path(lcomps)
	if len(lcomps) == 0 {
		return extractError("Can't create '%s'", full)
	}
	if len(lfull)-len(x.out) > MaxTarPath {
		return extractError("Could not stat %s", lfull)
	}
	missing := extractError("Hard-link target '%s' does not exist.", x.out+"/"+link)
	tdir := x.root
	for _, c := range lcomps[:len(lcomps)-1] {
		fd, err := unix.Openat(tdir, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			err2 := missing
			if err != unix.ENOENT {
				err2 = notDirError(tdir, c, lfull)
			}
			if tdir != x.root {
				unix.Close(tdir)
			}
			return err2
		}
		if tdir != x.root {
			unix.Close(tdir)
		}
		tdir = fd
	}
	if tdir != x.root {
		defer unix.Close(tdir)
	}
	target := lcomps[len(lcomps)-1]
	err = unix.Linkat(tdir, target, dirfd, name, 0)
	if err == unix.ENOENT {
		return missing
	}
	if err == unix.EEXIST {
		if err := removeInTheWay(dirfd, name); err != nil {
			return err
		}
		err = unix.Linkat(tdir, target, dirfd, name, 0)
	}
	if err != nil {
		return extractError("Can't create '%s'", full)
	}
	return nil
}

// readAhead reads r on its own goroutine into a ring of readAheadBuffers
// buffers, so that decompressing a tarball overlaps making its files.
type readAhead struct {
	full chan []byte // read buffers, in order; closed after the last
	free chan []byte
	stop chan struct{}
	done chan struct{}
	err  error  // why reading stopped; set before full is closed
	cur  []byte // the unread part of last
	last []byte
}

func newReadAhead(r io.Reader) *readAhead {
	ra := &readAhead{
		full: make(chan []byte, readAheadBuffers), free: make(chan []byte, readAheadBuffers),
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	for range readAheadBuffers {
		ra.free <- make([]byte, readAheadSize)
	}
	go ra.fill(r)
	return ra
}

func (ra *readAhead) fill(r io.Reader) {
	defer close(ra.done)
	defer close(ra.full)
	for {
		var buf []byte
		select {
		case buf = <-ra.free:
		case <-ra.stop:
			ra.err = io.ErrClosedPipe
			return
		}
		n := 0
		var err error
		for n < len(buf) && err == nil {
			var m int
			m, err = r.Read(buf[n:])
			n += m
		}
		if n > 0 {
			ra.full <- buf[:n] // never blocks: the channel holds every buffer
		}
		if err != nil {
			ra.err = err
			return
		}
	}
}

func (ra *readAhead) Read(p []byte) (int, error) {
	for len(ra.cur) == 0 {
		if ra.last != nil {
			ra.free <- ra.last[:cap(ra.last)]
			ra.last = nil
		}
		buf, ok := <-ra.full
		if !ok {
			return 0, ra.err
		}
		ra.last, ra.cur = buf, buf
	}
	n := copy(p, ra.cur)
	ra.cur = ra.cur[n:]
	return n, nil
}

// Close stops the reading goroutine and waits for it.
func (ra *readAhead) Close() {
	close(ra.stop)
	<-ra.done
}
