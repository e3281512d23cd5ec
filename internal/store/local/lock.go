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
// path unlinks the lock file and then makes it one byte long, so a waiter that
// acquires the lock on the unlinked file sees a non-empty file, knows it is
// stale and starts over with a fresh one.

// maxLockPoll caps the wait between attempts to take a contended lock.
const maxLockPoll = 50 * time.Millisecond

// PathLocks holds exclusive locks on a set of paths.
type PathLocks struct {
	dirfd int // what the names are relative to: AT_FDCWD or a directory
	held  []heldLock
}

// heldLock is one locked lock file.
type heldLock struct {
	fd   int
	name string
}

// LockPaths locks the given real paths (each through "<path>.lock"), in sorted
// order so that two callers can never deadlock, waiting as long as it takes or
// until ctx is done.
func LockPaths(ctx context.Context, realPaths []string) (*PathLocks, error) {
	return lockPathsAt(ctx, unix.AT_FDCWD, realPaths)
}

// lockPathsAt is LockPaths for paths relative to the directory dirfd (the
// store dir, for base names: no path walk per lock).
func lockPathsAt(ctx context.Context, dirfd int, paths []string) (*PathLocks, error) {
	sorted := slices.Clone(paths)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	l := &PathLocks{dirfd: dirfd, held: make([]heldLock, 0, len(sorted))}
	for _, p := range sorted {
		name := p + ".lock"
		fd, err := lockPath(ctx, dirfd, name)
		if err != nil {
			l.Unlock(false)
			return nil, err
		}
		l.held = append(l.held, heldLock{fd: fd, name: name})
	}
	return l, nil
}

func lockPath(ctx context.Context, dirfd int, name string) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return -1, fmt.Errorf("lock %s: %w", name, &os.PathError{Op: "open", Path: name, Err: err})
		}
		if err := flock(ctx, fd, unix.LOCK_EX); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("lock %s: %w", name, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("lock %s: %w", name, err)
		}
		if st.Size == 0 {
			return fd, nil
		}
		// Stale: its holder deleted it after we opened it. Try again.
		unix.Close(fd)
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
	for _, h := range l.held {
		if remove {
			unix.Unlinkat(l.dirfd, h.name, 0)
			// Any size but 0 marks it stale (Nix writes a byte; a
			// truncate says the same without allocating a block).
			unix.Ftruncate(h.fd, 1)
		}
		unix.Close(h.fd)
	}
	l.held = nil
}
