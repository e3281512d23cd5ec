package fsnar

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"cairn/internal/nar"
)

// The io_uring ABI, as include/uapi/linux/io_uring.h defines it: only what the
// walker submits (OPENAT into a registered-file slot, READ and CLOSE of that slot,
// STATX by name).
const (
	opOpenat = 18
	opClose  = 19
	opStatx  = 21
	opRead   = 22

	sqeFixedFile  = 1 << 0 // fd is a registered-file slot
	sqeIOLink     = 1 << 2 // the next entry runs after this one, and is cancelled if it fails
	sqeIOHardlink = 1 << 3 // the next entry runs after this one whatever its result

	enterGetEvents = 1 << 0
	registerFiles  = 2
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
	off         uint64 // file offset; for STATX the address of the statx buffer
	addr        uint64
	len         uint32
	opFlags     uint32 // open flags, statx flags, read flags
	userData    uint64
	bufIndex    uint16
	personality uint16
	fileIndex   uint32 // OPENAT and CLOSE: registered slot + 1
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

// ring is one io_uring owned by the walker's goroutine, with ringSlots registered
// file slots. Everything it submits is complete when wait returns, so the kernel
// never writes into Go memory outside a call to wait.
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
	fds := make([]int32, ringSlots)
	for i := range fds {
		fds[i] = -1
	}
	if _, _, errno := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.fd), registerFiles,
		uintptr(unsafe.Pointer(&fds[0])), uintptr(len(fds)), 0, 0); errno != 0 {
		r.close()
		return nil, fmt.Errorf("io_uring_register files: %w", errno)
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
		_, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(submit),
			uintptr(max(want-got, 0)), enterGetEvents, 0, 0)
		switch errno {
		case 0, unix.EINTR, unix.EAGAIN, unix.EBUSY:
		default:
			// Entries may still be in flight: the caller must not reuse the
			// memory they point to, so the dump fails.
			return fmt.Errorf("io_uring_enter: %w", errno)
		}
	}
}

// statxEntry queues a STATX of name (NUL-terminated) in dirfd into st.
func statxEntry(dirfd int, name *byte, st *unix.Statx_t, userData uint64) uringSQE {
	return uringSQE{
		opcode: opStatx, fd: int32(dirfd), addr: uint64(uintptr(unsafe.Pointer(name))),
		len: unix.STATX_TYPE | unix.STATX_MODE | unix.STATX_SIZE, opFlags: unix.AT_SYMLINK_NOFOLLOW,
		off: uint64(uintptr(unsafe.Pointer(st))), userData: userData,
	}
}

// readChain returns OPENAT of name into slot, READ of len(buf) bytes from its start,
// CLOSE of the slot; the close runs even when the read fails.
func readChain(dirfd int, name *byte, slot int, buf []byte, userData uint64) [3]uringSQE {
	var p uint64
	if len(buf) > 0 {
		p = uint64(uintptr(unsafe.Pointer(&buf[0])))
	}
	return [3]uringSQE{
		{opcode: opOpenat, flags: sqeIOLink, fd: int32(dirfd), addr: uint64(uintptr(unsafe.Pointer(name))),
			opFlags: unix.O_RDONLY | unix.O_NOFOLLOW, fileIndex: uint32(slot + 1), userData: userData},
		{opcode: opRead, flags: sqeFixedFile | sqeIOHardlink, fd: int32(slot), addr: p, len: uint32(len(buf)),
			userData: userData | 1},
		{opcode: opClose, fileIndex: uint32(slot + 1), userData: userData | 2},
	}
}

const (
	// ringSlots is how many files one ring round opens, reads and closes; the
	// ring holds the three entries of each.
	ringSlots = 64
	// ringEntries is the submission queue's size.
	ringEntries = 4 * ringSlots
	// minRingRun is the shortest run of regular files worth a ring round.
	minRingRun = 2
)

// ringState is the walker's scratch for one round: the names (NUL-terminated, in
// one buffer), their statx results, and what each read returned.
type ringState struct {
	names   []byte
	nameOff [ringSlots]int
	stx     [ringSlots]unix.Statx_t
	stxRes  [ringSlots]int32
	readRes [ringSlots]int32
	failed  [ringSlots]bool
	hdrs    [ringSlots]*nar.Header
	chunks  [ringSlots][]byte
}

// leaked keeps batches the kernel may still write into after a failed
// io_uring_enter, so that their memory is never reused.
var leaked struct {
	sync.Mutex
	batches []*batch
}

// useRing reports whether the walker has a ring, setting one up on first use.
func (w *walker) useRing() bool {
	if w.ring != nil {
		return true
	}
	if w.noRing {
		return false
	}
	r, err := newRing(ringEntries)
	if err != nil {
		w.noRing = true // ENOSYS, EPERM (seccomp, io_uring_disabled), ENOMEM: plain calls
		return false
	}
	w.ring = r
	return true
}

// files dumps a run of regular files of the directory dirfd through the ring: one
// round of STATX for all of them, then, for the files that fit the current buffer,
// one round of OPENAT, READ and CLOSE each. A file the ring cannot serve (an error,
// a short read, a file larger than the buffer's room) takes the plain path, which
// also gives the error messages.
func (w *walker) files(dirfd int, path, rel string, entries []os.DirEntry) error {
	s := &w.ringState
	s.names = s.names[:0]
	for i, e := range entries {
		s.nameOff[i] = len(s.names)
		s.names = append(s.names, e.Name()...)
		s.names = append(s.names, 0)
	}
	for i := range entries {
		w.ring.push(statxEntry(dirfd, &s.names[s.nameOff[i]], &s.stx[i], uint64(i)))
	}
	if err := w.ring.wait(len(entries), func(ud uint64, res int32) { s.stxRes[ud] = res }); err != nil {
		return w.ringBroken(path, err)
	}
	first := 0 // the first file of the round being queued
	for i, e := range entries {
		name := e.Name()
		child := name
		if rel != "" {
			child = rel + "/" + name
		}
		st := &s.stx[i]
		size := int64(st.Size)
		if s.stxRes[i] != 0 || st.Mode&unix.S_IFMT != unix.S_IFREG {
			if err := w.round(dirfd, path, entries, first, i); err != nil {
				return err
			}
			first = i + 1
			if err := w.file(dirfd, name, path+"/"+name, child); err != nil {
				return err
			}
			continue
		}
		if w.cur == nil || len(w.cur.events) == cap(w.cur.events) || size > int64(cap(w.cur.buf)-len(w.cur.buf)) {
			if err := w.round(dirfd, path, entries, first, i); err != nil {
				return err
			}
			first = i
			if size > int64(cap(w.cur.buf)-len(w.cur.buf)) {
				// Larger than the room left: the plain path streams it.
				first = i + 1
				if err := w.file(dirfd, name, path+"/"+name, child); err != nil {
					return err
				}
				continue
			}
			if len(w.cur.events) == cap(w.cur.events) {
				if err := w.flush(); err != nil {
					return err
				}
			}
		}
		h := &nar.Header{Path: child, Type: nar.TypeRegular, Executable: st.Mode&unix.S_IXUSR != 0, Size: size}
		b := w.cur
		start := len(b.buf)
		b.buf = b.buf[:start+int(size)]
		chunk := b.buf[start:]
		b.events = append(b.events, event{hdr: h, data: chunk})
		s.hdrs[i], s.chunks[i] = h, chunk
		for _, e := range readChain(dirfd, &s.names[s.nameOff[i]], i, chunk, uint64(i)<<2) {
			w.ring.push(e)
		}
	}
	return w.round(dirfd, path, entries, first, len(entries))
}

// round waits for the queued chains of entries[first:end] and rereads, through
// plain system calls, each file the ring did not read whole.
func (w *walker) round(dirfd int, path string, entries []os.DirEntry, first, end int) error {
	if w.ring.queued == 0 {
		return nil
	}
	s := &w.ringState
	for i := first; i < end; i++ {
		s.failed[i] = false
	}
	err := w.ring.wait(3*(end-first), func(ud uint64, res int32) {
		i := ud >> 2
		if res < 0 {
			s.failed[i] = true
		}
		if ud&3 == 1 {
			s.readRes[i] = res
		}
	})
	if err != nil {
		return w.ringBroken(path, err)
	}
	for i := first; i < end; i++ {
		if s.failed[i] || int(s.readRes[i]) != len(s.chunks[i]) {
			name := entries[i].Name()
			if err := reread(dirfd, name, path+"/"+name, s.hdrs[i], s.chunks[i]); err != nil {
				return err
			}
		}
		s.hdrs[i], s.chunks[i] = nil, nil
	}
	return nil
}

// ringBroken fails the dump after io_uring_enter itself failed, keeping the batch
// the kernel may still be writing into.
func (w *walker) ringBroken(path string, err error) error {
	leaked.Lock()
	leaked.batches = append(leaked.batches, w.cur)
	leaked.Unlock()
	w.cur = nil
	w.noRing = true
	return fmt.Errorf("dump %s: %w", path, err)
}
