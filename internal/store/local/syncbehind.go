package local

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// Syncing behind. A command that exits right after adding need not wait for
// its adds to reach the disk: what the store promises is that no valid path is
// ever wrong after a crash, and the marker (marker.go) keeps that promise
// whenever the round runs. nix-store returns without syncing anything. So
// Close can hand its last round to another process (Options.SyncBehind): it
// reads the highest row id, starts that process on it and returns, and the
// process runs the round on its own (syncfs, then the marker). Should it
// never run (killed, the system down), the rows stay above the marker, as
// for a process killed before its last round: the next open in this boot
// syncs them, the first after a crash rehashes them.
//
// A small round (fsyncs of at most fsyncEachMax entries holding at most
// smallRoundBytes) costs less than starting a process, and stays in Close.
// Such a store does not start the write-out of big files as they are
// written (writesBehind): the command returns once its files are in the page
// cache, as nix-store does, and the disk catches up behind it.

// smallRoundBytes bounds the data of a round Close runs itself.
const smallRoundBytes = writeBehindChunk

// SyncRound is a store's last round, for another process to run.
type SyncRound struct {
	StateDir     string // the state dir: the marker is in its db/
	RealStoreDir string
	Through      int64 // the highest ValidPaths id the round makes durable
}

// Args returns r as command-line arguments, for ParseSyncRound.
func (r SyncRound) Args() []string {
	return []string{r.StateDir, r.RealStoreDir, strconv.FormatInt(r.Through, 10)}
}

// ParseSyncRound reads what Args wrote.
func ParseSyncRound(args []string) (SyncRound, error) {
	if len(args) != 3 {
		return SyncRound{}, fmt.Errorf("sync round: want a state dir, a store dir and a row id, got %d arguments", len(args))
	}
	n, err := strconv.ParseInt(args[2], 10, 64)
	if err != nil || n < 1 {
		return SyncRound{}, fmt.Errorf("sync round: bad row id %q", args[2])
	}
	return SyncRound{StateDir: args[0], RealStoreDir: args[1], Through: n}, nil
}

// Run makes the store's files durable and records r.Through in the marker,
// as the syncer's round would, unless the marker says so already. A store
// without a marker has nothing to record: Run does nothing there.
func (r SyncRound) Run(ctx context.Context) error {
	dbDir := filepath.Join(r.StateDir, "db")
	m, err := openExistingMarker(dbDir)
	if m == nil || err != nil {
		return err
	}
	defer m.close()
	storeFD, err := openat(unix.AT_FDCWD, r.RealStoreDir, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return &os.PathError{Op: "open", Path: r.RealStoreDir, Err: err}
	}
	defer unix.Close(storeFD)
	fds := []int{storeFD}
	dbFD, err := openDBFileSystem(storeFD, r.RealStoreDir, dbDir)
	if err != nil {
		return err
	}
	if dbFD >= 0 {
		defer unix.Close(dbFD)
		fds = append(fds, dbFD)
	}
	if err := m.lock(ctx); err != nil {
		return err
	}
	defer m.unlock()
	cur, slot, ok, err := m.read()
	if err != nil {
		return err
	}
	boot := bootID()
	if ok && cur.seq > 0 && cur.boot == boot && cur.synced >= r.Through {
		return nil // another round covered it
	}
	return syncAndMark(m, fds, boot, cur, slot, ok, r.Through, r.RealStoreDir)
}

// handOff gives Close's round to another process (Options.SyncBehind) and
// reports whether it did: not when nothing is pending, a round failed, or
// the round is a small fsync round.
func (sy *syncer) handOff() bool {
	sy.mu.Lock()
	pending, failed, items, whole := sy.pending, sy.err, sy.items, sy.whole
	sy.mu.Unlock()
	if !pending || failed != nil || (!whole && smallRound(items)) {
		return false
	}
	n, err := sy.s.maxPathID(context.Background())
	if err != nil || n <= sy.synced {
		return false
	}
	r := SyncRound{StateDir: sy.s.cfg.StateDir, RealStoreDir: sy.s.cfg.RealStoreDir, Through: n}
	if err := sy.s.opts.SyncBehind(r); err != nil {
		sy.s.warnf("warning: cannot sync %s behind: %v; syncing now", sy.s.cfg.RealStoreDir, err)
		return false
	}
	sy.mu.Lock()
	sy.pending, sy.items, sy.whole = false, nil, false
	sy.mu.Unlock()
	return true
}

// smallRound reports whether a round of items would fsync each of them
// (fsyncEach) because they are few, and they hold little data.
func smallRound(items []syncItem) bool {
	entries, bytes, symlinks := roundSize(items)
	return len(items) > 0 && !symlinks && entries <= fsyncEachMax && bytes <= smallRoundBytes
}
