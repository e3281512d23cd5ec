package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"cairn/internal/store"
	"cairn/internal/storepath"
)

// What the garbage collector (package gc) needs from the local store, and how
// adds stay safe while it runs.
//
// The collector holds STATE/gc.lock exclusively from before it reads the
// roots until it has deleted the last path. A path reaches the store dir
// only after one of these, so the collector either sees it as a root or
// cannot be running:
//
//   - a temporary root: Commit first calls the store.TempRooter the context
//     carries (store.WithTempRooter; the daemon gives each connection one),
//     which records the path in the connection's temp roots file and, while
//     a collector runs, also sends it to the collector's socket and waits for
//     its answer (Nix's addTempRoot);
//   - the shared GC lock (HoldGC), held by Commit from before it locks the
//     paths until the transaction is over when the context carries no
//     TempRooter, and by a build from before it locks its outputs until they
//     are registered.
//
// Either way the temp root or the lock is taken before the path's lock file
// appears in the store dir, so the collector never deletes a lock file in use
// either (it matches temp roots by hash part, as Nix does).

// HoldGC takes the GC lock shared for the caller, waiting while a collector
// runs, and returns what releases it. Holders in one process share one open
// file (flock(2) locks belong to the open file, so each holder cannot have
// its own without as many descriptors); the first takes the lock and the last
// releases it.
func (s *Store) HoldGC(ctx context.Context) (release func(), err error) {
	g := &s.gcShared
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.n == 0 {
		f, err := s.lockGC(ctx, unix.LOCK_SH)
		if err != nil {
			return nil, err
		}
		g.f = f
	}
	g.n++
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			if g.n--; g.n == 0 {
				g.f.Close()
				g.f = nil
			}
		})
	}, nil
}

// gcShared is the store's shared hold on the GC lock (HoldGC).
type gcShared struct {
	mu sync.Mutex
	n  int
	f  *os.File
}

// protectAdd makes the paths of a commit safe from a collector (see above):
// temp roots through the context's TempRooter, or the shared GC lock.
func (s *Store) protectAdd(ctx context.Context, paths []storepath.StorePath) (release func(), err error) {
	if tr := store.TempRooterFrom(ctx); tr != nil {
		for _, p := range paths {
			if err := tr.AddTempRoot(ctx, p); err != nil {
				return nil, err
			}
		}
		return func() {}, nil
	}
	return s.HoldGC(ctx)
}

// LockGC takes the GC lock exclusively, as a collector does, waiting until ctx
// is done. waiting is called once if another process holds it. Closing the
// file releases it.
func (s *Store) LockGC(ctx context.Context, waiting func()) (*os.File, error) {
	path := s.cfg.StateDir + "/" + gcLockName
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err == nil {
		return f, nil
	}
	if waiting != nil {
		waiting()
	}
	if err := flock(ctx, int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}

// GCGraph is every valid path with the edges the collector follows, read in
// three queries. Paths are numbered by their position in Paths.
type GCGraph struct {
	Paths []storepath.StorePath
	Index map[storepath.StorePath]int32
	// Refs[i] are the paths i refers to (without i itself).
	Refs [][]int32
	// Deriver[i] is i's deriver when that is a valid path, else -1.
	Deriver []int32
	// Outputs[i] are the valid outputs DerivationOutputs lists for i.
	Outputs [][]int32
}

// LoadGCGraph reads the whole graph of valid paths.
func (s *Store) LoadGCGraph(ctx context.Context) (*GCGraph, error) {
	g := &GCGraph{Index: map[storepath.StorePath]int32{}}
	byID := map[int64]int32{}
	derivers := map[int32]string{}
	rows, err := s.rdb.QueryContext(ctx, `select id, path, deriver from ValidPaths`)
	if err != nil {
		return nil, fmt.Errorf("load graph: %w", err)
	}
	for rows.Next() {
		var id int64
		var path string
		var deriver *string
		if err := rows.Scan(&id, &path, &deriver); err != nil {
			rows.Close()
			return nil, fmt.Errorf("load graph: %w", err)
		}
		p, err := s.dir.Parse(path)
		if err != nil {
			continue // not ours to judge; never collected either
		}
		i := int32(len(g.Paths))
		g.Paths = append(g.Paths, p)
		g.Index[p] = i
		byID[id] = i
		if deriver != nil && *deriver != "" {
			derivers[i] = *deriver
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load graph: %w", err)
	}
	n := len(g.Paths)
	g.Refs = make([][]int32, n)
	g.Outputs = make([][]int32, n)
	g.Deriver = make([]int32, n)
	for i := range g.Deriver {
		g.Deriver[i] = -1
	}
	for i, d := range derivers {
		if p, err := s.dir.Parse(d); err == nil {
			if j, ok := g.Index[p]; ok {
				g.Deriver[i] = j
			}
		}
	}
	rows, err = s.rdb.QueryContext(ctx, `select referrer, reference from Refs where referrer != reference`)
	if err != nil {
		return nil, fmt.Errorf("load graph: %w", err)
	}
	for rows.Next() {
		var from, to int64
		if err := rows.Scan(&from, &to); err != nil {
			rows.Close()
			return nil, fmt.Errorf("load graph: %w", err)
		}
		i, ok1 := byID[from]
		j, ok2 := byID[to]
		if ok1 && ok2 {
			g.Refs[i] = append(g.Refs[i], j)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load graph: %w", err)
	}
	rows, err = s.rdb.QueryContext(ctx, `select drv, path from DerivationOutputs`)
	if err != nil {
		return nil, fmt.Errorf("load graph: %w", err)
	}
	for rows.Next() {
		var drv int64
		var path string
		if err := rows.Scan(&drv, &path); err != nil {
			rows.Close()
			return nil, fmt.Errorf("load graph: %w", err)
		}
		i, ok := byID[drv]
		if !ok {
			continue
		}
		if p, err := s.dir.Parse(path); err == nil {
			if j, ok := g.Index[p]; ok {
				g.Outputs[i] = append(g.Outputs[i], j)
			}
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load graph: %w", err)
	}
	return g, nil
}

// A Sweeper deletes paths for a collector that holds the GC lock (LockGC): one
// temporary serves every deletion. Not safe for concurrent use.
type Sweeper struct {
	s *Store
	t *tempDir
}

// NewSweeper returns a Sweeper; Close it when done.
func (s *Store) NewSweeper() *Sweeper { return &Sweeper{s: s} }

// Close removes the sweeper's temporary.
func (w *Sweeper) Close() error { return w.t.remove() }

func (w *Sweeper) temp() (*tempDir, error) {
	if w.t == nil {
		t, err := w.s.newTemp()
		if err != nil {
			return nil, err
		}
		w.t = t
	}
	return w.t, nil
}

// DeleteValid deletes the valid paths ps, referrers before what they refer
// to, as Delete does (invalidated in one transaction that checks that no
// valid path refers to each, then removed). A path to which a valid path
// still refers (ErrPathInUse) is left as it is. Freed counts bytes as Nix
// does.
func (w *Sweeper) DeleteValid(ctx context.Context, ps []storepath.StorePath) ([]Deletion, error) {
	t, err := w.temp()
	if err != nil {
		return nil, err
	}
	return w.s.deleteBatch(ctx, ps, true, t, true)
}

// DeleteEntry removes the store dir entry name, which is not a valid path (a
// leftover, a stale lock file, a temporary of a crashed writer), without
// looking at locks, as Nix's collector does. The names of Cairn's own
// temporaries and .links are refused.
func (w *Sweeper) DeleteEntry(ctx context.Context, name string) (uint64, error) {
	if name == "" || name == "." || name == ".." || name == linksDirName || name == TempDirName || name == legacyTempDirName ||
		len(name) > 4096 || containsSlash(name) {
		return 0, fmt.Errorf("delete %s: %w: not a store entry", name, store.ErrInvalid)
	}
	t, err := w.temp()
	if err != nil {
		return 0, err
	}
	defer w.s.retireSlotDir() // as deleteBatch does
	if err := unix.Renameat(w.s.realFD, name, t.fd, tempContent); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, nil
		}
		if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
			// A directory whose ".." cannot be rewritten: delete in place.
			var freed uint64
			err := removeCounting(w.s.realFD, name, &freed)
			return freed, err
		}
		return 0, &os.PathError{Op: "move out of the store", Path: w.s.cfg.RealStoreDir + "/" + name, Err: err}
	}
	var freed uint64
	err = removeCounting(t.fd, tempContent, &freed)
	return freed, err
}

func containsSlash(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '/' || s[i] == 0 {
			return true
		}
	}
	return false
}

// StoreDirEntries lists the names in the real store dir, other than .links
// and Cairn's temporaries, in the directory's own order (Nix's collector
// visits them so, which decides what --max-freed deletes).
func (s *Store) StoreDirEntries() ([]string, error) {
	fd, err := openat(s.realFD, ".", unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: s.cfg.RealStoreDir, Err: err}
	}
	f := os.NewFile(uintptr(fd), s.cfg.RealStoreDir)
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	out := names[:0]
	for _, n := range names {
		if n != linksDirName && n != TempDirName && n != legacyTempDirName {
			out = append(out, n)
		}
	}
	return out, nil
}

// RemoveUnusedLinks removes the .links entries nothing uses any more and
// returns what hard linking still saves (Nix's figure; may be negative).
func (s *Store) RemoveUnusedLinks(ctx context.Context) (int64, error) {
	return s.deleteUnusedLinks(ctx)
}

// RemoveReserved deletes STATE/db/reserved, the space Nix keeps for a
// collector on a full disk (it is made again on the next open).
func (s *Store) RemoveReserved() {
	os.Remove(s.cfg.StateDir + "/db/reserved")
}
