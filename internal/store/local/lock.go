package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// Path locks, compatible with Nix's: the lock for a store path is the file
// "<real path>.lock", locked with flock(LOCK_EX). The holder that finishes the
// path unlinks the lock file and then writes one byte to it, so a waiter that
// acquires the lock on the unlinked file sees a non-empty file, knows it is
// stale and starts over with a fresh one.

// maxLockPoll caps the wait between attempts to take a contended lock.
const maxLockPoll = 50 * time.Millisecond

// PathLocks holds exclusive locks on a set of paths.
type PathLocks struct {
	files []*os.File
}

// LockPaths locks the given real paths (each through "<path>.lock"), in sorted
// order so that two callers can never deadlock, waiting as long as it takes or
// until ctx is done.
func LockPaths(ctx context.Context, realPaths []string) (*PathLocks, error) {
	sorted := slices.Clone(realPaths)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	l := &PathLocks{}
	for _, p := range sorted {
		f, err := lockPath(ctx, p+".lock")
		if err != nil {
			l.Unlock(false)
			return nil, err
		}
		l.files = append(l.files, f)
	}
	return l, nil
}

func lockPath(ctx context.Context, lockPath string) (*os.File, error) {
	for {
		f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("lock %s: %w", lockPath, err)
		}
		if err := flock(ctx, int(f.Fd()), unix.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", lockPath, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", lockPath, err)
		}
		if st.Size == 0 {
			return f, nil
		}
		// Stale: its holder deleted it after we opened it. Try again.
		f.Close()
	}
}

// flock takes a lock of kind how (LOCK_SH or LOCK_EX) on fd, polling with a
// growing delay while it is contended so that ctx can interrupt the wait.
func flock(ctx context.Context, fd int, how int) error {
	delay := time.Millisecond
	for {
		err := unix.Flock(fd, how|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			return err
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		delay = min(delay*2, maxLockPoll)
	}
}

// Unlock releases the locks. With remove, each lock file is first unlinked and
// marked stale (as Nix does once the locked path is valid), which keeps the
// store dir free of lock files.
func (l *PathLocks) Unlock(remove bool) {
	if l == nil {
		return
	}
	for _, f := range l.files {
		if remove {
			os.Remove(f.Name())
			f.Write([]byte("d"))
		}
		f.Close()
	}
	l.files = nil
}
