package fsnar

import (
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Fetching ahead. The walker reads a directory's files side by side through
// the ring, but one directory after another: on files that are not in the
// page cache (a tree written a while ago, evicted since) every directory waits
// for the disk, with a handful of reads in flight. Once the walker finds a
// file's data missing from memory, a fetcher walks the same tree in the same
// order, up to fetchAheadFiles files and fetchAheadBytes bytes past the
// walker, and asks the kernel to read each small file (fadvise WILLNEED starts
// the read and returns): the disk gets many reads at once, and the walker finds
// the data in memory. While the data is in memory no fetcher runs; the check
// costs one preadv2 per directory. Measured in docs/benchmarks.md (session 10).
const (
	fetchAheadFiles = 512
	fetchAheadBytes = 32 << 20
	fetchMaxSize    = 1 << 20 // bigger files are read as a stream, with the kernel's own read-ahead
	fetchPoll       = 200 * time.Microsecond
)

// progress is what the walker has dumped so far, for the fetcher: regular
// files in walk order, and their bytes.
type progress struct {
	files atomic.Int64
	bytes atomic.Int64
	done  atomic.Bool // the walk is over: the fetcher stops
}

// seen counts a regular file the walker is about to read, open as fd, and
// starts the fetcher when the first one of a directory is not in memory.
func (w *walker) seen(fd int, st *unix.Stat_t) {
	w.progress.files.Add(1)
	w.progress.bytes.Add(st.Size)
	if w.fetching || w.probed || st.Size == 0 || w.rootPath == "" {
		return
	}
	w.probed = true
	var b [1]byte
	if _, err := unix.Preadv2(fd, [][]byte{b[:]}, 0, unix.RWF_NOWAIT); err == unix.EAGAIN {
		w.fetching = true
		f := &fetcher{p: &w.progress, buf: new([direntBufferSize]byte)}
		go f.run(w.rootPath)
	}
}

// fetcher walks the tree ahead of a walker.
type fetcher struct {
	p     *progress
	buf   *[direntBufferSize]byte
	files int64 // regular files met so far, in walk order
	bytes int64 // their bytes, from where the fetcher caught up with the walker
	ahead bool  // past the walker: bytes counts
}

func (f *fetcher) run(root string) {
	var st unix.Stat_t
	if unix.Lstat(root, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return
	}
	fd, err := openat(unix.AT_FDCWD, root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
	if err != nil {
		return
	}
	f.dir(fd)
	unix.Close(fd)
}

// dir fetches the files below the directory open as fd; false means stop.
func (f *fetcher) dir(fd int) bool {
	entries, err := f.list(fd)
	if err != nil {
		return !f.p.done.Load()
	}
	for _, e := range entries {
		if f.p.done.Load() {
			return false
		}
		typ := e.typ
		if typ == unix.DT_UNKNOWN {
			var st unix.Stat_t
			if unix.Fstatat(fd, e.name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
				continue
			}
			switch st.Mode & unix.S_IFMT {
			case unix.S_IFREG:
				typ = unix.DT_REG
			case unix.S_IFDIR:
				typ = unix.DT_DIR
			}
		}
		switch typ {
		case unix.DT_REG:
			if !f.file(fd, e.name) {
				return false
			}
		case unix.DT_DIR:
			sub, err := openat(fd, e.name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
			if err != nil {
				continue
			}
			ok := f.dir(sub)
			unix.Close(sub)
			if !ok {
				return false
			}
		}
	}
	return true
}

// file fetches one regular file, once the walker is near enough.
func (f *fetcher) file(dirfd int, name string) bool {
	f.files++
	if !f.ahead {
		if f.files <= f.p.files.Load() {
			return true // dumped already
		}
		f.ahead, f.bytes = true, f.p.bytes.Load()
	}
	for f.files > f.p.files.Load()+fetchAheadFiles || f.bytes > f.p.bytes.Load()+fetchAheadBytes {
		if f.p.done.Load() {
			return false
		}
		time.Sleep(fetchPoll)
	}
	fd, err := openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC)
	if err != nil {
		return true
	}
	var st unix.Stat_t
	if unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG {
		f.bytes += st.Size
		if st.Size > 0 && st.Size <= fetchMaxSize {
			unix.Fadvise(fd, 0, st.Size, unix.FADV_WILLNEED)
		}
	}
	unix.Close(fd)
	return true
}

// list reads the directory open as fd, in the walker's order.
func (f *fetcher) list(fd int) ([]dirent, error) {
	var entries []dirent
	err := readDirents(fd, f.buf[:], func(name []byte, typ uint8) {
		entries = append(entries, dirent{name: string(name), typ: typ})
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(entries, func(a, b dirent) int { return strings.Compare(a.name, b.name) })
	return entries, nil
}
