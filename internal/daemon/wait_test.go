package daemon

import (
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// socketPair returns the two ends of a connected Unix stream socket pair.
func socketPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

// TestSpinReader drives a spinReader through quick and slow clients, a busy
// daemon and a hang-up, checking what it reads, its backoff, and that it
// gives the daemon's polling slot back every time.
func TestSpinReader(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("the daemon does not poll with one P")
	}
	s := &Server{SpinWait: DefaultSpinWait}
	daemonEnd, clientEnd := socketPair(t)
	r := newSpinReader(s, daemonEnd)
	if r == nil {
		t.Fatal("no spinReader")
	}
	tests := []struct {
		name        string
		busy        bool          // another connection is in an operation
		delay       time.Duration // before the client writes (0: before the Read); < 0: it hangs up
		wantBackoff int
		wantSkip    int
	}{
		{"quick client", false, 0, 0, 0},
		{"slow client", false, 20 * time.Millisecond, 1, 1},
		{"skipped reply", false, 0, 1, 0},
		{"quick again", false, 0, 0, 0},
		{"slow twice", false, 20 * time.Millisecond, 1, 1},
		{"skipped, slow", false, 20 * time.Millisecond, 1, 0},
		{"slow again", false, 20 * time.Millisecond, 2, 2},
		{"skipped 1", false, 0, 2, 1},
		{"skipped 2", false, 0, 2, 0},
		{"busy daemon", true, 20 * time.Millisecond, 2, 0},
		{"hang-up", false, -1, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.busy {
				s.busy.Add(1)
				defer s.busy.Add(-1)
			}
			r.replied()
			switch {
			case tt.delay < 0:
				clientEnd.CloseWrite()
			case tt.delay == 0:
				clientEnd.Write([]byte("op"))
			default:
				go func() {
					time.Sleep(tt.delay)
					clientEnd.Write([]byte("op"))
				}()
			}
			buf := make([]byte, 8)
			n, err := io.ReadFull(r, buf[:2])
			switch {
			case tt.delay < 0:
				if !errors.Is(err, io.EOF) {
					t.Errorf("Read after hang-up: %d, %v; want EOF", n, err)
				}
			case err != nil || string(buf[:n]) != "op":
				t.Errorf("Read = %q, %v", buf[:n], err)
			}
			if r.backoff != tt.wantBackoff || r.skip != tt.wantSkip {
				t.Errorf("backoff %d, skip %d; want %d, %d", r.backoff, r.skip, tt.wantBackoff, tt.wantSkip)
			}
			if s.polling.Load() != 0 {
				t.Error("the polling slot was not given back")
			}
		})
	}
}

// TestSpinTrial times trial phases with made-up operation times and checks
// which way the connection keeps, and that it tries again afterwards.
func TestSpinTrial(t *testing.T) {
	tests := []struct {
		name            string
		withPoll, sleep time.Duration // one operation's time in each trial
		wantPoll        bool
	}{
		{"polling faster", 20 * time.Microsecond, 45 * time.Microsecond, true},
		{"sleeping faster", 30 * time.Microsecond, 19 * time.Microsecond, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &spinReader{poll: true}
			now := time.Unix(1000, 0)
			run := func(n int, d time.Duration) {
				for range n {
					now = now.Add(d)
					r.tune(now)
					r.lastReply = now
				}
			}
			run(trialOps, tt.withPoll)
			if r.phase != phaseTrySleep || r.poll {
				t.Fatalf("after the polling trial: phase %d, poll %v", r.phase, r.poll)
			}
			run(trialOps, tt.sleep)
			if r.phase != phaseKeep || r.poll != tt.wantPoll {
				t.Fatalf("after both trials: phase %d, poll %v; want poll %v", r.phase, r.poll, tt.wantPoll)
			}
			run(keepOps, tt.sleep)
			if r.phase != phaseTryPoll || !r.poll {
				t.Errorf("after keepOps: phase %d, poll %v; want a new trial", r.phase, r.poll)
			}
		})
	}
}

// TestSpinTrialPause checks a pause of the client counts as maxOpTime.
func TestSpinTrialPause(t *testing.T) {
	r := &spinReader{poll: true, lastReply: time.Unix(1000, 0)}
	r.tune(r.lastReply.Add(time.Minute))
	if r.phaseTime != maxOpTime {
		t.Errorf("a minute's pause counted %v, want %v", r.phaseTime, maxOpTime)
	}
}
