package local

import (
	"context"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Intents close the one window in which a crash could leave files in the store
// dir that no row describes. Moving paths into place and registering them (or
// invalidating a path and moving it out) cannot be one atomic step, so before
// the first rename the writer records, in a file inside its locked temporary,
//
//	intent := { base "\n" }      the store path base names it is about to move
//
// and makes it durable with the data. If the writer dies, its temporary is
// stale (nobody holds its lock); the next Open finds the intent there and, for
// each name, takes the path's lock and removes whatever is at that name unless
// the path is valid. A path the crashed writer registered stays; one it moved
// into place but never registered, or invalidated but never moved out, goes.

// intentName is the intent file inside a temporary.
const intentName = "intent"

// maxIntentSize bounds the intent file read back after a crash.
const maxIntentSize = 64 << 20

// writeIntent records bases in t's intent file.
func writeIntent(t *tempDir, bases []string) error {
	fd, err := unix.Openat(t.fd, intentName, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return &os.PathError{Op: "create", Path: t.s.tempPath(t.name) + "/" + intentName, Err: err}
	}
	f := os.NewFile(uintptr(fd), intentName)
	_, err = io.WriteString(f, strings.Join(bases, "\n")+"\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// writeIntent records the store paths a Commit is about to move into place.
func (b *Batch) writeIntent() error {
	if b.temp == nil {
		return nil
	}
	bases := make([]string, 0, len(b.items))
	for _, it := range b.items {
		if it.temp != nil {
			bases = append(bases, it.info.Path.Base())
		}
	}
	return writeIntent(b.temp, bases)
}

// recoverTemp undoes the unfinished moves a crashed writer recorded in the
// stale temporary dirfd (called with its lock held, before it is removed).
// Failures leave garbage behind, no worse than without the intent.
func (s *Store) recoverTemp(dirfd int) {
	fd, err := openat(dirfd, intentName, unix.O_RDONLY|unix.O_NOFOLLOW)
	if err != nil {
		return
	}
	f := os.NewFile(uintptr(fd), intentName)
	data, err := io.ReadAll(io.LimitReader(f, maxIntentSize))
	f.Close()
	if err != nil {
		return
	}
	ctx := context.Background()
	for _, base := range strings.Split(string(data), "\n") {
		p, err := s.dir.FromBase(base)
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if fstatat(s.realFD, base, &st) != nil {
			continue // nothing there
		}
		locks, err := LockPaths(ctx, []string{s.RealPath(p)})
		if err != nil {
			continue
		}
		if valid, err := s.IsValidPath(ctx, p); err == nil && !valid {
			removeTree(s.realFD, base)
		}
		locks.Unlock(true)
	}
}
