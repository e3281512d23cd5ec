package local

import (
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Opening sources ahead. AddPaths' workers read each source file with one
// blocking read; for files not in the page cache (inputs written a while ago
// and evicted since) each read waits for the disk, and two workers keep at
// most two reads in flight. Once a worker finds a source's data missing from
// memory, openers start to run ahead of the workers: they open the next
// sources and ask the kernel to read the small ones (fadvise WILLNEED starts
// the read and returns), so the disk has many reads at once and a worker
// finds the data in memory. An opener hands its descriptor to the worker.
//
// While the sources are in memory the openers stay asleep: run beside the
// workers they cost an add of 2000 cached files a tenth more time (the
// workers and the committer already keep both cores busy), where the check
// costs one preadv2 per source. Measured in docs/benchmarks.md (session 10).
const (
	openers      = 4
	openAhead    = 256     // sources opened past the one a worker last took
	openBatch    = 32      // the workers wake the openers once per openBatch sources
	fetchMaxSize = 1 << 20 // bigger files are read as a stream, with the kernel's own read-ahead
)

// Values of a sourceOpener slot besides a descriptor.
const (
	slotEmpty   = -1 // nothing opened yet
	slotClaimed = -2 // a worker took the source
)

// sourceOpener opens sources ahead of AddPaths' workers, once cold says so.
type sourceOpener struct {
	srcs  []string
	fds   []atomic.Int32
	next  atomic.Int64 // the next source an opener takes
	limit atomic.Int64 // sources from here on are not opened yet
	cold  atomic.Bool  // a source's data was not in memory

	mu       sync.Mutex
	wake     *sync.Cond
	finished bool
}

func startOpeners(srcs []string) *sourceOpener {
	o := &sourceOpener{srcs: srcs, fds: make([]atomic.Int32, len(srcs))}
	o.wake = sync.NewCond(&o.mu)
	for i := range o.fds {
		o.fds[i].Store(slotEmpty)
	}
	o.limit.Store(openAhead)
	if len(srcs) > 1 {
		for range openers {
			go o.run()
		}
	}
	return o
}

func (o *sourceOpener) run() {
	for {
		i := o.next.Add(1) - 1
		if i >= int64(len(o.srcs)) {
			return
		}
		if !o.cold.Load() || i >= o.limit.Load() {
			o.mu.Lock()
			for (!o.cold.Load() || i >= o.limit.Load()) && !o.finished {
				o.wake.Wait()
			}
			finished := o.finished
			o.mu.Unlock()
			if finished {
				return
			}
		}
		if o.fds[i].Load() != slotEmpty {
			continue // a worker has it
		}
		// Only regular files: opening a device can do things (a tape
		// rewinds when closed), and a source the add never reaches is
		// opened all the same. The worker deals with the others.
		var st unix.Stat_t
		if unix.Lstat(o.srcs[i], &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			continue
		}
		fd, err := unix.Open(o.srcs[i], unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue // the worker opens it and reports the error
		}
		if unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Size > 0 && st.Size <= fetchMaxSize {
			unix.Fadvise(fd, 0, st.Size, unix.FADV_WILLNEED)
		}
		if !o.fds[i].CompareAndSwap(slotEmpty, int32(fd)) {
			unix.Close(fd)
		}
	}
}

// claim returns the descriptor opened for source i, or -1: then the worker
// opens it. Every source is claimed once, in order.
func (o *sourceOpener) claim(i int) int {
	o.limit.Store(int64(i + openAhead))
	if i%openBatch == 0 && o.cold.Load() {
		o.broadcast(false)
	}
	if o.fds[i].CompareAndSwap(slotEmpty, slotClaimed) {
		return -1
	}
	return int(o.fds[i].Swap(slotClaimed))
}

// probe checks, while the openers sleep, whether a small regular file the
// worker opened itself has its data in memory, and wakes them if not.
func (o *sourceOpener) probe(fd int, size int64) {
	if o == nil || o.cold.Load() || size <= 0 || size > fetchMaxSize {
		return
	}
	var b [1]byte
	if _, err := unix.Preadv2(fd, [][]byte{b[:]}, 0, unix.RWF_NOWAIT); err == unix.EAGAIN {
		o.cold.Store(true)
		o.broadcast(false)
	}
}

func (o *sourceOpener) broadcast(finish bool) {
	o.mu.Lock()
	o.finished = o.finished || finish
	o.wake.Broadcast()
	o.mu.Unlock()
}

// finish stops the openers once the workers are done.
func (o *sourceOpener) finish() { o.broadcast(true) }
