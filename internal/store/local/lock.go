package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"cairn/internal/storepath"
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
	s     *Store // owner of the spare lock files among held
	// shared says the locks hold s.pathMu shared (see Store.trySole).
	shared bool
}

// heldLock is one locked lock file.
type heldLock struct {
	fd    int
	name  string
	spare *spareLock // when the lock file is one of the store's spares
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
// store dir free of lock files. A spare lock file (see lockStorePaths) is
// always removed from the store dir, and goes back to the pool.
func (l *PathLocks) Unlock(remove bool) {
	if l == nil {
		return
	}
	defer func() {
		if l.shared {
			l.shared = false
			l.s.pathMu.RUnlock()
		}
	}()
	for _, h := range l.held {
		if h.spare != nil {
			if err := unix.Unlinkat(l.dirfd, h.name, 0); err != nil && err != unix.ENOENT {
				// Still linked under the path's name: left there as
				// an ordinary free lock file (empty), never reused.
				l.s.dropSpare(h.spare, true)
				continue
			}
			l.s.putSpare(h.spare, true)
			continue
		}
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

// Spare lock files. Creating "<path>.lock" for every path added and deleting
// it afterwards costs an inode allocation and a free per path; on ext4
// without a journal, each inode freed in the last minute also makes every
// later allocation in its block group step over it, so a long run of adds
// slows down quadratically. A store instead keeps a pool of lock files in its
// add temporary and hard-links one to "<path>.lock" to lock a path: the same
// protocol for every other process (Nix's included), no inode allocated or
// freed. A spare in the pool is flock'ed and empty, as a lock file its
// holder has just created; the rules that make the reuse safe:
//
//   - Once its "<path>.lock" name is unlinked, nobody can open the spare
//     anew. If then no other process has it open (a write lease can be
//     taken on it, which the kernel grants only then), nobody waits for it
//     or learns of it: it goes back to the pool as it is, still locked, so
//     reusing it costs no system call but the link.
//   - Otherwise someone opened it under its last name and waits for its
//     lock: it is marked stale (size 1) and unlocked, so that they start
//     over as the protocol says, and deleted. Reused, it could make a
//     writer that waited for an earlier path wait for the next one, which
//     could deadlock two writers that lock their paths in sorted order.

// maxSpareLocks bounds the pool; a batch that locks more paths at once
// creates and deletes the extra lock files.
const maxSpareLocks = 64

// spareLock is one lock file of the pool, open, named sparePrefix<n> in the
// add temporary.
type spareLock struct {
	fd   int
	name string
	t    *tempDir // the temporary it is in
}

const sparePrefix = "lock-"

// LockStorePaths locks the store paths ps as LockPaths locks their real
// paths, through the store's spare lock files where it can: no lock file is
// made and freed per path.
func (s *Store) LockStorePaths(ctx context.Context, ps []storepath.StorePath) (*PathLocks, error) {
	bases := make([]string, len(ps))
	for i, p := range ps {
		bases[i] = p.Base()
	}
	return s.lockStorePaths(ctx, bases)
}

// lockStorePaths locks the store paths with the given base names (sorted, as
// LockPaths), through spare lock files where it can.
func (s *Store) lockStorePaths(ctx context.Context, bases []string) (*PathLocks, error) {
	sorted := slices.Clone(bases)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	s.pathMu.RLock()
	l := &PathLocks{dirfd: s.realFD, held: make([]heldLock, 0, len(sorted)), s: s, shared: true}
	for _, base := range sorted {
		h, err := s.lockStorePath(ctx, base+".lock")
		if err != nil {
			l.Unlock(false)
			return nil, err
		}
		l.held = append(l.held, h)
	}
	return l, nil
}

func (s *Store) lockStorePath(ctx context.Context, name string) (heldLock, error) {
	sp, err := s.getSpare(ctx)
	if err == nil {
		if err := unix.Linkat(sp.t.fd, sp.name, s.realFD, name, 0); err == nil {
			return heldLock{fd: sp.fd, name: name, spare: sp}, nil
		}
		// Someone's lock file is there (or no hard links here): the
		// protocol's way.
		s.putSpare(sp, false)
	} else if ctx.Err() != nil {
		return heldLock{}, fmt.Errorf("lock %s: %w", name, ctx.Err())
	}
	fd, err := lockPath(ctx, s.realFD, name)
	if err != nil {
		return heldLock{}, err
	}
	return heldLock{fd: fd, name: name}, nil
}

// lockRealPath locks p as LockPaths does, as one of this store's path locks
// (holding pathMu shared).
func (s *Store) lockRealPath(ctx context.Context, p storepath.StorePath) (*PathLocks, error) {
	s.pathMu.RLock()
	l, err := LockPaths(ctx, []string{s.RealPath(p)})
	if err != nil {
		s.pathMu.RUnlock()
		return nil, err
	}
	l.s, l.shared = s, true
	return l, nil
}

// Sole adding. Nix holds the store's big-lock shared for as long as it has
// the store open, and waits for it ("waiting for the big Nix store lock...");
// it takes it exclusive only to migrate the schema. So does Cairn. A process
// that holds it exclusively has the store to itself: no other process can
// add, delete or even read a path meanwhile. AddPaths and Import take it so,
// when they can without waiting, for one batch at a time (commitSole), and
// then register the batch without path locks: a link, an unlink and a
// lease check fewer per path, all on the store dir (a quarter of adding 2000
// small files; docs/benchmarks.md, session 11). Between batches the lock
// goes back to shared, so a Nix starting meanwhile waits for one batch at
// most. Within the process, pathMu does the same: every path lock holds it
// shared, a sole batch exclusively. It is only ever TryLock'ed exclusively,
// so no writer waits on it and read locks may nest (a build holding its
// outputs' locks while it registers paths).

// trySole takes the store to itself (see above), without waiting: it reports
// whether it did. endSole gives it back.
func (s *Store) trySole() bool {
	if s.bigLock == nil || !s.pathMu.TryLock() {
		return false
	}
	fd := int(s.bigLock.Fd())
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err == nil {
		return true
	}
	// A refused conversion leaves no lock at all: take the shared one again
	// (waiting only behind a schema migration).
	flockShared(fd)
	s.pathMu.Unlock()
	return false
}

func (s *Store) endSole() {
	flockShared(int(s.bigLock.Fd()))
	s.pathMu.Unlock()
}

func flockShared(fd int) {
	for {
		if err := unix.Flock(fd, unix.LOCK_SH); err != unix.EINTR {
			return
		}
	}
}

// getSpare returns a spare lock file, locked and empty: one of the pool, or
// a new one.
func (s *Store) getSpare(ctx context.Context) (*spareLock, error) {
	t, err := s.addTemp()
	if err != nil {
		return nil, err
	}
	s.tempMu.Lock()
	if n := len(s.spares); n > 0 {
		sp := s.spares[n-1]
		s.spares = s.spares[:n-1]
		s.tempMu.Unlock()
		return sp, nil
	}
	s.spareSeq++
	sp := &spareLock{fd: -1, name: sparePrefix + strconv.Itoa(s.spareSeq), t: t}
	s.tempMu.Unlock()
	fd, err := unix.Openat(t.fd, sp.name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	sp.fd = fd
	// Nobody else knows of it yet: the lock is free.
	if err := flock(ctx, sp.fd, unix.LOCK_EX); err != nil {
		s.dropSpare(sp, false)
		return nil, err
	}
	return sp, nil
}

// unshared reports whether no other open file refers to the file open at fd,
// by taking a write lease on it (and dropping it at once).
func unshared(fd int) bool {
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_WRLCK); err != nil {
		return false
	}
	unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_UNLCK)
	return true
}

// putSpare returns sp, still locked and empty, to the pool when nobody else
// has it open, and otherwise (or when the pool is full) marks it stale and
// deletes it. Its only name must be its own in the temporary: linked is
// whether it had another, which others may have opened.
func (s *Store) putSpare(sp *spareLock, linked bool) {
	if linked && !unshared(sp.fd) {
		s.dropSpare(sp, false)
		return
	}
	s.tempMu.Lock()
	if s.temp != nil && sp.t == s.temp && len(s.spares) < maxSpareLocks {
		s.spares = append(s.spares, sp)
		sp = nil
	}
	s.tempMu.Unlock()
	if sp != nil {
		s.dropSpare(sp, false)
	}
}

// dropSpare deletes a spare lock file, marked stale first unless stale says
// it is already.
func (s *Store) dropSpare(sp *spareLock, stale bool) {
	s.tempMu.Lock()
	if s.temp != nil && sp.t == s.temp {
		unix.Unlinkat(s.temp.fd, sp.name, 0)
	}
	s.tempMu.Unlock()
	if !stale {
		unix.Ftruncate(sp.fd, 1)
	}
	unix.Close(sp.fd)
}
