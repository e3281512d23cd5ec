package local

import (
	"io"
	"sync"
)

// Read-ahead for content that arrives on a stream (a daemon client's upload).
// Unpacking spends its time in system calls that create and write files;
// reading the stream and hashing it can run beside that on another core. A
// readAhead reads the source on one goroutine into a ring of buffers, the
// caller consumes them, and a third goroutine hashes each buffer once the
// caller is done with it: so exactly the bytes consumed are hashed, up to the
// point where the caller stops (the end of the NAR), and nothing read past it.
// Memory is the ring: aheadBuffers × aheadBufferSize whatever the content.
const (
	aheadBufferSize = 256 << 10
	aheadBuffers    = 4
)

type aheadBuf struct {
	data []byte
	n    int   // bytes in data; for the hasher, bytes consumed
	err  error // what the source said after these bytes
}

type readAhead struct {
	full  chan *aheadBuf // read, for the consumer
	used  chan *aheadBuf // consumed, for the hasher
	free  chan *aheadBuf
	stop  chan struct{}
	cur   *aheadBuf
	off   int
	wg    sync.WaitGroup
	ended bool
	ring  *[aheadBuffers]aheadBuf
	h     io.Writer
}

// aheadRings recycles the buffers of finished read-aheads.
var aheadRings = sync.Pool{New: func() any {
	var r [aheadBuffers]aheadBuf
	for i := range r {
		r[i].data = make([]byte, aheadBufferSize)
	}
	return &r
}}

// newReadAhead starts reading src and hashing what is consumed into h. The
// source must end (AddCA's contract: content is read to its end); finish
// must be called. Content that fits in one buffer is read here, and nothing
// runs on other goroutines.
func newReadAhead(src io.Reader, h io.Writer) *readAhead {
	ra := &readAhead{h: h}
	ra.ring = aheadRings.Get().(*[aheadBuffers]aheadBuf)
	first := &ra.ring[0]
	first.n, first.err = readFull(src, first.data)
	if first.err != nil {
		ra.cur = first
		return ra
	}
	ra.full = make(chan *aheadBuf, aheadBuffers)
	ra.used = make(chan *aheadBuf, aheadBuffers)
	ra.free = make(chan *aheadBuf, aheadBuffers)
	ra.stop = make(chan struct{})
	ra.full <- first
	for i := 1; i < len(ra.ring); i++ {
		ra.ring[i].n, ra.ring[i].err = 0, nil
		ra.free <- &ra.ring[i]
	}
	ra.wg.Add(2)
	go func() { // reader
		defer ra.wg.Done()
		for {
			var b *aheadBuf
			select {
			case b = <-ra.free:
			case <-ra.stop:
				return
			}
			b.n, b.err = readFull(src, b.data)
			select {
			case ra.full <- b:
			case <-ra.stop:
				return
			}
			if b.err != nil {
				return
			}
		}
	}()
	go func() { // hasher
		defer ra.wg.Done()
		for b := range ra.used {
			h.Write(b.data[:b.n])
			ra.free <- b
		}
	}()
	return ra
}

// readFull reads until p is full or the source fails or ends.
func readFull(r io.Reader, p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := r.Read(p[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func (ra *readAhead) Read(p []byte) (int, error) {
	for ra.cur == nil || ra.off == ra.cur.n {
		if ra.cur != nil {
			if ra.cur.err != nil {
				return 0, ra.cur.err
			}
			ra.used <- ra.cur // not inline: only the last buffer has an error
			ra.cur = nil
		}
		ra.cur, ra.off = <-ra.full, 0
	}
	n := copy(p, ra.cur.data[ra.off:ra.cur.n])
	ra.off += n
	return n, nil
}

// finish hashes what was consumed of the current buffer, stops the reader
// and waits for both goroutines. What was read but not consumed is dropped.
func (ra *readAhead) finish() {
	if ra.ended {
		return
	}
	ra.ended = true
	if ra.used == nil { // inline
		ra.h.Write(ra.cur.data[:ra.off])
		aheadRings.Put(ra.ring)
		ra.ring, ra.cur = nil, nil
		return
	}
	if ra.cur != nil {
		ra.cur.n = ra.off
		ra.used <- ra.cur
		ra.cur = nil
	}
	close(ra.stop)
	close(ra.used)
	ra.wg.Wait()
	aheadRings.Put(ra.ring)
	ra.ring = nil
}
