package local

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Durability. With fsync on (Nix's fsync-metadata), Commit makes a batch's
// files durable before any of them is moved into place, and the moves durable
// before the transaction that registers them commits:
//
//	unpack into slots → sync the slots' files, directories and the intent
//	  → lock, rename into the store dir → fsync the store dir and each moved
//	  root directory → commit
//
// so a registered path's files are on disk whatever crashes, and the intent
// that lets the next Open undo unregistered moves is on disk before the moves.
// The first step costs one disk cache flush whichever way it is done; what
// differs is what else gets written:
//
//   - fsync of each entry (in parallel, so the flushes coalesce) writes only
//     the batch's own files, but one flush per file when they are many;
//   - syncfs writes the batch in one go, but also whatever else on the file
//     system is waiting to be written (other programs' files, the inputs a
//     benchmark just made), and it is the only way to make a symlink's inode
//     durable.
//
// So a batch with at most fsyncEachMax entries and no symlinks fsyncs each of
// them, and a bigger one uses syncfs unless more than otherDirtyPerEntry of
// other data per entry is waiting to be written (then, without symlinks,
// fsync of each entry again). Measured on a VM's ext4 (docs/benchmarks.md):
// with nothing else dirty, syncfs makes the 12,800 entries of the Go source
// tree durable in 0.2 s and fsyncs of each entry take 0.5–0.6 s with 64 in
// flight (1.0 s with 16); with 1 GiB of other data dirty, syncfs takes
// 0.45–0.7 s, while each fsync waits behind that writeback (30–35 ms, 16 at a
// time): about what writing 1 MiB costs, hence the rule per entry. (A fixed
// 1 GiB of other data made the tree's 12,800 entries take 12,800 fsyncs
// behind a benchmark's freshly written inputs, seconds of flushes that slowed
// every add after it.)
const (
	fsyncEachMax       = 64
	otherDirtyPerEntry = 1 << 20
	// fsyncWorkers and fsyncWorkersBig bound the fsyncs in flight at once,
	// for a small batch and for a big one.
	fsyncWorkers    = 16
	fsyncWorkersBig = 64
)

// syncSlots makes the batch's unpacked paths and its intent durable.
func (b *Batch) syncSlots(intent *intentFile) error {
	var entries int
	var size int64
	symlinks := false
	for _, it := range b.items {
		if it.temp == nil {
			continue
		}
		entries += it.stats.entries
		size += it.stats.bytes
		symlinks = symlinks || it.stats.symlinks
	}
	if entries == 0 {
		return nil
	}
	each := !symlinks && (entries <= fsyncEachMax || dirtyBytes()-size > int64(entries)*otherDirtyPerEntry)
	if !each {
		if err := unix.Syncfs(b.s.realFD); err != nil {
			return fmt.Errorf("sync %s: %w", b.s.cfg.RealStoreDir, err)
		}
		return nil
	}
	fs := newFsyncer()
	if entries > fsyncEachMax {
		fs.workers = fsyncWorkersBig
	}
	if intent != nil {
		fs.addData(intent.fd, intent.name)
	}
	if b.s.deferred.Load() {
		// The temporaries' names were left to the syncer (fsyncDir).
		t, err := b.s.addTemp()
		if err != nil {
			fs.wait()
			return err
		}
		fs.add(t.fd, b.s.tempPath(t.name), false)
		fs.add(t.parent, b.s.tempPath(""), false)
	}
	var err error
	for _, it := range b.items {
		if it.temp == nil {
			continue
		}
		if err = it.temp.link(); err != nil {
			break
		}
		if err = fs.tree(it.temp.dirfd, it.temp.name, it.temp.contentPath()); err != nil {
			break
		}
	}
	if ferr := fs.wait(); err == nil {
		err = ferr
	}
	return err
}

// syncPlaced makes the moves into the store dir durable, and the final mode
// of each moved root directory.
func (b *Batch) syncPlaced(moved []*pending) error {
	fs := newFsyncer()
	fs.add(b.s.realFD, b.s.cfg.RealStoreDir, false)
	for _, it := range moved {
		if !it.stats.rootDir {
			continue
		}
		fd, err := openat(b.s.realFD, it.info.Path.Base(), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW)
		if err != nil {
			fs.wait()
			return &os.PathError{Op: "open", Path: b.s.RealPath(it.info.Path), Err: err}
		}
		fs.add(fd, b.s.RealPath(it.info.Path), true)
	}
	return fs.wait()
}

// fsyncer runs fsyncs on up to workers goroutines. Each blocks its
// thread in the kernel for about one disk flush; running them side by side
// lets the block layer serve many with one flush.
type fsyncer struct {
	workers int // at most this many goroutines
	running int
	jobs    chan fsyncJob
	wg      sync.WaitGroup
	mu      sync.Mutex
	err     error
	// first is held back until a second job comes: a lone fsync runs on
	// the caller's goroutine.
	first   *fsyncJob
	started bool
}

type fsyncJob struct {
	fd       int
	name     string
	close    bool
	datasync bool // fdatasync: the size and block map are unchanged
}

func newFsyncer() *fsyncer { return &fsyncer{workers: fsyncWorkers} }

func (f *fsyncer) add(fd int, name string, close bool) {
	f.addJob(fsyncJob{fd: fd, name: name, close: close})
}

// addData adds an fdatasync of fd.
func (f *fsyncer) addData(fd int, name string) {
	f.addJob(fsyncJob{fd: fd, name: name, datasync: true})
}

func (f *fsyncer) addJob(j fsyncJob) {
	if !f.started {
		if f.first == nil {
			f.first = &j
			return
		}
		f.started = true
		f.jobs = make(chan fsyncJob)
		f.spawn()
		f.jobs <- *f.first
		f.first = nil
	}
	select {
	case f.jobs <- j:
	default:
		// All busy: another worker, up to the limit.
		if f.running < f.workers {
			f.spawn()
		}
		f.jobs <- j
	}
}

// spawn starts a worker.
func (f *fsyncer) spawn() {
	f.running++
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for j := range f.jobs {
			f.run(j)
		}
	}()
}

func (f *fsyncer) run(j fsyncJob) {
	var err error
	for {
		if j.datasync {
			err = unix.Fdatasync(j.fd)
		} else {
			err = unix.Fsync(j.fd)
		}
		if err != unix.EINTR {
			break
		}
	}
	if j.close {
		unix.Close(j.fd)
	}
	if err != nil {
		f.mu.Lock()
		if f.err == nil {
			f.err = &os.PathError{Op: "fsync", Path: j.name, Err: err}
		}
		f.mu.Unlock()
	}
}

// wait returns once every fsync added has run, with the first error.
func (f *fsyncer) wait() error {
	if f.first != nil {
		f.run(*f.first)
		f.first = nil
	}
	if f.started {
		close(f.jobs)
		f.wg.Wait()
		f.started = false
	}
	return f.err
}

// tree adds an fsync of name in dirfd and of everything below it.
func (f *fsyncer) tree(dirfd int, name, disk string) error {
	fd, err := openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW)
	if err != nil {
		return &os.PathError{Op: "open", Path: disk, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return &os.PathError{Op: "stat", Path: disk, Err: err}
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		names, err := readNames(fd, disk)
		if err == nil {
			for _, n := range names {
				if err = f.tree(fd, n, disk+"/"+n); err != nil {
					break
				}
			}
		}
		if err != nil {
			unix.Close(fd)
			return err
		}
	}
	f.add(fd, disk, true)
	return nil
}

// readNames lists the directory open at fd (which stays open).
func readNames(fd int, disk string) ([]string, error) {
	dup, err := unix.Dup(fd)
	if err != nil {
		return nil, &os.PathError{Op: "read directory", Path: disk, Err: err}
	}
	d := os.NewFile(uintptr(dup), disk)
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, &os.PathError{Op: "read directory", Path: disk, Err: err}
	}
	return names, nil
}

// dirtyBytes returns how much data the system has waiting to be written
// (Dirty and Writeback of /proc/meminfo), or 0 if it cannot tell.
func dirtyBytes() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	var total int64
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Bytes()
		for _, key := range [...]string{"Dirty:", "Writeback:"} {
			if v, ok := bytes.CutPrefix(line, []byte(key)); ok {
				f := bytes.Fields(v)
				if len(f) > 0 {
					if n, err := strconv.ParseInt(string(f[0]), 10, 64); err == nil {
						total += n << 10 // kB
					}
				}
			}
		}
	}
	return total
}

// Deferred durability. An add is acknowledged once its rows are committed;
// its files reach the disk shortly after, when the store's syncer runs
// syncfs and records in the marker (marker.go) the highest row id that
// sync covered:
//
//	commit (no sync) → notify ─ delay ─→ N := max(ValidPaths.id)
//	  → lock the marker → syncfs of the store's file system (and the
//	  database's, if another) → marker := (boot id, N) → unlock
//
// Every row with id <= N was committed before N was read, so its files were
// in place before the syncfs began; rows committed later have higher ids and
// wait for the next round. One syncfs serves every commit of a round, of
// every process on the store (Nix's included): a round that finds the marker
// at N already skips its syncfs. Close runs a last round, so a process that
// exits normally leaves its adds durable (or hands it to a process that
// outlives it: syncbehind.go). Batches that replace the files of a
// path that is already valid (repairs) keep the synchronous order above,
// since their rows keep their old ids.

// syncDelay is how long the syncer lets commits gather before a round.
const syncDelay = 30 * time.Millisecond

// syncer makes a store's committed adds durable, one round at a time.
type syncer struct {
	s      *Store
	marker *markerFile
	boot   string
	// fds are the file systems to sync: the store dir's (not owned), and
	// the database dir's when it is on another one.
	fds   []int
	dbFD  int // the database dir, open when it is on another file system
	delay time.Duration

	round sync.Mutex // held for a round; guards synced and rounds
	mu    sync.Mutex
	// pending says something was committed since the last round began;
	// items are the paths it moved into place, unless whole says they are
	// not all known.
	pending bool
	items   []syncItem
	whole   bool
	running bool // the goroutine was started
	closed  bool
	wake    chan struct{}
	quit    chan struct{}
	done    chan struct{}
	// err is the first failed round's: after it no marker advances, and
	// adds go back to syncing before they register.
	err    error
	synced int64 // the highest id this process knows to be durable
	rounds int   // rounds that ran syncfs (for tests; under round)
}

func newSyncer(s *Store, m *markerFile, boot string) (*syncer, error) {
	sy := &syncer{s: s, marker: m, boot: boot, dbFD: -1, delay: syncDelay,
		wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
	dbFD, err := openDBFileSystem(s.realFD, s.cfg.RealStoreDir, filepath.Join(s.cfg.StateDir, "db"))
	if err != nil {
		return nil, err
	}
	sy.fds = []int{s.realFD}
	if dbFD >= 0 {
		sy.dbFD = dbFD
		sy.fds = append(sy.fds, dbFD)
	}
	return sy, nil
}

// openDBFileSystem opens dbDir when it is on another file system than the
// store dir open at storeFD, for a round to sync both; else it returns -1.
func openDBFileSystem(storeFD int, storeDir, dbDir string) (int, error) {
	var st, dst unix.Stat_t
	if err := unix.Fstat(storeFD, &st); err != nil {
		return -1, &os.PathError{Op: "stat", Path: storeDir, Err: err}
	}
	if err := unix.Stat(dbDir, &dst); err != nil {
		return -1, &os.PathError{Op: "stat", Path: dbDir, Err: err}
	}
	if st.Dev == dst.Dev {
		return -1, nil
	}
	fd, err := openat(unix.AT_FDCWD, dbDir, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: dbDir, Err: err}
	}
	return fd, nil
}

// syncItem is a path a commit of this process moved into place, for a
// round that fsyncs what it holds rather than syncfs everything.
type syncItem struct {
	base  string
	stats restoreStats
}

// maxRoundItems bounds the paths a syncer remembers for its next round;
// past it, the round uses syncfs.
const maxRoundItems = 4096

// notify tells the syncer that rows were committed, starting its goroutine
// on the first call. items are the paths they moved into place; nil means
// unknown (the round will syncfs).
func (sy *syncer) notify(items ...syncItem) {
	sy.mu.Lock()
	sy.pending = true
	if items == nil || sy.whole || len(sy.items)+len(items) > maxRoundItems {
		sy.whole, sy.items = true, nil
	} else {
		sy.items = append(sy.items, items...)
	}
	if !sy.running && !sy.closed {
		sy.running = true
		go sy.loop()
	}
	sy.mu.Unlock()
	select {
	case sy.wake <- struct{}{}:
	default:
	}
}

func (sy *syncer) loop() {
	defer close(sy.done)
	t := time.NewTimer(0)
	<-t.C
	for {
		select {
		case <-sy.wake:
		case <-sy.quit:
			return
		}
		t.Reset(sy.delay)
		select {
		case <-t.C:
		case <-sy.quit:
			t.Stop()
			return
		}
		if err := sy.syncRound(); err != nil {
			sy.s.warnf("warning: %v", err)
		}
	}
}

// failed returns the error of a failed round, if any.
func (sy *syncer) failed() error {
	sy.mu.Lock()
	defer sy.mu.Unlock()
	return sy.err
}

// syncRound makes every row committed so far durable and advances the marker.
func (sy *syncer) syncRound() error {
	sy.round.Lock()
	defer sy.round.Unlock()
	sy.mu.Lock()
	pending, err, items, whole := sy.pending, sy.err, sy.items, sy.whole
	sy.pending, sy.items, sy.whole = false, nil, false
	sy.mu.Unlock()
	if !pending || err != nil {
		return err
	}
	ctx := context.Background()
	n, err := sy.s.maxPathID(ctx)
	if err != nil {
		return sy.fail(err)
	}
	if n <= sy.synced {
		return nil
	}
	if err := sy.marker.lock(ctx); err != nil {
		return sy.fail(err)
	}
	defer sy.marker.unlock()
	cur, slot, ok, err := sy.marker.read()
	if err != nil {
		return sy.fail(err)
	}
	if ok && cur.seq > 0 && cur.boot == sy.boot && cur.synced >= n {
		// Another process's round, begun after our rows were committed.
		sy.synced = n
		return nil
	}
	if !whole && sy.fsyncEach(ctx, cur, n, items) {
		return sy.syncItems(cur, slot, n, items)
	}
	return sy.syncLocked(cur, slot, ok, n)
}

// fsyncEach reports whether a round should fsync the entries of items rather
// than syncfs: items must be every row between the marker and n (no other
// writer's), hold no symlink (only syncfs makes a symlink's inode durable),
// and be few, or much other data must be waiting to be written (which syncfs
// would write too). The rule is Commit's of before the syncer (syncSlots).
func (sy *syncer) fsyncEach(ctx context.Context, cur markerRecord, n int64, items []syncItem) bool {
	entries, size, symlinks := roundSize(items)
	if len(items) == 0 || symlinks {
		return false
	}
	if entries > fsyncEachMax && dirtyBytes()-size <= int64(entries)*otherDirtyPerEntry {
		return false
	}
	bases := make(map[string]bool, len(items))
	for _, it := range items {
		bases[it.base] = true
	}
	rows, err := sy.s.rdb.QueryContext(ctx, `select path from ValidPaths where id > ? and id <= ?`, cur.synced, n)
	if err != nil {
		return false
	}
	defer rows.Close()
	for rows.Next() {
		var path string
		if rows.Scan(&path) != nil {
			return false
		}
		p, err := sy.s.dir.Parse(path)
		if err != nil || !bases[p.Base()] {
			return false // another writer's row
		}
	}
	return rows.Err() == nil
}

// roundSize sums what a round's items hold.
func roundSize(items []syncItem) (entries int, bytes int64, symlinks bool) {
	for _, it := range items {
		entries += it.stats.entries
		bytes += it.stats.bytes
		symlinks = symlinks || it.stats.symlinks
	}
	return entries, bytes, symlinks
}

// syncItems (marker locked) fsyncs every entry of items side by side, then
// the store dir and the marker (whose last write the next must not
// overtake: see marker.go), and records n. The store dir comes last: an
// fsync of a directory holds its lock until its blocks are written, so
// queued behind a big tree's writes it would stall every add's rename into
// the store dir for as long (adds of 2000 small files right after the Go
// tree took twice as long).
func (sy *syncer) syncItems(cur markerRecord, slot int, n int64, items []syncItem) error {
	sy.rounds++
	s := sy.s
	fs := newFsyncer()
	entries := 0
	for _, it := range items {
		entries += it.stats.entries
	}
	if entries > fsyncEachMax {
		fs.workers = fsyncWorkersBig
	}
	var err error
	for _, it := range items {
		err = fs.tree(s.realFD, it.base, s.cfg.RealStoreDir+"/"+it.base)
		if errors.Is(err, unix.ENOENT) {
			err = nil // deleted meanwhile
		}
		if err != nil {
			break
		}
	}
	if ferr := fs.wait(); err == nil {
		err = ferr
	}
	if err == nil {
		fs = newFsyncer()
		fs.add(s.realFD, s.cfg.RealStoreDir, false)
		fs.addData(sy.marker.fd, sy.marker.path)
		err = fs.wait()
	}
	if err != nil {
		sy.marker.write(markerRecord{seq: cur.seq + 1, boot: markerFailed, synced: cur.synced}, slot)
		return sy.fail(fmt.Errorf("sync %s: %w", s.cfg.RealStoreDir, err))
	}
	if cur.seq == 0 || cur.boot == sy.boot {
		if err := sy.marker.write(markerRecord{seq: cur.seq + 1, boot: sy.boot, synced: n}, slot); err != nil {
			return sy.fail(err)
		}
	}
	sy.synced = n
	return nil
}

// syncLocked (marker locked, cur read from it) syncs the file systems and
// records n in the marker, unless it says a sync failed: that stays for the
// next open's check.
func (sy *syncer) syncLocked(cur markerRecord, slot int, ok bool, n int64) error {
	sy.rounds++
	if err := syncAndMark(sy.marker, sy.fds, sy.boot, cur, slot, ok, n, sy.s.cfg.RealStoreDir); err != nil {
		return sy.fail(err)
	}
	sy.synced = n
	return nil
}

// syncAndMark (marker m locked, cur read from it) syncs the file systems of
// fds and records n in m, unless m says a sync failed or names another boot:
// that stays for the next open's check. storeDir names the store in errors.
func syncAndMark(m *markerFile, fds []int, boot string, cur markerRecord, slot int, ok bool, n int64, storeDir string) error {
	for _, fd := range fds {
		if err := unix.Syncfs(fd); err != nil {
			// Written data may be lost: the marker says so (keeping its
			// synced), and the next open checks every row above it.
			m.write(markerRecord{seq: cur.seq + 1, boot: markerFailed, synced: cur.synced}, slot)
			return fmt.Errorf("sync %s: %w", storeDir, err)
		}
	}
	if !ok || cur.seq == 0 || cur.boot == boot {
		return m.write(markerRecord{seq: cur.seq + 1, boot: boot, synced: n}, slot)
	}
	return nil
}

// fail makes err sticky: adds sync before they register from now on.
func (sy *syncer) fail(err error) error {
	sy.mu.Lock()
	if sy.err == nil {
		sy.err = err
	}
	sy.mu.Unlock()
	sy.s.deferred.Store(false)
	return err
}

// close stops the goroutine and runs a last round if anything is pending.
func (sy *syncer) close() error {
	sy.mu.Lock()
	sy.closed = true
	running := sy.running
	sy.mu.Unlock()
	close(sy.quit)
	if running {
		<-sy.done
	}
	if sy.s.opts.SyncBehind != nil && sy.handOff() {
		sy.release()
		return nil
	}
	err := sy.syncRound()
	if err != nil {
		sy.s.warnf("warning: %v", err)
	}
	sy.release()
	return err
}

// release closes the marker and the descriptors the syncer owns.
func (sy *syncer) release() {
	sy.marker.close()
	if sy.dbFD >= 0 {
		unix.Close(sy.dbFD)
		sy.dbFD = -1
	}
}

// maxPathID returns the highest id among the committed rows of ValidPaths.
func (s *Store) maxPathID(ctx context.Context) (int64, error) {
	var n int64
	if err := s.rdb.QueryRowContext(ctx, `select coalesce(max(id), 0) from ValidPaths`).Scan(&n); err != nil {
		return 0, fmt.Errorf("query highest path id: %w", err)
	}
	return n, nil
}

// openDurable opens the marker and, when the system went down since the
// last sync it records, checks the rows that sync did not cover. With it,
// adds no longer sync before they register. Without it (no marker could be
// made: a full state dir), they do, as before.
func (s *Store) openDurable(ctx context.Context) error {
	if s.opts.NoFsync {
		return nil
	}
	boot := bootID()
	// A new marker starts fresh (the first opener adopts the rows there
	// are), or, on a store without rows, as synced for this boot.
	first := markerRecord{boot: markerNew}
	if n, err := s.maxPathID(ctx); err != nil {
		return err
	} else if n == 0 {
		first = markerRecord{seq: 1, boot: boot}
	}
	m, err := openMarker(filepath.Join(s.cfg.StateDir, "db"), first)
	if err != nil {
		s.warnf("warning: %v; adds will wait for their sync", err)
		return nil
	}
	sy, err := newSyncer(s, m, boot)
	if err != nil {
		m.close()
		return err
	}
	if err := m.lock(ctx); err != nil {
		sy.release()
		return err
	}
	schedule, err := s.checkMarker(ctx, sy)
	m.unlock()
	if err != nil {
		sy.release()
		if sy.failed() == nil {
			return err
		}
		// The suspects are checked but the sync failed: carry on as
		// before the syncer.
		s.warnf("warning: %v; adds will wait for their sync", err)
		return nil
	}
	s.syncer = sy
	s.deferred.Store(true)
	if schedule {
		// After the unlock: a round locks the marker through the same
		// descriptor, which would not wait for this open's lock.
		sy.notify()
	}
	return nil
}

// checkMarker reads the marker (locked) and acts on it: one of this boot only
// needs a round if rows were added since (schedule); a fresh one adopts the
// store as it is; any other one has its suspects checked, and is rewritten.
func (s *Store) checkMarker(ctx context.Context, sy *syncer) (schedule bool, err error) {
	cur, slot, ok, err := sy.marker.read()
	if err != nil {
		return false, err
	}
	n, err := s.maxPathID(ctx)
	if err != nil {
		return false, err
	}
	if ok && cur.seq > 0 && cur.boot == sy.boot && sy.boot != bootUnknown {
		sy.synced = cur.synced
		return n > cur.synced, nil
	}
	if !ok || cur.seq > 0 {
		after := int64(0)
		if ok {
			after = cur.synced
		} else {
			s.warnf("warning: %s is unreadable: checking the contents of every valid path", sy.marker.path)
		}
		if err := s.recoverSuspects(ctx, after); err != nil {
			return false, err
		}
		if n, err = s.maxPathID(ctx); err != nil {
			return false, err
		}
	}
	if !ok {
		cur = markerRecord{}
	}
	cur.boot = sy.boot // rewrite whatever boot it had
	return false, sy.syncLocked(cur, slot, true, n)
}

// syncNow makes everything written to the store's file systems durable, for
// the writes that cannot wait for the syncer: a valid path's files replaced.
func (s *Store) syncNow() error {
	if err := unix.Syncfs(s.realFD); err != nil {
		return fmt.Errorf("sync %s: %w", s.cfg.RealStoreDir, err)
	}
	return nil
}
