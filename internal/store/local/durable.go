package local

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// Durability. With fsync on (Nix's fsync-metadata), Commit makes a batch's
// files durable before any of them is moved into place, and the moves durable
// before the transaction that registers them commits:
//
//	unpack into slots → sync the slots' files, directories and the intent
//	  → lock, rename into the store dir → fsync the store dir and each moved
//	  root directory → commit
//
// so a registered path's files are on disk whatever crashes, and the intent
// that lets the next Open undo unregistered moves is on disk before the moves.
// The first step costs one disk cache flush whichever way it is done; what
// differs is what else gets written:
//
//   - fsync of each entry (in parallel, so the flushes coalesce) writes only
//     the batch's own files, but one flush per file when they are many;
//   - syncfs writes the batch in one go, but also whatever else on the file
//     system is waiting to be written (other programs' files, the inputs a
//     benchmark just made), and it is the only way to make a symlink's inode
//     durable.
//
// So a batch with at most fsyncEachMax entries and no symlinks fsyncs each of
// them, and a bigger one uses syncfs unless more than otherDirtyMax of other
// data is waiting to be written (then, without symlinks, fsync of each entry
// again). Measured on a VM's ext4 (docs/benchmarks.md): with nothing else
// dirty, syncfs makes the 12,800 entries of the Go source tree durable in
// 0.2 s and fsyncs of each entry take 0.5–0.6 s with 64 in flight (1.0 s with
// 16); with 1 GiB of other data dirty, syncfs takes 0.45–0.6 s.
const (
	fsyncEachMax  = 64
	otherDirtyMax = 1 << 30
	// fsyncWorkers and fsyncWorkersBig bound the fsyncs in flight at once,
	// for a small batch and for a big one.
	fsyncWorkers    = 16
	fsyncWorkersBig = 64
)

// syncSlots makes the batch's unpacked paths and its intent durable.
func (b *Batch) syncSlots(intent *intentFile) error {
	var entries int
	var size int64
	symlinks := false
	for _, it := range b.items {
		if it.temp == nil {
			continue
		}
		entries += it.stats.entries
		size += it.stats.bytes
		symlinks = symlinks || it.stats.symlinks
	}
	if entries == 0 {
		return nil
	}
	each := !symlinks && (entries <= fsyncEachMax || dirtyBytes()-size > otherDirtyMax)
	if !each {
		if err := unix.Syncfs(b.s.realFD); err != nil {
			return fmt.Errorf("sync %s: %w", b.s.cfg.RealStoreDir, err)
		}
		return nil
	}
	fs := newFsyncer()
	if entries > fsyncEachMax {
		fs.workers = fsyncWorkersBig
	}
	if intent != nil {
		fs.addData(intent.fd, intent.name)
	}
	var err error
	for _, it := range b.items {
		if it.temp == nil {
			continue
		}
		if err = fs.tree(it.temp.dirfd, it.temp.name, it.temp.contentPath()); err != nil {
			break
		}
	}
	if ferr := fs.wait(); err == nil {
		err = ferr
	}
	return err
}

// syncPlaced makes the moves into the store dir durable, and the final mode
// of each moved root directory.
func (b *Batch) syncPlaced(moved []*pending) error {
	fs := newFsyncer()
	fs.add(b.s.realFD, b.s.cfg.RealStoreDir, false)
	for _, it := range moved {
		if !it.stats.rootDir {
			continue
		}
		fd, err := openat(b.s.realFD, it.info.Path.Base(), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW)
		if err != nil {
			fs.wait()
			return &os.PathError{Op: "open", Path: b.s.RealPath(it.info.Path), Err: err}
		}
		fs.add(fd, b.s.RealPath(it.info.Path), true)
	}
	return fs.wait()
}

// fsyncer runs fsyncs on up to workers goroutines. Each blocks its
// thread in the kernel for about one disk flush; running them side by side
// lets the block layer serve many with one flush.
type fsyncer struct {
	workers int // at most this many goroutines
	running int
	jobs    chan fsyncJob
	wg      sync.WaitGroup
	mu      sync.Mutex
	err     error
	// first is held back until a second job comes: a lone fsync runs on
	// the caller's goroutine.
	first   *fsyncJob
	started bool
}

type fsyncJob struct {
	fd       int
	name     string
	close    bool
	datasync bool // fdatasync: the size and block map are unchanged
}

func newFsyncer() *fsyncer { return &fsyncer{workers: fsyncWorkers} }

func (f *fsyncer) add(fd int, name string, close bool) {
	f.addJob(fsyncJob{fd: fd, name: name, close: close})
}

// addData adds an fdatasync of fd.
func (f *fsyncer) addData(fd int, name string) {
	f.addJob(fsyncJob{fd: fd, name: name, datasync: true})
}

func (f *fsyncer) addJob(j fsyncJob) {
	if !f.started {
		if f.first == nil {
			f.first = &j
			return
		}
		f.started = true
		f.jobs = make(chan fsyncJob)
		f.spawn()
		f.jobs <- *f.first
		f.first = nil
	}
	select {
	case f.jobs <- j:
	default:
		// All busy: another worker, up to the limit.
		if f.running < f.workers {
			f.spawn()
		}
		f.jobs <- j
	}
}

// spawn starts a worker.
func (f *fsyncer) spawn() {
	f.running++
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for j := range f.jobs {
			f.run(j)
		}
	}()
}

func (f *fsyncer) run(j fsyncJob) {
	var err error
	for {
		if j.datasync {
			err = unix.Fdatasync(j.fd)
		} else {
			err = unix.Fsync(j.fd)
		}
		if err != unix.EINTR {
			break
		}
	}
	if j.close {
		unix.Close(j.fd)
	}
	if err != nil {
		f.mu.Lock()
		if f.err == nil {
			f.err = &os.PathError{Op: "fsync", Path: j.name, Err: err}
		}
		f.mu.Unlock()
	}
}

// wait returns once every fsync added has run, with the first error.
func (f *fsyncer) wait() error {
	if f.first != nil {
		f.run(*f.first)
		f.first = nil
	}
	if f.started {
		close(f.jobs)
		f.wg.Wait()
		f.started = false
	}
	return f.err
}

// tree adds an fsync of name in dirfd and of everything below it.
func (f *fsyncer) tree(dirfd int, name, disk string) error {
	fd, err := openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW)
	if err != nil {
		return &os.PathError{Op: "open", Path: disk, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return &os.PathError{Op: "stat", Path: disk, Err: err}
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		names, err := readNames(fd, disk)
		if err == nil {
			for _, n := range names {
				if err = f.tree(fd, n, disk+"/"+n); err != nil {
					break
				}
			}
		}
		if err != nil {
			unix.Close(fd)
			return err
		}
	}
	f.add(fd, disk, true)
	return nil
}

// readNames lists the directory open at fd (which stays open).
func readNames(fd int, disk string) ([]string, error) {
	dup, err := unix.Dup(fd)
	if err != nil {
		return nil, &os.PathError{Op: "read directory", Path: disk, Err: err}
	}
	d := os.NewFile(uintptr(dup), disk)
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, &os.PathError{Op: "read directory", Path: disk, Err: err}
	}
	return names, nil
}

// dirtyBytes returns how much data the system has waiting to be written
// (Dirty and Writeback of /proc/meminfo), or 0 if it cannot tell.
func dirtyBytes() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	var total int64
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Bytes()
		for _, key := range [...]string{"Dirty:", "Writeback:"} {
			if v, ok := bytes.CutPrefix(line, []byte(key)); ok {
				f := bytes.Fields(v)
				if len(f) > 0 {
					if n, err := strconv.ParseInt(string(f[0]), 10, 64); err == nil {
						total += n << 10 // kB
					}
				}
			}
		}
	}
	return total
}
