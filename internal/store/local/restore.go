package local

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"

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
	return st, rs.writers.finish()
}

type canonDir struct {
	path string // Header.Path
	fd   int
	root bool
	// refs are the parser's, until it leaves the directory, and one per
	// file being written on another goroutine: the last one finishes it.
	refs atomic.Int32
}

type canonRestorer struct {
	nr      *nar.Reader
	disk    string
	buf     []byte
	fixMode bool // the umask may take bits from a created file's mode
	// writeBehind starts writing big files out early.
	writeBehind bool
	dirs        []*canonDir
	st          *restoreStats
	// writers, once started, write small files on other goroutines.
	writers *fileWriters
}

var storeTimes = []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Sec: StoreMtime}}

func (rs *canonRestorer) path(h *nar.Header) string {
	if h.Path == "" {
		return rs.disk
	}
	return rs.disk + "/" + h.Path
}

// pop leaves the innermost open directory: the parser has made all its
// entries.
func (rs *canonRestorer) pop() error {
	d := rs.dirs[len(rs.dirs)-1]
	rs.dirs = rs.dirs[:len(rs.dirs)-1]
	return rs.release(d)
}

// release drops a reference to d; the last one finishes it, as all its
// entries exist then.
func (rs *canonRestorer) release(d *canonDir) error {
	if d.refs.Add(-1) != 0 {
		return nil
	}
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
	rs.writers.finish()
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
		d := &canonDir{path: h.Path, fd: fd, root: root}
		d.refs.Store(1)
		rs.dirs = append(rs.dirs, d)
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
		if !root && h.Size <= smallFileMax {
			return rs.createLater(rs.dirs[len(rs.dirs)-1], name, h, mode)
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

// Small files are written on other goroutines. Parsing the NAR is sequential,
// but creating a file, writing it and setting its time are a few system
// calls each that need nothing from the stream once its contents are read:
// with the parser alone, the file system's work on a tree of small files
// left a core idle.
const (
	smallFileMax  = 64 << 10 // the largest file handed to a writer
	fileWriterN   = 2        // writers per restore
	fileWriterCap = 32       // files read ahead of the writers
)

var smallFileBufs = sync.Pool{New: func() any { b := make([]byte, smallFileMax); return &b }}

type fileWriters struct {
	jobs   chan fileJob
	wg     sync.WaitGroup
	closed bool
	mu     sync.Mutex
	err    error // the first
}

type fileJob struct {
	dir  *canonDir
	name string
	path string // on disk, for errors
	mode uint32
	buf  *[]byte
	n    int
}

// createLater reads the small file h and hands it to a writer.
func (rs *canonRestorer) createLater(d *canonDir, name string, h *nar.Header, mode uint32) error {
	if rs.writers == nil {
		rs.writers = rs.startWriters()
	}
	if err := rs.writers.failed(); err != nil {
		return err
	}
	buf := smallFileBufs.Get().(*[]byte)
	n, err := io.ReadFull(rs.nr, (*buf)[:h.Size])
	if err != nil {
		smallFileBufs.Put(buf)
		return fmt.Errorf("restore nar %s: %w", rs.path(h), err)
	}
	rs.st.bytes += int64(n)
	d.refs.Add(1)
	rs.writers.jobs <- fileJob{dir: d, name: name, path: rs.path(h), mode: mode, buf: buf, n: n}
	return nil
}

func (rs *canonRestorer) startWriters() *fileWriters {
	fw := &fileWriters{jobs: make(chan fileJob, fileWriterCap)}
	for range fileWriterN {
		fw.wg.Go(func() {
			for j := range fw.jobs {
				if fw.failed() == nil {
					if err := rs.writeSmall(j); err != nil {
						fw.fail(err)
					}
				}
				smallFileBufs.Put(j.buf)
				if err := rs.release(j.dir); err != nil {
					fw.fail(err)
				}
			}
		})
	}
	return fw
}

// writeSmall creates the file j describes, canonical as create makes files.
func (rs *canonRestorer) writeSmall(j fileJob) error {
	fd, err := unix.Openat(j.dir.fd, j.name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, j.mode)
	if err != nil {
		return &os.PathError{Op: "restore nar: create", Path: j.path, Err: err}
	}
	if rs.fixMode {
		err = unix.Fchmod(fd, j.mode)
	}
	if err == nil {
		_, err = fdFile{fd: fd}.Write((*j.buf)[:j.n])
	}
	if err == nil {
		err = futimens(fd, storeTimes)
	}
	if cerr := unix.Close(fd); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("restore nar %s: %w", j.path, err)
	}
	return nil
}

func (fw *fileWriters) fail(err error) {
	fw.mu.Lock()
	if fw.err == nil {
		fw.err = err
	}
	fw.mu.Unlock()
}

func (fw *fileWriters) failed() error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return fw.err
}

// finish waits for every file handed out and returns the first error.
func (fw *fileWriters) finish() error {
	if fw == nil {
		return nil
	}
	if !fw.closed {
		close(fw.jobs)
		fw.closed = true
	}
	fw.wg.Wait()
	return fw.failed()
}
