package local

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"cairn/internal/nar"
	"cairn/internal/nixhash"
	"cairn/internal/store"
	"cairn/internal/storepath"
)

// Verification compares the database with the store directory, the way
// `nix-store --verify [--check-contents] [--repair]` of Nix 2.8 does:
//
//	existence  every valid path has an entry in the real store dir. A path
//	           that disappeared is removed from the database when none of its
//	           referrers stays valid (Nix does this even without repair);
//	           otherwise it is an error, which repair hands to VerifyOptions.RepairPath.
//	garbage    an entry of the store dir named like a store path but not valid
//	           is reported as a warning (Nix 2.8 says nothing; GC removes it).
//	links      with CheckContents, every .links entry must hash to its name;
//	           repair unlinks one that does not.
//	contents   with CheckContents, every valid path's NAR must hash to its
//	           registered narHash; a missing hash or size (old stores) is
//	           filled in. A modified path is an error; repair hands it to RepairPath.
//
// Messages are Nix's, written to VerifyOptions.Log.

// VerifyOptions adjusts Verify.
type VerifyOptions struct {
	// CheckContents rehashes every valid path and every .links entry.
	CheckContents bool
	// Repair fixes what can be fixed: corrupt links are removed, and missing or
	// modified paths are passed to RepairPath.
	Repair bool
	// RepairPath restores the files of a valid path (from a substituter, or by
	// rebuilding). Nil means no path can be repaired, as a Nix without
	// substituters or derivations.
	RepairPath func(ctx context.Context, p storepath.StorePath) error
	// Log receives Nix's progress and error messages, one per line; nil discards them.
	Log io.Writer
}

// ModifiedPath is a valid path whose contents no longer hash to its narHash.
type ModifiedPath struct {
	Path      storepath.StorePath
	Want, Got nixhash.Hash
	Repaired  bool
}

// VerifyResult is what Verify found. Errors says whether problems remain.
type VerifyResult struct {
	// Invalidated are the paths that disappeared and were removed from the database.
	Invalidated []storepath.StorePath
	// Missing are paths that disappeared but stay valid because valid paths
	// refer to them, and Repaired says which RepairPath restored.
	Missing  []storepath.StorePath
	Repaired []storepath.StorePath
	// Modified are valid paths whose contents changed.
	Modified []ModifiedPath
	// Unregistered are store dir entries named like store paths that are not
	// valid: garbage, not an error.
	Unregistered []string
	// CorruptLinks are .links entries whose contents do not match their names.
	CorruptLinks []string
	// Updated are the paths whose missing hash or size was filled in.
	Updated []storepath.StorePath
	// Errors is true when a problem remains (nix-store --verify then exits 1).
	Errors bool
}

// checkWorkers bounds how many paths are hashed at once.
const checkWorkers = 4

// Verify checks the store against its database (see the comment above). It
// holds the GC lock shared meanwhile, so no garbage collector (Cairn's or
// Nix's) deletes paths under it.
func (s *Store) Verify(ctx context.Context, opts VerifyOptions) (*VerifyResult, error) {
	logw := opts.Log
	if logw == nil {
		logw = io.Discard
	}
	logf := func(format string, args ...any) { fmt.Fprintf(logw, format+"\n", args...) }
	res := &VerifyResult{}

	logf("reading the Nix store...")
	gc, err := s.lockGC(ctx, unix.LOCK_SH)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	defer gc.Close()
	names, err := readDirNames(s.realFD, s.cfg.RealStoreDir)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	onDisk := make(map[string]bool, len(names))
	for _, n := range names {
		onDisk[n] = true
	}

	logf("checking path existence...")
	all, err := s.QueryAllValidPaths(ctx)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	v := &verifier{s: s, opts: opts, res: res, logf: logf, onDisk: onDisk,
		done: map[storepath.StorePath]bool{}, present: map[storepath.StorePath]bool{}}
	for _, p := range all {
		if err := v.verifyPath(ctx, p); err != nil {
			return nil, fmt.Errorf("verify: %w", err)
		}
	}

	valid := make(map[string]bool, len(all))
	for _, p := range all {
		valid[p.Base()] = true
	}
	for _, n := range names {
		if valid[n] || n == TempDirName || strings.HasPrefix(n, ".") || strings.HasSuffix(n, ".lock") {
			continue
		}
		if _, err := s.dir.FromBase(n); err != nil {
			continue // not a store path: a temporary or a lock of someone else's
		}
		if ok, err := s.IsValidPath(ctx, mustBase(s.dir, n)); err == nil && !ok {
			res.Unregistered = append(res.Unregistered, n)
			logf("warning: path '%s/%s' is in the store but not registered (it is garbage)", s.dir, n)
		}
	}

	if opts.CheckContents {
		logf("checking link hashes...")
		if err := v.checkLinks(ctx); err != nil {
			return nil, fmt.Errorf("verify: %w", err)
		}
		logf("checking store hashes...")
		present := make([]storepath.StorePath, 0, len(v.present))
		for p := range v.present {
			present = append(present, p)
		}
		storepath.SortPaths(present)
		if err := v.checkContents(ctx, present); err != nil {
			return nil, fmt.Errorf("verify: %w", err)
		}
	}
	return res, nil
}

func mustBase(d storepath.StoreDir, base string) storepath.StorePath {
	p, _ := d.FromBase(base)
	return p
}

type verifier struct {
	s       *Store
	opts    VerifyOptions
	res     *VerifyResult
	logf    func(string, ...any)
	onDisk  map[string]bool
	done    map[storepath.StorePath]bool
	present map[storepath.StorePath]bool // valid paths whose files exist
}

// verifyPath checks that p exists. A missing path's referrers are checked
// first: if none of them stays valid, p can be invalidated too.
func (v *verifier) verifyPath(ctx context.Context, p storepath.StorePath) error {
	if v.done[p] {
		return nil
	}
	v.done[p] = true
	if v.onDisk[p.Base()] {
		v.present[p] = true
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	referrers, err := v.s.QueryReferrers(ctx, p)
	if err != nil {
		return err
	}
	canInvalidate := true
	for _, r := range referrers {
		if r == p {
			continue
		}
		if err := v.verifyPath(ctx, r); err != nil {
			return err
		}
		if v.present[r] || slices.Contains(v.res.Missing, r) {
			canInvalidate = false
		}
	}
	if canInvalidate {
		v.logf("path '%s' disappeared, removing from database...", p)
		if err := v.s.invalidateMissing(ctx, p); err != nil {
			return err
		}
		v.res.Invalidated = append(v.res.Invalidated, p)
		return nil
	}
	v.logf("path '%s' disappeared, but it still has valid referrers!", p)
	v.res.Missing = append(v.res.Missing, p)
	if v.opts.Repair {
		if err := v.repair(ctx, p); err != nil {
			v.logf("warning: %v", err)
			v.res.Errors = true
		} else {
			v.res.Repaired = append(v.res.Repaired, p)
		}
		return nil
	}
	v.res.Errors = true
	return nil
}

func (v *verifier) repair(ctx context.Context, p storepath.StorePath) error {
	if v.opts.RepairPath == nil {
		return fmt.Errorf("cannot repair path '%s'", p)
	}
	return v.opts.RepairPath(ctx, p)
}

// invalidateMissing removes p from the database if it is still valid, still
// missing from disk, and no other valid path refers to it. It holds p's lock,
// so a writer putting p in place meanwhile is not undone.
func (s *Store) invalidateMissing(ctx context.Context, p storepath.StorePath) error {
	locks, err := s.lockRealPath(ctx, p)
	if err != nil {
		return err
	}
	defer locks.Unlock(false)
	var st unix.Stat_t
	if err := fstatat(s.realFD, p.Base(), &st); err == nil {
		return nil // back again
	}
	return s.invalidate(ctx, p)
}

// checkLinks rehashes every .links entry; its name is the nix32 sha256 of its NAR.
func (v *verifier) checkLinks(ctx context.Context) error {
	s := v.s
	linksFD, err := openat(s.realFD, linksDirName, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return &os.PathError{Op: "open", Path: s.linksPath(""), Err: err}
	}
	defer unix.Close(linksFD)
	names, err := readDirNames(linksFD, s.linksPath(""))
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, _, err := hashEntry(linksFD, n)
		if errors.Is(err, unix.ENOENT) {
			continue // removed by a garbage collector meanwhile
		}
		if err != nil {
			return fmt.Errorf("hash %s: %w", s.linksPath(n), err)
		}
		got := h.Nix32()
		if got == n {
			continue
		}
		v.logf("link '%s' was modified! expected hash '%s', got '%s'", s.linksPath(n), n, got)
		v.res.CorruptLinks = append(v.res.CorruptLinks, n)
		if !v.opts.Repair {
			v.res.Errors = true
			continue
		}
		if err := unix.Unlinkat(linksFD, n, 0); err != nil {
			return &os.PathError{Op: "removing corrupt link", Path: s.linksPath(n), Err: err}
		}
		v.logf("removed link '%s'", s.linksPath(n))
	}
	return nil
}

// checked is one path's rehash.
type checked struct {
	info    *store.PathInfo
	got     nixhash.Hash
	size    uint64
	err     error
	invalid bool // no longer valid when looked at (deleted meanwhile)
}

// checkContents rehashes the given valid paths, a few at a time, and reports
// in path order.
func (v *verifier) checkContents(ctx context.Context, paths []storepath.StorePath) error {
	s := v.s
	results := make([]checked, len(paths))
	workers := min(checkWorkers, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	next := make(chan int)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				results[i] = s.rehash(ctx, paths[i])
			}
		}()
	}
	for i := range paths {
		if ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	for i, c := range results {
		p := paths[i]
		switch {
		case c.invalid:
			continue
		case c.err != nil:
			if ok, _ := s.IsValidPath(ctx, p); ok {
				v.logf("error: %v", c.err)
			} else {
				v.logf("warning: %v", c.err)
			}
			v.res.Errors = true
			continue
		}
		info := c.info
		if !zeroDigest(info.NarHash) && info.NarHash != c.got {
			v.logf("path '%s' was modified! expected hash '%s', got '%s'", p, info.NarHash, c.got)
			m := ModifiedPath{Path: p, Want: info.NarHash, Got: c.got}
			if v.opts.Repair {
				if err := v.repair(ctx, p); err != nil {
					v.logf("error: %v", err)
					v.res.Errors = true
				} else {
					m.Repaired = true
				}
			} else {
				v.res.Errors = true
			}
			v.res.Modified = append(v.res.Modified, m)
			continue
		}
		update := false
		if zeroDigest(info.NarHash) {
			v.logf("fixing missing hash on '%s'", p)
			info.NarHash = c.got
			update = true
		}
		if info.NarSize == 0 {
			v.logf("updating size field on '%s' to %d", p, c.size)
			info.NarSize = c.size
			update = true
		}
		if update {
			if err := s.updateHashAndSize(ctx, info); err != nil {
				return err
			}
			v.res.Updated = append(v.res.Updated, p)
		}
	}
	return nil
}

// rehash dumps a valid path and hashes its NAR.
func (s *Store) rehash(ctx context.Context, p storepath.StorePath) checked {
	info, err := s.QueryPathInfo(ctx, p)
	if errors.Is(err, store.ErrNotFound) {
		return checked{invalid: true}
	}
	if err != nil {
		return checked{err: err}
	}
	a := info.NarHash.Algorithm()
	if a == 0 {
		a = nixhash.SHA256
	}
	h := nixhash.NewHasher(a)
	if err := dumpPath(ctx, h, s.RealPath(p), info.NarSize); err != nil {
		return checked{info: info, err: fmt.Errorf("checking contents of '%s': %w", p, err)}
	}
	return checked{info: info, got: h.Sum(), size: uint64(h.Size())}
}

// zeroDigest reports whether h is unknown: zero, or Nix's all-zero null hash.
func zeroDigest(h nixhash.Hash) bool {
	if h.IsZero() {
		return true
	}
	for _, b := range h.Bytes() {
		if b != 0 {
			return false
		}
	}
	return true
}

// updateHashAndSize stores a path's rehashed narHash and narSize.
func (s *Store) updateHashAndSize(ctx context.Context, info *store.PathInfo) error {
	return s.writeTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `update ValidPaths set hash = ?, narSize = ? where path = ?`,
			info.NarHash.Format(nixhash.Base16, true), int64(info.NarSize), info.Path.String())
		return err
	})
}

// hashEntry hashes the NAR of one regular file or symlink in dirfd with sha256
// (as Nix names .links entries) and returns its lstat.
func hashEntry(dirfd int, name string) (nixhash.Hash, *unix.Stat_t, error) {
	var st unix.Stat_t
	if err := fstatat(dirfd, name, &st); err != nil {
		return nixhash.Hash{}, nil, err
	}
	h := nixhash.NewHasher(nixhash.SHA256)
	nw := nar.NewWriter(h)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFLNK:
		buf := make([]byte, nar.MaxTargetLen+1)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return nixhash.Hash{}, nil, err
		}
		if err := nw.WriteHeader(&nar.Header{Type: nar.TypeSymlink, LinkTarget: string(buf[:n])}); err != nil {
			return nixhash.Hash{}, nil, err
		}
	case unix.S_IFREG:
		fd, err := openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW)
		if err != nil {
			return nixhash.Hash{}, nil, err
		}
		defer unix.Close(fd)
		if err := unix.Fstat(fd, &st); err != nil {
			return nixhash.Hash{}, nil, err
		}
		if err := nw.WriteHeader(&nar.Header{Type: nar.TypeRegular, Size: st.Size, Executable: st.Mode&unix.S_IXUSR != 0}); err != nil {
			return nixhash.Hash{}, nil, err
		}
		// A pooled buffer and the raw descriptor: optimising calls this for
		// every file of a store.
		bufp := copyBuffers.Get().(*[]byte)
		_, err = io.CopyBuffer(nw, fdFile{fd: fd}, *bufp)
		copyBuffers.Put(bufp)
		if err != nil {
			return nixhash.Hash{}, nil, err
		}
	default:
		return nixhash.Hash{}, nil, fmt.Errorf("%s: not a regular file or symlink", name)
	}
	if err := nw.Close(); err != nil {
		return nixhash.Hash{}, nil, err
	}
	return h.Sum(), &st, nil
}

// readDirNames lists a directory through a descriptor (without "." and ".."),
// sorted. It opens the directory afresh, so the descriptor's offset is not shared.
func readDirNames(dirfd int, disk string) ([]string, error) {
	fd, err := openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: disk, Err: err}
	}
	f := os.NewFile(uintptr(fd), disk)
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	return names, nil
}
