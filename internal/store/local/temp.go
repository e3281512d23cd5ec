package local

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"cairn/internal/gcroots"
	"cairn/internal/nixbase32"
	"cairn/internal/storepath"
)

// Temporaries. Every path being added is first unpacked at
//
//	<real store dir>/<TempDirName>/add-<random>/s-<random>/<n>
//
// (one add-<random> per open Store, made on first use and kept until Close; n
// counts the paths it has handed out) and renamed into the store dir once it
// is complete, checked and canonical. Next to the slots live the intent files
// (intent.go). The add-<random> directory is flock'ed by its writer for as long
// as it is in use; when a store is opened, every entry of .cairn-tmp that
// nobody holds a lock on is a crashed writer's leftover and is removed. Keeping
// them in one directory makes that cleanup cost nothing on a large store; being
// on the same file system as the store makes the final rename atomic. One
// directory per process rather than per batch spares every add a mkdir, an
// rmdir and a lock (on ext4 without a journal, every inode freed also slows
// the next minute's creates in its block group).
//
// The temporaries directory is named like a store path and every open Store
// holds a temporary root on it, as Nix does for its own temporaries in the
// store (createTempDirInStore): Nix 2.8's collector deletes every entry of
// the store dir that is not a store path or is one nobody roots, whoever is
// using it. Once no process holds the root, a collection removes it.
const (
	// TempDirName is the directory of temporaries inside the real store dir:
	// the hash part is the first 20 bytes of SHA-256("cairn-tmp") in
	// nixbase32, so no store path of another name can share it.
	TempDirName = "hnjxm7zb31vzbhp0qgn8sbc1m9fsgj9b-cairn-tmp"
	// legacyTempDirName is where stores made before kept their temporaries;
	// Open removes it once nobody uses it.
	legacyTempDirName = ".cairn-tmp"
	// tempPrefix starts the name of each temporary.
	tempPrefix = "add-"
	// tempContent is the entry name to use in a temporary that holds one
	// thing (code outside a Batch, e.g. moving a path out before deleting it).
	tempContent = "x"
)

// openTemp roots, creates and opens the temporaries directory and removes
// stale entries.
func (s *Store) openTemp(ctx context.Context) error {
	if err := s.rootTemp(ctx); err != nil {
		return err
	}
	if err := unix.Mkdirat(s.realFD, TempDirName, 0o700); err == nil {
		// Recovery after a power loss finds intents only under a durable name.
		s.fsyncDir(s.realFD)
	} else if !errors.Is(err, unix.EEXIST) {
		return &os.PathError{Op: "mkdir", Path: s.cfg.RealStoreDir + "/" + TempDirName, Err: err}
	}
	fd, err := openat(s.realFD, TempDirName, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW)
	if err != nil {
		return &os.PathError{Op: "open", Path: s.cfg.RealStoreDir + "/" + TempDirName, Err: err}
	}
	s.tmpFD = fd
	// Ask ext4 to spread the directories made here over the block groups
	// (Orlov's "top directory" hint, chattr +T), as it does for home
	// directories: a process's temporary then lands in a group with free
	// inodes rather than next to the store dir, where a garbage collection
	// may just have freed thousands (ext4 skips recently freed inodes one by
	// one when it allocates). Other file systems refuse; that is fine.
	setTopDir(fd)
	if err := s.cleanTemps(s.tmpFD, TempDirName); err != nil {
		return err
	}
	// A store made before the temporaries were named like a store path.
	if fd, err := openat(s.realFD, legacyTempDirName, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW); err == nil {
		s.cleanTemps(fd, legacyTempDirName)
		unix.Close(fd)
		unix.Unlinkat(s.realFD, legacyTempDirName, unix.AT_REMOVEDIR) // fails while in use
	}
	return nil
}

// IsTemporaries reports whether p names the temporaries directory. Listings
// of roots leave its temporary root out: it keeps no store path alive.
func IsTemporaries(p storepath.StorePath) bool { return p.Base() == TempDirName }

// rootTemp makes the temporaries directory a temporary root of this store
// for as long as it is open (see TempDirName), before it is made or used:
// a collector that is running learns of it through its socket.
func (s *Store) rootTemp(ctx context.Context) error {
	p, err := s.dir.FromBase(TempDirName)
	if err != nil {
		return err
	}
	roots, err := gcroots.New(s.cfg.StateDir, s.cfg.StoreDir, s.cfg.RealStoreDir).OpenTemp()
	if err != nil {
		return err
	}
	if err := roots.Add(ctx, p); err != nil {
		roots.Close()
		return err
	}
	s.tempRoots = roots
	return nil
}

// fsTopDirFlag is FS_TOPDIR_FL of linux/fs.h.
const fsTopDirFlag = 0x20000

// setTopDir sets FS_TOPDIR_FL on the directory open at fd, if it can.
func setTopDir(fd int) {
	flags, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err != nil || flags&fsTopDirFlag != 0 {
		return
	}
	unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(flags|fsTopDirFlag))
}

// addTemp returns the store's temporary for adds, made on first use and
// again once a collection elsewhere deleted it.
func (s *Store) addTemp() (*tempDir, error) {
	var gone []*slotDir
	var in *tempDir
	defer func() { // with tempMu released
		for _, d := range gone {
			if in != nil {
				d.remove(in)
			} else {
				unix.Close(d.fd)
			}
		}
	}()
	s.tempMu.Lock()
	defer s.tempMu.Unlock()
	// An fstat per call: an add that finds its temporary deleted fails,
	// and the next must not.
	if s.collectedElsewhere() || s.temp != nil && deleted(s.temp.fd) {
		gone, in = s.retireLocked(), s.temp
		if s.temp != nil && deleted(s.temp.fd) {
			if err := s.abandonTemp(); err != nil {
				return nil, err
			}
		}
	}
	if s.temp == nil {
		t, err := s.newTemp()
		if err != nil {
			return nil, err
		}
		s.fsyncDir(s.tmpFD)
		s.temp = t
	}
	return s.temp, nil
}

// deleted reports whether the directory open at fd has no name any more.
func deleted(fd int) bool {
	var st unix.Stat_t
	return unix.Fstat(fd, &st) == nil && st.Nlink == 0
}

// abandonTemp leaves the deleted temporary behind: its pooled intent files
// and spare lock files are closed (those in use are when they come back, see
// releaseIntent and putSpare), and the temporaries directory is made again if
// it went with it. The old descriptors stay open until Close, since adds in
// flight may still use them (and fail: their slots are gone). Called with
// tempMu held; the next addTemp makes a new temporary.
func (s *Store) abandonTemp() error {
	for _, f := range s.intents {
		unix.Close(f.fd)
	}
	s.intents = nil
	for _, sp := range s.spares {
		unix.Close(sp.fd)
	}
	s.spares = nil
	s.orphanFDs = append(s.orphanFDs, s.temp.fd)
	s.temp = nil
	if !deleted(s.tmpFD) {
		return nil
	}
	if err := unix.Mkdirat(s.realFD, TempDirName, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
		return &os.PathError{Op: "mkdir", Path: s.cfg.RealStoreDir + "/" + TempDirName, Err: err}
	}
	fd, err := openat(s.realFD, TempDirName, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW)
	if err != nil {
		return &os.PathError{Op: "open", Path: s.cfg.RealStoreDir + "/" + TempDirName, Err: err}
	}
	setTopDir(fd)
	s.orphanFDs = append(s.orphanFDs, s.tmpFD)
	s.tmpFD = fd
	return nil
}

// fsyncDir makes the entries of the directory open at fd durable, unless
// the store runs without fsync or leaves it to the syncer. It is for names
// made once per store or process (the temporaries and intent files): an
// error only costs the recovery after a power loss its record of unfinished
// moves (and a batch that syncs before it registers syncs these names too,
// see Batch.syncSlots).
func (s *Store) fsyncDir(fd int) {
	if !s.opts.NoFsync && !s.deferred.Load() {
		unix.Fsync(fd)
	}
}

// newSlotName returns a name no slot of this process has had.
func (s *Store) newSlotName() string {
	return strconv.FormatUint(s.slotSeq.Add(1), 10)
}

// cleanTemps removes every temporary no live writer holds from the
// temporaries directory open at dirfd.
func (s *Store) cleanTemps(dirfd int, dirName string) error {
	dup, err := unix.Dup(dirfd)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(dup), s.cfg.RealStoreDir+"/"+dirName)
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return err
	}
	for _, n := range names {
		fd, err := openat(dirfd, n, unix.O_RDONLY|unix.O_NOFOLLOW)
		if err != nil {
			continue
		}
		if unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB) == nil {
			s.recoverTemp(fd) // intent.go
			removeTree(dirfd, n)
		}
		unix.Close(fd)
	}
	return nil
}

// tempDir is one locked temporary.
type tempDir struct {
	s      *Store
	name   string // add-<random>
	fd     int    // the directory, flock'ed
	parent int    // the temporaries directory it is in
	// inherits says entries made inside may get extended attributes from
	// it (a default ACL that could not be removed), so what is restored
	// there must be canonicalised by a walk afterwards.
	inherits bool
}

// newTemp creates a fresh locked temporary directory.
func (s *Store) newTemp() (*tempDir, error) {
	for {
		var rnd [10]byte
		rand.Read(rnd[:])
		name := tempPrefix + nixbase32.EncodeToString(rnd[:])
		if err := unix.Mkdirat(s.tmpFD, name, 0o700); err != nil {
			if errors.Is(err, unix.EEXIST) {
				continue
			}
			return nil, &os.PathError{Op: "create temporary", Path: s.tempPath(name), Err: err}
		}
		fd, err := openat(s.tmpFD, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW)
		if errors.Is(err, unix.ENOENT) {
			continue // removed by a store being opened elsewhere
		}
		if err != nil {
			return nil, &os.PathError{Op: "open temporary", Path: s.tempPath(name), Err: err}
		}
		// A store being opened elsewhere may take and delete it before we lock
		// it: then the lock fails, or the directory is gone (no links), and we
		// try another name.
		var st unix.Stat_t
		if unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB) != nil || unix.Fstat(fd, &st) != nil || st.Nlink == 0 {
			unix.Close(fd)
			continue
		}
		// Its slot directories are spread over the block groups too (slotDir).
		setTopDir(fd)
		// Drop a default ACL the store dir may pass down, so nothing restored
		// below inherits one.
		err = unix.Fremovexattr(fd, "system.posix_acl_default")
		inherits := err != nil && !errors.Is(err, unix.ENODATA) && !errors.Is(err, unix.ENOTSUP)
		return &tempDir{s: s, name: name, fd: fd, parent: s.tmpFD, inherits: inherits}, nil
	}
}

func (s *Store) tempPath(name string) string {
	return s.cfg.RealStoreDir + "/" + TempDirName + "/" + name
}

// remove deletes the temporary and everything in it, and releases its lock.
func (t *tempDir) remove() error {
	if t == nil || t.fd < 0 {
		return nil
	}
	err := removeTree(t.parent, t.name)
	unix.Close(t.fd)
	t.fd = -1
	if err != nil {
		return fmt.Errorf("remove temporary %s: %w", t.s.tempPath(t.name), err)
	}
	return nil
}

// Slot directories. The slots that paths are unpacked into live in a
// subdirectory of the add temporary, s-<random>. The temporary is marked a
// top directory (setTopDir), so ext4 picks a block group for each slot
// directory afresh, starting its search at a hash of the name, and the
// inodes of everything unpacked there come from around that group. A later
// garbage collection frees those same inodes, and on ext4 without a journal
// each inode freed in the last minute slows down every allocation in
// its group (the allocator steps over them one by one): adding the Go tree
// right after collecting another took 0.8–4.1 s instead of 0.4 s. So a
// deletion retires the slot directory: later slots go to a new one under a
// new random name (with a fixed name ext4 kept choosing the same group), and
// the old one is removed once its last slot is released.
const slotDirPrefix = "s-"

type slotDir struct {
	name    string
	fd      int
	refs    int  // slots handed out and not yet released
	retired bool // no new slots; remove once refs is 0
}

// Collections run by other processes (`cairn gc`, Nix's collector) free
// inodes too, and this process never sees their deletions. Every collector,
// Nix's and Cairn's, serves STATE/gc-socket/socket while it runs, so the
// directory's modification time changes with each collection: slot
// directories made before it changed are retired as after a deletion here.
// Adds look at it at most once per gcLookEvery (addTemp).
//
// Should the temporaries directory be deleted anyway, with this process's
// temporary, slots, intent files and spare lock files in it (a collector
// that ignores its root, someone's rm), addTemp starts afresh (abandonTemp).
const gcLookEvery = 100 * time.Millisecond

// collectedElsewhere reports whether STATE/gc-socket changed since it was
// last looked at; the first look only records it. Called with tempMu held.
func (s *Store) collectedElsewhere() bool {
	now := time.Now()
	if !s.gcLooked.IsZero() && now.Sub(s.gcLooked) < gcLookEvery {
		return false
	}
	first := s.gcLooked.IsZero()
	s.gcLooked = now
	var mark int64 // 0 while no collector ever ran (no directory)
	var st unix.Stat_t
	if unix.Stat(filepath.Join(s.cfg.StateDir, filepath.Dir(gcroots.GCSocketName)), &st) == nil {
		mark = st.Mtim.Nano()
	}
	changed := mark != s.gcMark && !first
	s.gcMark = mark
	return changed
}

// takeSlotDir returns the current slot directory of lane, made on first
// use, with one more reference. Each of AddPaths' workers has a lane of its
// own: files made at once in one directory wait for its lock.
func (s *Store) takeSlotDir(t *tempDir, lane int) (*slotDir, error) {
	s.tempMu.Lock()
	defer s.tempMu.Unlock()
	if s.slots[lane] == nil {
		// A random name: ext4 starts its search for a group at the name's hash.
		var rnd [5]byte
		rand.Read(rnd[:])
		name := slotDirPrefix + nixbase32.EncodeToString(rnd[:])
		if err := unix.Mkdirat(t.fd, name, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, &os.PathError{Op: "create temporary", Path: s.tempPath(t.name) + "/" + name, Err: err}
		}
		fd, err := openat(t.fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW)
		if err != nil {
			return nil, &os.PathError{Op: "open temporary", Path: s.tempPath(t.name) + "/" + name, Err: err}
		}
		s.slots[lane] = &slotDir{name: name, fd: fd}
	}
	s.slots[lane].refs++
	return s.slots[lane], nil
}

// retireSlotDir makes the next slot of every lane start a new slot directory
// (see slotDir).
func (s *Store) retireSlotDir() {
	s.tempMu.Lock()
	gone := s.retireLocked()
	t := s.temp
	s.tempMu.Unlock()
	for _, d := range gone {
		d.remove(t)
	}
}

// retireLocked retires every lane's slot directory and returns those no slot
// holds, for the caller to remove once tempMu is released.
func (s *Store) retireLocked() []*slotDir {
	var gone []*slotDir
	for lane, d := range s.slots {
		if d == nil {
			continue
		}
		s.slots[lane] = nil
		d.retired = true
		if d.refs == 0 {
			gone = append(gone, d)
		}
	}
	return gone
}

// release gives the slot's reference to its directory back; the last one of
// a retired directory removes it.
func (t *slot) release() {
	d := t.dir
	if d == nil {
		return
	}
	t.dir = nil
	s := t.t.s
	s.tempMu.Lock()
	d.refs--
	done := d.retired && d.refs == 0
	s.tempMu.Unlock()
	if done {
		d.remove(t.t)
	}
}

// remove deletes the slot directory from the temporary t (what a failed
// slot left in it too) and closes it.
func (d *slotDir) remove(t *tempDir) {
	removeTree(t.fd, d.name)
	unix.Close(d.fd)
}

// TempLeftovers lists what is in the temporaries of the store whose real
// store dir is given beyond what writers keep for reuse (intent files, spare
// lock files, slot directories): the slots of adds in progress, or what a
// failed add left behind. Names are relative to TempDirName.
func TempLeftovers(realStoreDir string) ([]string, error) {
	dir := realStoreDir + "/" + TempDirName
	tops, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var left []string
	for _, top := range tops {
		if !top.IsDir() || !strings.HasPrefix(top.Name(), tempPrefix) {
			left = append(left, top.Name())
			continue
		}
		inner, err := os.ReadDir(dir + "/" + top.Name())
		if err != nil {
			return nil, err
		}
		for _, e := range inner {
			name := top.Name() + "/" + e.Name()
			switch {
			case strings.HasPrefix(e.Name(), intentName+"-") || strings.HasPrefix(e.Name(), sparePrefix):
			case e.IsDir() && strings.HasPrefix(e.Name(), slotDirPrefix):
				slots, err := os.ReadDir(dir + "/" + name)
				if err != nil {
					return nil, err
				}
				for _, sl := range slots {
					left = append(left, name+"/"+sl.Name())
				}
			default:
				left = append(left, name)
			}
		}
	}
	return left, nil
}
