package local

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"cairn/internal/gcroots"
	"cairn/internal/store"
	"cairn/internal/storepath"
)

// DefaultReservedSize is the size of db/reserved, the space Nix keeps so that a
// full disk can still be garbage-collected (gc-reserved-space).
const DefaultReservedSize = 8 << 20

// DefaultBuildUsersGroup is Nix's build-users-group when running as root.
const DefaultBuildUsersGroup = "nixbld"

// StoreDirMode is the mode of the store dir when run as root with build users:
// the build users' group may create entries but not list them (sticky, so they
// cannot remove others' entries either).
const StoreDirMode = os.ModeSticky | 0o735

// Options adjusts Open. The zero value is fsync on, no build users, the default
// reserved space.
type Options struct {
	// NoFsync skips syncing files before they are registered and runs SQLite
	// with synchronous=off (Nix's fsync-metadata = false). A crash may then
	// leave valid paths with missing or partial contents.
	NoFsync bool
	// BuildUsersGroup, when set and running as root, makes the store dir owned by
	// root and this group, mode StoreDirMode. Nix's default is
	// DefaultBuildUsersGroup for root and "" otherwise (see DefaultOptions).
	BuildUsersGroup string
	// ReservedSize is the size of db/reserved; 0 means DefaultReservedSize and a
	// negative value creates none.
	ReservedSize int64
	// AutoOptimise deduplicates the files of every path added or built
	// through .links (Nix's auto-optimise-store; see AutoOptimise).
	AutoOptimise bool
	// NoWAL is use-sqlite-wal = false, which Cairn does not follow: the
	// database stays in WAL mode (its syncing relies on it), with a warning.
	NoWAL bool
	// IgnoredACLs, when not nil, are the extended attributes canonicalisation
	// keeps (ignored-acls), set for the whole process at Open (SetIgnoredACLs).
	IgnoredACLs []string
	// SyncBehind, when not nil, lets Close hand its last sync to another
	// process, so that a command returns once its adds are committed, as
	// nix-store does, rather than once they are on disk (syncbehind.go). It
	// must start a process that runs the round (SyncRound.Run); when it
	// fails, Close syncs itself.
	SyncBehind func(SyncRound) error
	// Warnings receives the store's warnings (a path invalidated at open
	// because a crash left its contents incomplete, a failed sync), one per
	// line; nil means standard error.
	Warnings io.Writer
}

// DefaultOptions returns Nix's defaults for this process: fsync on, and the
// nixbld group when running as root.
func DefaultOptions() Options {
	var o Options
	if os.Geteuid() == 0 {
		o.BuildUsersGroup = DefaultBuildUsersGroup
	}
	return o
}

// Store is a local store: files under the real store dir, metadata in Nix's
// SQLite database under the state dir. It is safe for concurrent use by many
// goroutines and by other processes (Cairn's or Nix's) on the same store.
type Store struct {
	cfg      store.Config
	dir      storepath.StoreDir
	opts     Options
	rdb, wdb *sql.DB
	reads    *preparedReads // rdb with statements prepared once
	// wmu serialises this process's write transactions, so they queue here
	// rather than in SQLite's busy handler.
	wmu     sync.Mutex
	bigLock *os.File // shared flock held while open (exclusive for a sole batch: lock.go)
	// pathMu is held shared by each path lock of this process, exclusively
	// by a sole batch (lock.go).
	pathMu sync.RWMutex
	realFD int      // the real store dir, for *at calls and syncfs
	tmpFD  int      // realStoreDir/TempDirName
	ca     caSchema // whether the realisation tables exist
	umask  uint32   // this process's umask, read once at Open

	// The temporary for adds (temp.go), its slot names and intent files.
	tempMu    sync.Mutex
	temp      *tempDir
	slots     [addPathWorkers]*slotDir // where new slots go, per lane (temp.go)
	gcMark    int64                    // STATE/gc-socket's mtime, last looked at (temp.go)
	gcLooked  time.Time                // when
	orphanFDs []int                    // of temporaries deleted under the store, closed by Close
	tempRoots *gcroots.TempRoots       // holds the temporaries directory's root (temp.go)
	slotSeq   atomic.Uint64
	intents   []*intentFile // free for the next Commit
	intentSeq int
	spares    []*spareLock // spare lock files (lock.go), unlocked and stale
	spareSeq  int
	wstmts    *preparedWrites
	infos     infoCache // QueryPathInfo's cache (infocache.go)

	// syncer makes committed adds durable after they are acknowledged
	// (durable.go); deferred says adds leave their sync to it.
	syncer   *syncer
	gcShared gcShared // this process's shared hold on the GC lock (gc.go)
	deferred atomic.Bool
	tmpfiles tmpfiles // unnamed files (tmpfile.go)
	// What the last check of suspects at open did (suspects.go).
	suspectsChecked, suspectsInvalidated atomic.Int64

	closeOnce sync.Once
	closeErr  error
}

// Interface checks.
var (
	_ store.Store             = (*Store)(nil)
	_ store.PathInfoQuerier   = (*Store)(nil)
	_ store.ValidityQuerier   = (*Store)(nil)
	_ store.ReferrerQuerier   = (*Store)(nil)
	_ store.ClosureQuerier    = (*Store)(nil)
	_ store.DerivationQuerier = (*Store)(nil)
	_ store.HashPartQuerier   = (*Store)(nil)
	_ store.AllPathsQuerier   = (*Store)(nil)
	_ store.NarReader         = (*Store)(nil)
	_ store.NarAdder          = (*Store)(nil)
	_ store.CAAdder           = (*Store)(nil)
)

// Open opens the local store cfg describes, creating its directories and
// database when they are missing (as Nix does), taking the big lock shared, and
// removing the temporaries a crashed writer left behind.
func Open(ctx context.Context, cfg *store.Config, opts Options) (*Store, error) {
	if cfg.Scheme != store.SchemeLocal {
		return nil, fmt.Errorf("open store %s: %w: not a local store", cfg.URL, store.ErrUnsupported)
	}
	if opts.IgnoredACLs != nil {
		SetIgnoredACLs(opts.IgnoredACLs)
	}
	s := &Store{cfg: *cfg, dir: cfg.StoreDir, opts: opts, realFD: -1, tmpFD: -1}
	if err := s.open(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open store %s: %w", cfg.URL, err)
	}
	return s, nil
}

func (s *Store) open(ctx context.Context) error {
	if s.opts.NoWAL {
		s.warnf("warning: 'use-sqlite-wal = false' is not supported; the database of %s stays in WAL mode", s.cfg.URL)
	}
	if err := s.makeLayout(); err != nil {
		return err
	}
	dbDir := filepath.Join(s.cfg.StateDir, "db")
	s.makeReserved(filepath.Join(dbDir, "reserved"))

	// The big lock, shared: Nix takes it exclusive only to migrate the schema.
	f, err := os.OpenFile(filepath.Join(dbDir, "big-lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	s.bigLock = f
	if err := flock(ctx, int(f.Fd()), unix.LOCK_SH); err != nil {
		return fmt.Errorf("lock %s: %w", f.Name(), err)
	}

	schemaPath := filepath.Join(dbDir, "schema")
	cur, err := readSchema(schemaPath)
	if err != nil {
		return err
	}
	switch {
	case cur > SchemaVersion:
		return fmt.Errorf("current Nix store schema is version %d, but I only support %d", cur, SchemaVersion)
	case cur != 0 && cur < SchemaVersion:
		return fmt.Errorf("the Nix store schema is version %d; run a Nix command on it once to upgrade it to %d", cur, SchemaVersion)
	}
	if unix.Access(dbDir, unix.R_OK|unix.W_OK) != nil {
		return fmt.Errorf("Nix database directory '%s' is not writable", dbDir)
	}
	if s.rdb, s.wdb, err = openDB(filepath.Join(dbDir, "db.sqlite"), !s.opts.NoFsync); err != nil {
		return err
	}
	s.reads = newPreparedReads(s.rdb)
	s.wstmts = newPreparedWrites(s.wdb)
	if cur == 0 {
		if err := s.createSchema(ctx); err != nil {
			return err
		}
		if err := writeFileAtomic(schemaPath, []byte(strconv.Itoa(SchemaVersion)), 0o644); err != nil {
			return err
		}
	}

	s.umask = readUmask()

	if s.realFD, err = openat(unix.AT_FDCWD, s.cfg.RealStoreDir, unix.O_RDONLY|unix.O_DIRECTORY); err != nil {
		return &os.PathError{Op: "open", Path: s.cfg.RealStoreDir, Err: err}
	}
	if err := s.openTemp(ctx); err != nil {
		return err
	}
	return s.openDurable(ctx)
}

// warnf writes a warning line.
func (s *Store) warnf(format string, args ...any) {
	fmt.Fprintf(s.warnings(), format+"\n", args...)
}

// warnings is where the store's warnings go.
func (s *Store) warnings() io.Writer {
	if s.opts.Warnings == nil {
		return os.Stderr
	}
	return s.opts.Warnings
}

// createSchema runs the DDL in one write transaction; two processes creating a
// store at once serialise on SQLite's lock and the loser's statements are no-ops.
func (s *Store) createSchema(ctx context.Context) error {
	return s.writeTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, schemaDDL)
		return err
	})
}

func readSchema(path string) (int, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 {
		return 0, fmt.Errorf("'%s' is corrupt", path)
	}
	return n, nil
}

// makeLayout creates the directories Nix's local store has: the store dir and
// its .links, and under the state dir profiles/, gcroots/ (with the profiles
// symlink), the per-user dirs, temproots/, db/, userpool/, daemon-socket/ and
// gc.lock, and the log dir's drvs/ (Nix makes the last few on first use); and fixes the store dir's
// owner and mode when running as root with build users.
func (s *Store) makeLayout() error {
	real, state := s.cfg.RealStoreDir, s.cfg.StateDir
	for _, d := range []string{real, filepath.Join(real, ".links"), filepath.Join(state, "profiles"),
		filepath.Join(state, "temproots"), filepath.Join(state, "db"), filepath.Join(state, "userpool"),
		filepath.Join(state, "daemon-socket"), filepath.Join(s.cfg.LogDir, "drvs")} {
		if err := os.MkdirAll(d, 0o777); err != nil {
			return err
		}
	}
	if f, err := os.OpenFile(filepath.Join(state, "gc.lock"), os.O_RDWR|os.O_CREATE, 0o600); err == nil {
		f.Close()
	}
	gcroots := filepath.Join(state, "gcroots")
	if _, err := os.Lstat(gcroots); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(gcroots, 0o777); err != nil {
			return err
		}
		if err := os.Symlink(filepath.Join(state, "profiles"), filepath.Join(gcroots, "profiles")); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	userName := strconv.Itoa(os.Getuid())
	if u, err := user.Current(); err == nil {
		userName = u.Username
	}
	for _, d := range []string{filepath.Join(state, "profiles/per-user"), filepath.Join(state, "gcroots/per-user")} {
		if err := os.MkdirAll(d, 0o777); err != nil {
			return err
		}
		if err := os.Chmod(d, 0o755); err != nil {
			return fmt.Errorf("could not set permissions on '%s' to 755: %w", d, err)
		}
		ud := filepath.Join(d, userName)
		if err := os.MkdirAll(ud, 0o777); err != nil {
			return err
		}
		if err := os.Chmod(ud, 0o755); err != nil {
			return err
		}
		if err := os.Chown(ud, os.Getuid(), os.Getgid()); err != nil {
			return err
		}
	}
	if os.Getuid() == 0 && s.opts.BuildUsersGroup != "" {
		g, err := user.LookupGroup(s.opts.BuildUsersGroup)
		if err != nil {
			fmt.Fprintf(os.Stderr, "warning: the group '%s' specified in 'build-users-group' does not exist\n", s.opts.BuildUsersGroup)
		} else if gid, err := strconv.Atoi(g.Gid); err == nil {
			var st unix.Stat_t
			if err := unix.Stat(real, &st); err != nil {
				return &os.PathError{Op: "stat", Path: real, Err: err}
			}
			if st.Uid != 0 || int(st.Gid) != gid || st.Mode&0o7777 != uint32(unix.S_ISVTX|0o735) {
				if err := os.Chown(real, 0, gid); err != nil {
					return fmt.Errorf("changing ownership of path '%s': %w", real, err)
				}
				if err := unix.Chmod(real, unix.S_ISVTX|0o735); err != nil {
					return fmt.Errorf("changing permissions on path '%s': %w", real, err)
				}
			}
		}
	}
	return nil
}

// makeReserved keeps db/reserved at its size; failures do not matter.
func (s *Store) makeReserved(path string) {
	size := s.opts.ReservedSize
	if size == 0 {
		size = DefaultReservedSize
	}
	if size < 0 {
		return
	}
	if fi, err := os.Stat(path); err == nil && fi.Size() == size {
		return
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return
	}
	defer f.Close()
	if unix.Fallocate(int(f.Fd()), 0, 0, size) != nil {
		f.Truncate(size)
	}
}

// readUmask returns the process's umask from /proc/self/status (reading it
// with umask(2) would change it for a moment under every other goroutine), or
// 0o777 when it cannot be read, which makes every create fix its mode.
func readUmask() uint32 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0o777
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Umask:"); ok {
			if n, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
				return uint32(n)
			}
		}
	}
	return 0o777
}

// writeFileAtomic writes data to path through a temporary file and a rename.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-")
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(perm)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// Close releases the database and locks. It does not wait for other calls.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		if s.syncer != nil {
			// The last round: a process that exits leaves its adds durable.
			s.closeErr = s.syncer.close()
		}
		if s.rdb != nil {
			s.infos.close()
			s.reads.Close()
			if err := s.rdb.Close(); s.closeErr == nil {
				s.closeErr = err
			}
		}
		if s.wstmts != nil {
			s.wstmts.Close()
		}
		if s.wdb != nil {
			if err := s.wdb.Close(); s.closeErr == nil {
				s.closeErr = err
			}
		}
		if s.realFD >= 0 {
			unix.Close(s.realFD)
		}
		s.tempMu.Lock()
		for _, f := range s.intents {
			unix.Close(f.fd)
		}
		s.intents = nil
		for _, sp := range s.spares {
			unix.Close(sp.fd)
		}
		s.spares = nil
		for lane, d := range s.slots {
			if d != nil {
				unix.Close(d.fd)
				s.slots[lane] = nil
			}
		}
		if s.temp != nil {
			s.temp.remove()
			s.temp = nil
		}
		for _, fd := range s.orphanFDs {
			unix.Close(fd)
		}
		s.orphanFDs = nil
		s.tempMu.Unlock()
		if s.tempRoots != nil {
			s.tempRoots.Close()
		}
		if s.tmpFD >= 0 {
			unix.Close(s.tmpFD)
		}
		if s.bigLock != nil {
			s.bigLock.Close()
		}
	})
	return s.closeErr
}

// StoreDir returns the logical store dir.
func (s *Store) StoreDir() storepath.StoreDir { return s.dir }

// Config returns the configuration the store was opened with.
func (s *Store) Config() *store.Config { c := s.cfg; return &c }

// RealStoreDir returns where the store's files are on disk.
func (s *Store) RealStoreDir() string { return s.cfg.RealStoreDir }

// StateDir returns the state directory (db/, gcroots/, profiles/, …).
func (s *Store) StateDir() string { return s.cfg.StateDir }

// LogDir returns the build log directory.
func (s *Store) LogDir() string { return s.cfg.LogDir }

// RealPath returns where p's files are on disk.
func (s *Store) RealPath(p storepath.StorePath) string {
	return s.cfg.RealStoreDir + "/" + p.Base()
}

// writeTx runs f in a write transaction (BEGIN IMMEDIATE) on the write
// connection, retrying the whole transaction while the database is busy.
func (s *Store) writeTx(ctx context.Context, f func(tx *sql.Tx) error) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.wstmts.prepare(ctx)
	return retryBusy(ctx, func() error {
		tx, err := s.wdb.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if err := f(tx); err != nil {
			tx.Rollback()
			return err
		}
		return tx.Commit()
	})
}
