package daemon

import (
	"io"
	"net"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultSpinWait is how long a connection polls its socket for the next
// operation after a reply before it sleeps in the netpoller (Server.SpinWait).
//
// A client that asks one question after another (`nix-store -q` over 2000
// paths) sends the next one 10–30 µs after it has read a reply. Sleeping in
// between costs a wake-up per operation: the thread blocks in epoll_wait, its
// CPU idles, and the client's write must wake it again, which on a VM whose
// idle CPUs halt at once costs more than the lookup (docs/benchmarks.md,
// issue 4).
const DefaultSpinWait = 50 * time.Microsecond

// maxSpinBackoff bounds how many replies a connection lets pass without
// polling after its polls found nothing in time.
const maxSpinBackoff = 64

// Each connection finds out whether polling pays for its client: it times
// trialOps operations with polling and trialOps without, then runs the
// faster way for keepOps operations, and tries again. Polling suits a client
// that blocks while it waits for the reply (Nix's); a client whose runtime
// spins while it waits (Go's) is slowed down by a daemon that polls on the
// same CPU. An operation's time is from one reply to the next, at most
// maxOpTime (so a pause of the client does not decide).
const (
	trialOps  = 64
	keepOps   = 1024
	maxOpTime = time.Millisecond
)

// Phases of the trial.
const (
	phaseTryPoll = iota
	phaseTrySleep
	phaseKeep
)

// spinReader reads a Unix socket connection. After a reply (the op loop
// calls replied), its next Read polls the socket with non-blocking reads,
// yielding the CPU between them, for up to Server.SpinWait before it lets the
// netpoller wait. It polls only while the daemon has nothing else to do: one
// connection at a time, none in an operation, and it stops as soon as another
// connection starts one. A poll that finds nothing in time makes the
// connection skip the next 1, 2, 4, … up to maxSpinBackoff replies before it
// polls again (an interactive client pays one SpinWait per 64 replies at
// most); a poll that finds the request resets that. Whether polling pays at
// all is tried out per connection (trialOps).
type spinReader struct {
	s  *Server
	c  *net.UnixConn
	rc syscall.RawConn

	armed     bool      // the next Read may poll
	lastReply time.Time // when the last reply went out
	skip      int       // replies still to let pass without polling
	backoff   int       // the skip after the next miss is twice this

	// The trial (see trialOps).
	phase     int
	phaseOps  int
	phaseTime time.Duration
	pollTime  time.Duration // phaseTime of the last phaseTryPoll
	poll      bool          // poll after replies in this phase

	// The current Read, for pollRead (a method value made once, so a Read
	// allocates nothing).
	buf     []byte
	n       int
	err     error
	polling bool
	pollFn  func(fd uintptr) bool
}

// newSpinReader returns c's spinReader, or nil when s does not poll or the
// runtime has one P (polling would then hold up every other connection).
func newSpinReader(s *Server, c *net.UnixConn) *spinReader {
	if s.SpinWait <= 0 || runtime.GOMAXPROCS(0) < 2 {
		return nil
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	r := &spinReader{s: s, c: c, rc: rc, poll: true}
	r.pollFn = r.pollRead
	return r
}

// replied arms the next Read to poll: a reply has gone out.
func (r *spinReader) replied() {
	now := time.Now()
	r.tune(now)
	r.lastReply = now
	switch {
	case !r.poll:
	case r.skip > 0:
		r.skip--
	default:
		r.armed = true
	}
}

// tune counts a reply sent at now towards the trial and moves it on.
func (r *spinReader) tune(now time.Time) {
	if !r.lastReply.IsZero() {
		r.phaseTime += min(now.Sub(r.lastReply), maxOpTime)
	}
	r.phaseOps++
	n := trialOps
	if r.phase == phaseKeep {
		n = keepOps
	}
	if r.phaseOps < n {
		return
	}
	switch r.phase {
	case phaseTryPoll:
		r.pollTime = r.phaseTime
		r.phase, r.poll = phaseTrySleep, false
	case phaseTrySleep:
		r.phase, r.poll = phaseKeep, r.pollTime < r.phaseTime
	default:
		r.phase, r.poll = phaseTryPoll, true
	}
	r.phaseOps, r.phaseTime = 0, 0
}

func (r *spinReader) Read(p []byte) (int, error) {
	if !r.armed || len(p) == 0 {
		return r.c.Read(p)
	}
	r.armed = false
	if r.s.busy.Load() != 0 || !r.s.polling.CompareAndSwap(0, 1) {
		return r.c.Read(p)
	}
	r.buf, r.n, r.err, r.polling = p, 0, nil, true
	err := r.rc.Read(r.pollFn)
	if r.polling {
		r.stopPolling(true)
	}
	r.buf = nil
	if err != nil {
		return 0, err
	}
	if r.err != nil {
		return 0, &net.OpError{Op: "read", Net: "unix", Addr: r.c.LocalAddr(), Err: r.err}
	}
	if r.n == 0 {
		return 0, io.EOF
	}
	return r.n, nil
}

// pollRead is the RawConn.Read callback: true when the read is done, false to
// wait in the netpoller.
func (r *spinReader) pollRead(fd uintptr) bool {
	for {
		n, err := unix.Read(int(fd), r.buf)
		switch err {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
		default:
			r.n, r.err = n, err
			return true
		}
		if !r.polling {
			return false
		}
		if r.s.busy.Load() != 0 {
			r.polling = false // not the client's doing: no backoff
			r.s.polling.Store(0)
			return false
		}
		if time.Since(r.lastReply) > r.s.SpinWait {
			r.stopPolling(false)
			return false
		}
		// Let anything else that wants this CPU run: the client itself
		// when the scheduler put it here.
		unix.RawSyscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
	}
}

// stopPolling ends the poll; found says whether the request came in time.
func (r *spinReader) stopPolling(found bool) {
	r.polling = false
	r.s.polling.Store(0)
	if found {
		r.backoff = 0
		return
	}
	r.backoff = min(max(2*r.backoff, 1), maxSpinBackoff)
	r.skip = r.backoff
}
