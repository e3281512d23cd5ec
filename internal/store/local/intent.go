package local

import (
	"context"
	"io"
	"os"
	"strconv"
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
// and makes it durable with the data (a Batch's intent lives in one of its
// process's reusable files intent-<n>, rewritten in place: no file is created
// or removed per commit). If the writer dies, its temporary is
// stale (nobody holds its lock); the next Open finds the intent there and, for
// each name, takes the path's lock and removes whatever is at that name unless
// the path is valid. A path the crashed writer registered stays; one it moved
// into place but never registered, or invalidated but never moved out, goes.

// intentName is the intent file inside a temporary, and the prefix of the
// reusable ones (intent-<n>).
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

// intentFile is a reusable intent file in the store's add temporary. It only
// grows, by whole blocks, and everything past the names of the last commit is
// newlines: rewriting it then changes neither its size nor its block map, so
// fdatasync makes a commit's names durable without writing the inode.
type intentFile struct {
	fd   int
	name string
	t    *tempDir // the temporary it is in
	size int64    // of the file
	used int64    // bytes of names the last commit wrote; after them, newlines
}

// intentBlock is the unit the intent files grow by.
const intentBlock = 4096

// writeIntent records the store paths a Commit is about to move into place in
// an intent file of the store's pool, which it returns (nil when the batch
// moves nothing); release it once the commit is over.
func (b *Batch) writeIntent() (*intentFile, error) {
	var buf []byte
	for _, it := range b.items {
		if it.temp != nil {
			buf = append(buf, it.info.Path.Base()...)
			buf = append(buf, '\n')
		}
	}
	if buf == nil {
		return nil, nil
	}
	f, err := b.s.acquireIntent()
	if err != nil {
		return nil, err
	}
	used := int64(len(buf))
	// Blank the last commit's longer names; grow by whole blocks.
	end := max(used, f.used)
	if end > f.size {
		end = (end + intentBlock - 1) / intentBlock * intentBlock
	}
	for int64(len(buf)) < end {
		buf = append(buf, '\n')
	}
	if _, err := unix.Pwrite(f.fd, buf, 0); err != nil {
		b.s.releaseIntent(f)
		return nil, &os.PathError{Op: "write", Path: f.name, Err: err}
	}
	f.size, f.used = max(f.size, end), used
	return f, nil
}

// acquireIntent takes an intent file from the pool, creating one if all are
// in use.
func (s *Store) acquireIntent() (*intentFile, error) {
	t, err := s.addTemp()
	if err != nil {
		return nil, err
	}
	s.tempMu.Lock()
	defer s.tempMu.Unlock()
	if n := len(s.intents); n > 0 {
		f := s.intents[n-1]
		s.intents = s.intents[:n-1]
		return f, nil
	}
	s.intentSeq++
	name := intentName + "-" + strconv.Itoa(s.intentSeq)
	fd, err := unix.Openat(t.fd, name, unix.O_RDWR|unix.O_CREAT|unix.O_TRUNC|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, &os.PathError{Op: "create", Path: s.tempPath(t.name) + "/" + name, Err: err}
	}
	s.fsyncDir(t.fd)
	return &intentFile{fd: fd, name: s.tempPath(t.name) + "/" + name, t: t}, nil
}

// releaseIntent returns f to the pool once its paths are registered or moved
// back. It keeps its names until the next Commit overwrites them: emptying it
// would free its block (with online discard, a trim per commit), and after a
// crash a stale name only costs the recovery a lookup, since a valid path is
// never removed.
func (s *Store) releaseIntent(f *intentFile) {
	if f == nil {
		return
	}
	s.tempMu.Lock()
	if f.t == s.temp {
		s.intents = append(s.intents, f)
		f = nil
	}
	s.tempMu.Unlock()
	if f != nil { // its temporary was deleted under the store (addTemp)
		unix.Close(f.fd)
	}
}

// recoverTemp undoes the unfinished moves a crashed writer recorded in the
// stale temporary dirfd (called with its lock held, before it is removed).
// Failures leave garbage behind, no worse than without the intent.
func (s *Store) recoverTemp(dirfd int) {
	dup, err := unix.Dup(dirfd)
	if err != nil {
		return
	}
	d := os.NewFile(uintptr(dup), "temporary")
	names, _ := d.Readdirnames(-1)
	d.Close()
	for _, n := range names {
		if n == intentName || strings.HasPrefix(n, intentName+"-") {
			s.recoverIntent(dirfd, n)
		}
	}
}

// recoverIntent handles one intent file of a stale temporary.
func (s *Store) recoverIntent(dirfd int, name string) {
	fd, err := openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW)
	if err != nil {
		return
	}
	f := os.NewFile(uintptr(fd), name)
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
		locks, err := s.lockRealPath(ctx, p)
		if err != nil {
			continue
		}
		if valid, err := s.IsValidPath(ctx, p); err == nil && !valid {
			removeTree(s.realFD, base)
		}
		locks.Unlock(true)
	}
}
