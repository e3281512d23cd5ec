package fsnar

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"cairn/internal/nar"
)

// The io_uring ABI, as include/uapi/linux/io_uring.h defines it: only what the
// walker submits (OPENAT, READ and CLOSE).
const (
	opOpenat = 18
	opClose  = 19
	opRead   = 22

	sqeIOHardlink = 1 << 3 // the next entry runs after this one whatever its result

	enterGetEvents = 1 << 0
	featSingleMmap = 1 << 0

	offSQRing = 0
	offCQRing = 0x8000000
	offSQEs   = 0x10000000
)

type uringSQE struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64 // file offset
	addr        uint64
	len         uint32
	opFlags     uint32 // open flags, read flags
	userData    uint64
	bufIndex    uint16
	personality uint16
	fileIndex   uint32
	addr3       uint64
	_           uint64
}

type uringCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	_                                                                      [3]uint32
	sqOff                                                                  struct {
		head, tail, ringMask, ringEntries, flags, dropped, array, _ uint32
		_                                                           uint64
	}
	cqOff struct {
		head, tail, ringMask, ringEntries, overflow, cqes, flags, _ uint32
		_                                                           uint64
	}
}

// ring is one io_uring owned by the walker's goroutine. Everything it submits is
// complete when wait returns.
type ring struct {
	fd           int
	sqMem, cqMem []byte
	sqeMem       []byte

	sqHead, sqTail *uint32
	sqMask         uint32
	sqArray        []uint32
	sqes           []uringSQE
	tail           uint32 // local copy of *sqTail, published by wait
	queued         int    // entries queued since the last wait

	cqHead, cqTail *uint32
	cqMask         uint32
	cqes           []uringCQE
}

// newRing sets up a ring; a variable so that tests can make it fail as a kernel
// without io_uring (ENOSYS), a seccomp filter (EPERM) or io_uring_disabled would.
var newRing = setupRing

func setupRing(entries uint32) (*ring, error) {
	var p uringParams
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", errno)
	}
	r := &ring{fd: int(fd)}
	if err := r.mapRings(&p); err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

func (r *ring) mapRings(p *uringParams) error {
	sqSize := int(p.sqOff.array + p.sqEntries*4)
	cqSize := int(p.cqOff.cqes + p.cqEntries*uint32(unsafe.Sizeof(uringCQE{})))
	if p.features&featSingleMmap != 0 {
		sqSize = max(sqSize, cqSize)
	}
	var err error
	if r.sqMem, err = unix.Mmap(r.fd, offSQRing, sqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fmt.Errorf("io_uring mmap: %w", err)
	}
	r.cqMem = r.sqMem
	if p.features&featSingleMmap == 0 {
		if r.cqMem, err = unix.Mmap(r.fd, offCQRing, cqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
			r.cqMem = nil
			return fmt.Errorf("io_uring mmap: %w", err)
		}
	}
	sqeSize := int(p.sqEntries) * int(unsafe.Sizeof(uringSQE{}))
	if r.sqeMem, err = unix.Mmap(r.fd, offSQEs, sqeSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fmt.Errorf("io_uring mmap: %w", err)
	}
	u32 := func(mem []byte, off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&mem[off])) }
	r.sqHead, r.sqTail = u32(r.sqMem, p.sqOff.head), u32(r.sqMem, p.sqOff.tail)
	r.sqMask = *u32(r.sqMem, p.sqOff.ringMask)
	r.sqArray = unsafe.Slice(u32(r.sqMem, p.sqOff.array), p.sqEntries)
	r.sqes = unsafe.Slice((*uringSQE)(unsafe.Pointer(&r.sqeMem[0])), p.sqEntries)
	r.tail = *r.sqTail
	r.cqHead, r.cqTail = u32(r.cqMem, p.cqOff.head), u32(r.cqMem, p.cqOff.tail)
	r.cqMask = *u32(r.cqMem, p.cqOff.ringMask)
	r.cqes = unsafe.Slice((*uringCQE)(unsafe.Pointer(&r.cqMem[p.cqOff.cqes])), p.cqEntries)
	return nil
}

func (r *ring) close() {
	if r.sqeMem != nil {
		unix.Munmap(r.sqeMem)
	}
	if r.cqMem != nil && &r.cqMem[0] != &r.sqMem[0] {
		unix.Munmap(r.cqMem)
	}
	if r.sqMem != nil {
		unix.Munmap(r.sqMem)
	}
	unix.Close(r.fd)
}

// push queues e; the caller never queues more than the ring holds between waits.
func (r *ring) push(e uringSQE) {
	i := r.tail & r.sqMask
	r.sqes[i] = e
	r.sqArray[i] = i
	r.tail++
	r.queued++
}

// wait submits what is queued and calls done for each of the completions, which
// must number exactly want: every queued entry posts one.
func (r *ring) wait(want int, done func(userData uint64, res int32)) error {
	atomic.StoreUint32(r.sqTail, r.tail)
	r.queued = 0
	got := 0
	for {
		head := *r.cqHead
		for tail := atomic.LoadUint32(r.cqTail); head != tail; head++ {
			c := &r.cqes[head&r.cqMask]
			done(c.userData, c.res)
			got++
		}
		atomic.StoreUint32(r.cqHead, head)
		submit := r.tail - atomic.LoadUint32(r.sqHead)
		if got >= want && submit == 0 {
			return nil
		}
		var errno unix.Errno
		if submit > 0 {
			// Submitting runs each entry without blocking (one that would block,
			// an open or a read that must go to the disk, is finished later by
			// the kernel's workers or task work), so the call is short, if long
			// for a system call (up to a batch's worth of page-cache copies):
			// made raw, it keeps its P, which Go would otherwise hand to another
			// thread (a futex wake and a spinning thread on the hasher's core).
			_, _, errno = unix.RawSyscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(submit), 0, 0, 0, 0)
		} else {
			_, _, errno = unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), 0, uintptr(want-got), enterGetEvents, 0, 0)
		}
		switch errno {
		case 0, unix.EINTR, unix.EAGAIN, unix.EBUSY:
		default:
			return fmt.Errorf("io_uring_enter: %w", errno)
		}
	}
}

// openEntry is an OPENAT of name (NUL-terminated) in dirfd, for reading.
func openEntry(dirfd int, name *byte, userData uint64) uringSQE {
	return uringSQE{opcode: opOpenat, fd: int32(dirfd), addr: uint64(uintptr(unsafe.Pointer(name))),
		opFlags: unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC, userData: userData}
}

// readEntry is a READ of len(buf) bytes from the start of fd, followed (whatever
// its result) by the next entry.
func readEntry(fd int32, buf []byte, userData uint64) uringSQE {
	return uringSQE{opcode: opRead, flags: sqeIOHardlink, fd: fd, addr: uint64(uintptr(unsafe.Pointer(&buf[0]))),
		len: uint32(len(buf)), userData: userData}
}

// closeEntry is a CLOSE of fd.
func closeEntry(fd int32) uringSQE {
	return uringSQE{opcode: opClose, fd: fd, userData: closeTag}
}

const (
	// ringSlots is how many files one ring round opens; the closes of the
	// previous round's files go with it.
	ringSlots = 64
	// ringEntries is the submission queue's size: between two waits the walker
	// queues at most a round's opens or reads and closes (2 × ringSlots) and the
	// closes left from streamed files (ringSlots).
	ringEntries = 4 * ringSlots
	// minRingRun is the shortest run of regular files worth a ring round.
	minRingRun = 2
	// closeTag marks a CLOSE's completion.
	closeTag = 1 << 63
)

// ringState is the walker's scratch for one round: the descriptors the ring
// opened, and how many closes wait for the next round.
type ringState struct {
	fds     [ringSlots]int32
	closes  int
	reads   int // READs queued for the read round
	chunk   [ringSlots][]byte
	readRes [ringSlots]int32
}

// unsupported reports whether a completion's result says the kernel does not know
// the operation (OPENAT, READ and CLOSE came in Linux 5.6): the walk goes on with
// plain calls, the ring only finishing what it has queued.
func unsupported(res int32) bool {
	return res == -int32(unix.EINVAL) || res == -int32(unix.EOPNOTSUPP)
}

// useRing reports whether the walker has a ring, setting one up on first use.
func (w *walker) useRing() bool {
	if w.noRing {
		return false
	}
	if w.ring != nil {
		return true
	}
	select {
	case w.ring = <-idleRings:
		return true
	default:
	}
	r, err := newRing(ringEntries)
	if err != nil {
		w.noRing = true // ENOSYS, EPERM (seccomp, io_uring_disabled), ENOMEM: plain calls
		return false
	}
	w.ring = r
	return true
}

// idleRings keeps rings between dumps: setting one up and tearing it down costs
// about 75 µs, what the ring saves on a hundred files, and a build dumps many
// small outputs.
var idleRings = make(chan *ring, maxIdleRings)

// maxIdleRings bounds the rings (a descriptor and three small mappings each) kept
// between dumps.
const maxIdleRings = 4

// files dumps a run of regular files of the directory dirfd: the open round opens
// them all (and closes what the previous rounds left), ringFile stats each and
// queues its read, and the read round reads them. A file the ring could not open
// takes the plain path, which gives the error.
func (w *walker) files(dirfd int, path, rel string, entries []dirent) error {
	s := &w.ringState
	for i, e := range entries {
		// The name's bytes are followed by a NUL (see dirent); the kernel copies
		// them when the entry is submitted.
		w.ring.push(openEntry(dirfd, unsafe.StringData(e.name), uint64(i)))
	}
	want := len(entries) + s.closes
	s.closes = 0
	err := w.ring.wait(want, func(ud uint64, res int32) {
		if ud&closeTag == 0 {
			s.fds[ud] = res
			w.noRing = w.noRing || unsupported(res)
		}
	})
	if err != nil {
		w.noRing = true
		return fmt.Errorf("dump %s: %w", path, err)
	}
	for i, e := range entries {
		name := e.name
		child := name
		if rel != "" {
			child = rel + "/" + name
		}
		if s.fds[i] < 0 {
			if err = w.readRound(dirfd, path, entries); err == nil {
				err = w.file(dirfd, path, name, child)
			}
		} else {
			err = w.ringFile(dirfd, s.fds[i], path, name, child, i, entries)
		}
		if err != nil {
			for _, fd := range s.fds[i+1 : len(entries)] {
				if fd >= 0 {
					unix.Close(int(fd))
				}
			}
			w.readRound(dirfd, path, entries) // the reads fill the batch: finish them
			return err
		}
	}
	return w.readRound(dirfd, path, entries)
}

// ringFile dumps entries[i], open as fd: a file that fits the batch is read in the
// read round; a larger one is streamed by plain reads.
func (w *walker) ringFile(dirfd int, fd int32, dir, name, rel string, i int, entries []dirent) error {
	s := &w.ringState
	var st unix.Stat_t
	if err := fstatRegular(int(fd), dir, name, &st); err != nil {
		unix.Close(int(fd))
		return err
	}
	w.seen(int(fd), &st)
	b := w.cur
	if st.Size == 0 || st.Size > int64(cap(b.buf)-len(b.buf)) || len(b.events) == cap(b.events) {
		// stream may flush the batch, which the round's reads are filling.
		if st.Size != 0 || len(b.events) == cap(b.events) {
			if err := w.readRound(dirfd, dir, entries); err != nil {
				unix.Close(int(fd))
				return err
			}
		}
		err := w.stream(int(fd), &st, rel, dir, name)
		w.ring.push(closeEntry(fd))
		s.closes++
		return err
	}
	h := nar.Header{Path: rel, Type: nar.TypeRegular, Executable: st.Mode&unix.S_IXUSR != 0, Size: st.Size}
	if err := w.emit(h); err != nil { // there is room: emit does not flush
		return err
	}
	start := len(b.buf)
	b.buf = b.buf[:start+int(st.Size)]
	chunk := b.buf[start:]
	b.events[len(b.events)-1].data = chunk
	s.chunk[i] = chunk
	w.ring.push(readEntry(fd, chunk, uint64(i)))
	w.ring.push(closeEntry(fd))
	s.reads++
	return nil
}

// readRound submits the queued reads (and closes) and waits for them; a file the
// ring did not read whole is read again by plain system calls.
func (w *walker) readRound(dirfd int, dir string, entries []dirent) error {
	s := &w.ringState
	if s.reads == 0 {
		return nil
	}
	want := 2*s.reads + s.closes
	s.reads, s.closes = 0, 0
	err := w.ring.wait(want, func(ud uint64, res int32) {
		if ud&closeTag == 0 {
			s.readRes[ud] = res
			w.noRing = w.noRing || unsupported(res)
		}
	})
	if err != nil {
		w.noRing = true
		return fmt.Errorf("dump %s: %w", dir, err)
	}
	for i, chunk := range s.chunk[:len(entries)] {
		if chunk == nil {
			continue
		}
		s.chunk[i] = nil
		if int(s.readRes[i]) != len(chunk) {
			if err := reread(dirfd, dir, entries[i].name, chunk); err != nil {
				return err
			}
		}
	}
	return nil
}

// closeRing submits the last round's closes and keeps the ring for the next dump.
func (w *walker) closeRing() {
	r := w.ring
	w.ring = nil
	if w.ringState.closes > 0 {
		if err := r.wait(w.ringState.closes, func(uint64, int32) {}); err != nil {
			r.close() // entries may be left in flight: not for another dump
			return
		}
		w.ringState.closes = 0
	}
	select {
	case idleRings <- r:
	default:
		r.close()
	}
}
