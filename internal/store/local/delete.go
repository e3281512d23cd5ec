package local

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"cairn/internal/store"
	"cairn/internal/storepath"
)

// Deleting paths. A path is deleted in this order, each step under the path's
// lock (Delete) or the exclusive GC lock alone (the collector, package gc,
// which like Nix's locks no path: every writer holds a temp root or the
// shared GC lock first):
//
//  1. invalidate: one transaction checks that no other valid path refers to it
//     and removes its row (its Refs and DerivationOutputs rows go with it); the
//     collector invalidates up to 256 paths, referrers first, per transaction;
//  2. a directory is moved out of the store dir into a temporary (one
//     rename), a file or symlink is unlinked where it is;
//  3. the temporary is removed, fd-relative, never following a symlink.
//
// This is Nix's order (invalidatePathChecked, then deletePath), and for the
// same reason: a crash at any point leaves at worst an invalid path's files
// (garbage that the next add of that path replaces, and the next open or GC
// removes), never a valid path whose files are missing or half deleted. The
// rename makes a tree vanish from the store dir at once rather than file by
// file.
//
// Delete holds the GC lock exclusive, as Nix's collector does: verify and
// optimise (which hold it shared) and Nix's GC do not run meanwhile.

// ErrPathInUse: the path still has valid referrers (or roots) and may not be deleted.
var ErrPathInUse = errors.New("path in use")

// gcLockName is the GC lock file in the state dir.
const gcLockName = "gc.lock"

// lockGC takes the GC lock (LOCK_SH or LOCK_EX), waiting until ctx is done.
func (s *Store) lockGC(ctx context.Context, how int) (*os.File, error) {
	path := filepath.Join(s.cfg.StateDir, gcLockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := flock(ctx, int(f.Fd()), how); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}

// DeleteOptions adjusts Delete.
type DeleteOptions struct {
	// Log receives Nix's messages ("deleting '…'", …); nil discards them.
	Log io.Writer
}

// DeleteResult says what Delete removed.
type DeleteResult struct {
	// Paths are the deleted store paths, in deletion order (referrers first).
	Paths []storepath.StorePath
	// BytesFreed counts file sizes as Nix does: a file with one link, or two
	// (the other presumed in .links), counts; directories and symlinks' own
	// blocks do not.
	BytesFreed uint64
	// LinksSaved is what hard-linking through .links still saves afterwards
	// (Nix's "currently hard linking saves …"), in bytes; it may be negative.
	LinksSaved int64
}

// Delete deletes paths as `nix-store --delete` does: a valid path only when
// every path that refers to it (other than itself) is being deleted too, and an
// invalid one's leftover files unconditionally. Referrers go first. Paths
// that cannot be deleted are left alone and the first one is reported as an
// error matching ErrPathInUse, after the others are deleted. Afterwards the
// .links entries nothing else uses are removed.
//
// GC roots are not consulted (that is the garbage collector's job): a path a
// root names but no valid path refers to is deleted.
func (s *Store) Delete(ctx context.Context, paths []storepath.StorePath, opts DeleteOptions) (*DeleteResult, error) {
	logw := opts.Log
	if logw == nil {
		logw = io.Discard
	}
	logf := func(format string, args ...any) { fmt.Fprintf(logw, format+"\n", args...) }
	for _, p := range paths {
		if err := s.checkPath(p); err != nil {
			return nil, fmt.Errorf("delete: %w", err)
		}
	}
	gc, err := s.lockGC(ctx, unix.LOCK_EX)
	if err != nil {
		return nil, fmt.Errorf("delete: %w", err)
	}
	defer gc.Close()

	want := map[storepath.StorePath]bool{}
	for _, p := range paths {
		want[p] = true
	}
	var valid, invalid []storepath.StorePath
	for p := range want {
		ok, err := s.IsValidPath(ctx, p)
		if err != nil {
			return nil, fmt.Errorf("delete: %w", err)
		}
		if ok {
			valid = append(valid, p)
		} else {
			invalid = append(invalid, p)
		}
	}
	// A valid path is deletable when each of its referrers (itself aside) is a
	// deletable path of the request; iterate to the fixed point.
	referrers := map[storepath.StorePath][]storepath.StorePath{}
	for _, p := range valid {
		if referrers[p], err = s.QueryReferrers(ctx, p); err != nil {
			return nil, fmt.Errorf("delete: %w", err)
		}
	}
	deletable := map[storepath.StorePath]bool{}
	for _, p := range valid {
		deletable[p] = true
	}
	for changed := true; changed; {
		changed = false
		for _, p := range valid {
			if !deletable[p] {
				continue
			}
			for _, r := range referrers[p] {
				if r != p && !deletable[r] {
					deletable[p] = false
					changed = true
					break
				}
			}
		}
	}
	var doomed []storepath.StorePath
	for _, p := range valid {
		if deletable[p] {
			doomed = append(doomed, p)
		}
	}
	refs, err := s.QueryReferencesOf(ctx, doomed)
	if err != nil {
		return nil, fmt.Errorf("delete: %w", err)
	}
	order, err := store.TopoSort(doomed, func(p storepath.StorePath) []storepath.StorePath { return refs[p] })
	if err != nil {
		return nil, fmt.Errorf("delete: %w", err)
	}
	storepath.SortPaths(invalid)

	res := &DeleteResult{}
	t, err := s.newTemp()
	if err != nil {
		return nil, fmt.Errorf("delete: %w", err)
	}
	defer t.remove()
	for _, p := range append(order, invalid...) {
		logf("deleting '%s'", p)
		freed, err := s.deleteOne(ctx, p, deletable[p], t)
		if err != nil {
			return res, fmt.Errorf("delete %s: %w", p, err)
		}
		res.Paths = append(res.Paths, p)
		res.BytesFreed += freed
	}
	var inUse error
	for _, p := range paths {
		if slices.Contains(valid, p) && !deletable[p] {
			inUse = fmt.Errorf("Cannot delete path '%s' since it is still alive. To find out why, use: nix-store --query --roots: %w", p, ErrPathInUse)
			break
		}
	}
	logf("deleting unused links...")
	saved, err := s.deleteUnusedLinks(ctx)
	if err != nil {
		return res, fmt.Errorf("delete: %w", err)
	}
	res.LinksSaved = saved
	logf("note: currently hard linking saves %.2f MiB", float64(saved)/(1024*1024))
	return res, inUse
}

// deleteOne invalidates p (when wasValid) and removes its files, through the
// temporary t (empty but for its intent file): deleteBatch for one path.
func (s *Store) deleteOne(ctx context.Context, p storepath.StorePath, wasValid bool, t *tempDir) (uint64, error) {
	res, err := s.deleteBatch(ctx, []storepath.StorePath{p}, wasValid, t, false)
	if err != nil {
		return 0, err
	}
	return res[0].Freed, res[0].Err
}

// Deletion is what deleteBatch did to one path: deleted (Err nil, Freed
// counted), or left alone because it is in use (ErrPathInUse) or valid
// after all.
type Deletion struct {
	Freed uint64
	Err   error
}

// deleteBatch deletes ps (referrers before what they refer to) through the
// temporary t (empty but for its intent file): each path is locked (not for
// a collector, which holds the GC lock: every writer takes a temp root or the
// shared GC lock before it locks a path, and a temp root keeps the path from
// the collector; Nix's collector locks nothing either), the names recorded in t's intent (intent.go) so that a crash between
// the invalidation and the move is cleaned up by the next Open, the valid
// ones (wasValid) invalidated in one transaction that leaves any path a valid
// path still refers to, then each is moved into t and removed. An error that
// is not about one path stops it.
func (s *Store) deleteBatch(ctx context.Context, ps []storepath.StorePath, wasValid bool, t *tempDir, collector bool) ([]Deletion, error) {
	// What this frees would slow down the adds that reuse its block group.
	defer s.retireSlotDir()
	res := make([]Deletion, len(ps))
	locks := make([]*PathLocks, len(ps))
	defer func() {
		for _, l := range locks {
			l.Unlock(false)
		}
	}()
	var bases []string
	for i, p := range ps {
		if !collector {
			var err error
			if locks[i], err = s.lockRealPath(ctx, p); err != nil {
				return nil, err
			}
		}
		bases = append(bases, p.Base())
	}
	if len(bases) == 0 {
		return res, nil
	}
	if err := writeIntent(t, bases); err != nil {
		return nil, err
	}
	if wasValid {
		if err := s.invalidateBatch(ctx, ps, res); err != nil {
			return nil, err
		}
	} else {
		for i, p := range ps {
			if res[i].Err != nil {
				continue
			}
			if ok, err := s.IsValidPath(ctx, p); err != nil {
				return nil, err
			} else if ok {
				res[i].Err = fmt.Errorf("became valid meanwhile: %w", ErrPathInUse)
			}
		}
	}
	for i, p := range ps {
		if res[i].Err != nil {
			continue
		}
		name := tempContent + strconv.Itoa(i)
		var st unix.Stat_t
		if err := fstatat(s.realFD, p.Base(), &st); errors.Is(err, unix.ENOENT) {
			locks[i].Unlock(true)
			locks[i] = nil
			continue
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			// One unlink makes it vanish at once: no need to move it.
			if err := removeCounting(s.realFD, p.Base(), &res[i].Freed); err != nil {
				return nil, err
			}
			locks[i].Unlock(true)
			locks[i] = nil
			continue
		}
		// Moving a directory to another parent rewrites its "..": it must be writable.
		unix.Fchmodat(s.realFD, p.Base(), 0o755, 0)
		var leftover uint64
		removeCounting(t.fd, name, &leftover) // a failed deletion's rest
		if err := unix.Renameat(s.realFD, p.Base(), t.fd, name); err != nil {
			return nil, &os.PathError{Op: "move out of the store", Path: s.RealPath(p), Err: err}
		}
		// From here on the path is gone from the store dir; the temporary
		// is removed now or, after a crash, when the store is next opened.
		locks[i].Unlock(true)
		locks[i] = nil
		if err := removeCounting(t.fd, name, &res[i].Freed); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// invalidateBatch removes the rows of ps in one transaction, in order, each
// provided no other valid path refers to it then (res[i].Err says why not);
// paths with res[i].Err set already, and paths that are not valid, are left
// alone.
func (s *Store) invalidateBatch(ctx context.Context, ps []storepath.StorePath, res []Deletion) error {
	return s.writeTx(ctx, func(tx *sql.Tx) error {
		st, err := prepareInvalidate(ctx, tx)
		if err != nil {
			return err
		}
		defer st.close()
		inUse := make([]error, len(ps))
		for i, p := range ps {
			if res[i].Err != nil {
				continue
			}
			if err := st.invalidate(ctx, p); errors.Is(err, ErrPathInUse) {
				inUse[i] = err
			} else if err != nil {
				return err
			}
		}
		// Only once the transaction is sure to commit (a retry starts over).
		for i, err := range inUse {
			if err != nil {
				res[i].Err = err
			}
		}
		return nil
	})
}

// invalidate removes p's row in one transaction, provided no other valid path
// refers to it. A path that is not valid is left alone.
func (s *Store) invalidate(ctx context.Context, p storepath.StorePath) error {
	return s.writeTx(ctx, func(tx *sql.Tx) error {
		st, err := prepareInvalidate(ctx, tx)
		if err != nil {
			return err
		}
		defer st.close()
		return st.invalidate(ctx, p)
	})
}

// invalidateStmts are invalidate's statements, prepared in one transaction.
type invalidateStmts struct{ id, users, del *sql.Stmt }

func prepareInvalidate(ctx context.Context, tx *sql.Tx) (*invalidateStmts, error) {
	var st invalidateStmts
	var err error
	if st.id, err = tx.PrepareContext(ctx, sqlQueryPathID); err != nil {
		return nil, err
	}
	if st.users, err = tx.PrepareContext(ctx, `select v.path from Refs join ValidPaths v on v.id = Refs.referrer
  where Refs.reference = ? and Refs.referrer != ?`); err != nil {
		st.close()
		return nil, err
	}
	if st.del, err = tx.PrepareContext(ctx, `delete from ValidPaths where id = ?`); err != nil {
		st.close()
		return nil, err
	}
	return &st, nil
}

func (st *invalidateStmts) close() {
	for _, s := range []*sql.Stmt{st.id, st.users, st.del} {
		if s != nil {
			s.Close()
		}
	}
}

// invalidate removes p's row unless another valid path refers to it
// (ErrPathInUse); a path that is not valid is left alone.
func (st *invalidateStmts) invalidate(ctx context.Context, p storepath.StorePath) error {
	var id int64
	err := st.id.QueryRowContext(ctx, p.String()).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	rows, err := st.users.QueryContext(ctx, id, id)
	if err != nil {
		return err
	}
	var users []string
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			rows.Close()
			return err
		}
		users = append(users, "'"+u+"'")
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	if len(users) > 0 {
		return fmt.Errorf("cannot delete path '%s' because it is in use by %s: %w", p, strings.Join(users, ", "), ErrPathInUse)
	}
	_, err = st.del.ExecContext(ctx, id)
	return err
}

// removeCounting deletes the tree name in dirfd, fd-relative and without
// following symlinks, adding to freed the size of each non-directory with at
// most two links (Nix's accounting).
func removeCounting(dirfd int, name string, freed *uint64) error {
	var st unix.Stat_t
	if err := fstatat(dirfd, name, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return &os.PathError{Op: "remove: stat", Path: name, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if st.Nlink <= 2 {
			*freed += uint64(st.Size)
		}
		if err := unix.Unlinkat(dirfd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return &os.PathError{Op: "remove", Path: name, Err: err}
		}
		return nil
	}
	if st.Mode&0o700 != 0o700 {
		unix.Fchmodat(dirfd, name, st.Mode&0o7777|0o700, 0)
	}
	fd, err := openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW)
	if err != nil {
		return &os.PathError{Op: "remove: open", Path: name, Err: err}
	}
	f := os.NewFile(uintptr(fd), name)
	names, err := f.Readdirnames(-1)
	if err == nil {
		err = removeEntries(fd, names, freed)
	}
	f.Close()
	if err != nil {
		return err
	}
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return &os.PathError{Op: "remove", Path: name, Err: err}
	}
	return nil
}

// removeParallel bounds the helpers that removeEntries starts, in all of this
// process's deletions together. Freeing a file's blocks waits for the disk
// when the file system discards them at once (ext4 without a journal,
// mounted with discard): one deletion at a time, a collection spent most of
// its time waiting for those discards one by one. A directory's lock is
// released before its entry's blocks are freed, so deletions in one
// directory overlap.
const removeParallel = 8

// removeHelpers holds a token for each running helper of removeEntries.
var removeHelpers = make(chan struct{}, removeParallel)

// removeEntries deletes the entries names of the directory open at dirfd
// (each a tree, as removeCounting), with as many helpers as are free, and
// returns the first error.
func removeEntries(dirfd int, names []string, freed *uint64) error {
	var (
		next  atomic.Int64
		total atomic.Uint64
		mu    sync.Mutex
		first error
		wg    sync.WaitGroup
	)
	work := func() {
		var mine uint64
		defer func() { total.Add(mine) }()
		for {
			i := int(next.Add(1)) - 1
			if i >= len(names) {
				return
			}
			if err := removeCounting(dirfd, names[i], &mine); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
				next.Store(int64(len(names))) // the others stop too
				return
			}
		}
	}
	// A helper for each entry but the one this goroutine takes, while free.
spawn:
	for h := 1; h < len(names); h++ {
		select {
		case removeHelpers <- struct{}{}:
		default:
			break spawn
		}
		wg.Add(1)
		go func() {
			defer func() { <-removeHelpers; wg.Done() }()
			work()
		}()
	}
	work()
	wg.Wait()
	*freed += total.Load()
	return first
}

// deleteUnusedLinks unlinks every .links entry with a link count of 1 (nothing
// in the store uses it any more) and returns what the remaining ones save:
// Nix's unshared size minus actual size minus the directory's own blocks.
func (s *Store) deleteUnusedLinks(ctx context.Context) (int64, error) {
	linksFD, err := openat(s.realFD, linksDirName, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) {
		return 0, nil
	}
	if err != nil {
		return 0, &os.PathError{Op: "open", Path: s.linksPath(""), Err: err}
	}
	defer unix.Close(linksFD)
	names, err := readDirNames(linksFD, s.linksPath(""))
	if err != nil {
		return 0, err
	}
	var actual, unshared int64
	for _, n := range names {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		var st unix.Stat_t
		if err := fstatat(linksFD, n, &st); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return 0, &os.PathError{Op: "stat", Path: s.linksPath(n), Err: err}
		}
		if st.Nlink != 1 {
			actual += st.Size
			unshared += int64(st.Nlink-1) * st.Size
			continue
		}
		if err := unix.Unlinkat(linksFD, n, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return 0, &os.PathError{Op: "deleting", Path: s.linksPath(n), Err: err}
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(linksFD, &st); err != nil {
		return 0, &os.PathError{Op: "stat", Path: s.linksPath(""), Err: err}
	}
	return unshared - actual - st.Blocks*512, nil
}
