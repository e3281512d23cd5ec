package local

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"cairn/internal/store"
	"cairn/internal/storepath"
)

// openRootWarn opens the store at root with its warnings in w.
func openRootWarn(t *testing.T, root string, w *bytes.Buffer) *Store {
	t.Helper()
	cfg, err := store.ParseURL("local?root="+root, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	opts := DefaultOptions()
	opts.Warnings = w
	s, err := Open(context.Background(), cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// readMarker returns the marker of the store at root.
func readMarker(t *testing.T, root string) (markerRecord, int, bool) {
	t.Helper()
	m, err := openMarker(filepath.Join(root, "nix/var/nix/db"), markerRecord{boot: markerNew})
	if err != nil {
		t.Fatal(err)
	}
	defer m.close()
	rec, slot, ok, err := m.read()
	if err != nil {
		t.Fatal(err)
	}
	return rec, slot, ok
}

// setMarker overwrites the marker of the store at root: its current slot
// with rec, or both slots with garbage when torn.
func setMarker(t *testing.T, root string, rec markerRecord, torn bool) {
	t.Helper()
	m, err := openMarker(filepath.Join(root, "nix/var/nix/db"), markerRecord{boot: markerNew})
	if err != nil {
		t.Fatal(err)
	}
	defer m.close()
	if torn {
		if err := os.WriteFile(m.path, bytes.Repeat([]byte("torn"), 2*markerSlot/4), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	_, slot, _, err := m.read()
	if err != nil {
		t.Fatal(err)
	}
	// Write into the current slot and blank the other, so rec counts
	// whatever its seq.
	if err := m.write(rec, 1-slot); err != nil {
		t.Fatal(err)
	}
	if err := m.write(markerRecord{}, slot); err != nil {
		t.Fatal(err)
	}
}

// corrupt rewrites the file of a text path; remove deletes it.
func corrupt(t *testing.T, s *Store, p storepath.StorePath, remove bool) {
	t.Helper()
	f := s.RealPath(p)
	if remove {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := os.Chmod(f, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f, []byte("not what was added\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(f, 0o444)
}

// TestDurabilityMarker: after adds, the marker is set as a crash would leave
// it (another boot, a failed sync, this boot, unreadable, fresh), some paths'
// files are spoilt, and the store is reopened. Only the rows above the
// marker's synced are rehashed, and of those, the spoilt ones and their
// referrers are invalidated and removed.
func TestDurabilityMarker(t *testing.T) {
	const foreign = "00000000-1111-2222-3333-444444444444"
	tests := []struct {
		name        string
		boot        string // "" is this boot's
		synced      int    // paths[:synced] are covered
		torn, fresh bool
		spoil       []int // paths whose file is rewritten
		remove      []int // paths whose file is removed
		wantChecked int
		wantGone    []int
	}{
		// Path 4 refers to path 3, which is spoilt: both go. Path 0 is
		// spoilt too but below the marker, so it is not even looked at.
		{name: "another boot", boot: foreign, synced: 2, spoil: []int{0, 3}, wantChecked: 4, wantGone: []int{3, 4}},
		{name: "files missing", boot: foreign, synced: 2, remove: []int{2}, wantChecked: 4, wantGone: []int{2}},
		{name: "failed sync", boot: markerFailed, synced: 2, spoil: []int{3}, wantChecked: 4, wantGone: []int{3, 4}},
		{name: "intact", boot: foreign, synced: 0, wantChecked: 6},
		{name: "this boot", synced: 2, spoil: []int{3}, wantChecked: 0},
		{name: "unreadable", torn: true, spoil: []int{0}, wantChecked: 6, wantGone: []int{0}},
		{name: "fresh", fresh: true, spoil: []int{0}, wantChecked: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			root := filepath.Join(t.TempDir(), "root")
			var warn bytes.Buffer
			s := openRootWarn(t, root, &warn)
			var paths []storepath.StorePath
			ids := map[storepath.StorePath]int64{}
			for i := range 6 {
				var refs []storepath.StorePath
				if i == 4 {
					refs = []storepath.StorePath{paths[3]}
				}
				text := fmt.Sprintf("path %d\n", i)
				for _, r := range refs {
					text += r.String() + "\n"
				}
				info, err := s.AddText(ctx, fmt.Sprintf("p%d", i), text, refs)
				if err != nil {
					t.Fatal(err)
				}
				paths = append(paths, info.Path)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			// Close made everything durable.
			rec, _, ok := readMarker(t, root)
			if !ok || rec.boot != bootID() {
				t.Fatalf("marker after close: %+v (valid %v), want boot %s", rec, ok, bootID())
			}
			s2 := openRootWarn(t, root, &warn)
			for _, p := range paths {
				var id int64
				if err := s2.rdb.QueryRow(sqlQueryPathID, p.String()).Scan(&id); err != nil {
					t.Fatal(err)
				}
				ids[p] = id
			}
			if rec.synced != ids[paths[5]] {
				t.Errorf("marker synced %d after close, want %d", rec.synced, ids[paths[5]])
			}
			s2.Close()

			var synced int64
			if tt.synced > 0 {
				synced = ids[paths[tt.synced-1]]
			}
			switch {
			case tt.fresh:
				setMarker(t, root, markerRecord{seq: 0, boot: markerNew}, false)
			case tt.torn:
				setMarker(t, root, markerRecord{}, true)
			default:
				boot := tt.boot
				if boot == "" {
					boot = bootID()
				}
				setMarker(t, root, markerRecord{seq: rec.seq + 7, boot: boot, synced: synced}, false)
			}
			for _, i := range tt.spoil {
				corrupt(t, s2, paths[i], false)
			}
			for _, i := range tt.remove {
				corrupt(t, s2, paths[i], true)
			}

			warn.Reset()
			s3 := openRootWarn(t, root, &warn)
			t.Logf("warnings:\n%s", warn.String())
			if got := s3.suspectsChecked.Load(); got != int64(tt.wantChecked) {
				t.Errorf("rehashed %d paths, want %d", got, tt.wantChecked)
			}
			for i, p := range paths {
				valid, err := s3.IsValidPath(ctx, p)
				if err != nil {
					t.Fatal(err)
				}
				gone := slices.Contains(tt.wantGone, i)
				if valid == gone {
					t.Errorf("path %d: valid %v, want %v", i, valid, !gone)
				}
				_, err = os.Lstat(s3.RealPath(p))
				if gone && err == nil {
					t.Errorf("path %d: files left after invalidation", i)
				}
				if gone != strings.Contains(warn.String(), p.String()) {
					t.Errorf("path %d: named in warnings %v, want %v:\n%s", i, !gone, gone, warn.String())
				}
				if !gone && slices.Contains(tt.spoil, i) {
					// Not rehashed: still spoilt.
					if b, _ := os.ReadFile(s3.RealPath(p)); !bytes.Equal(b, []byte("not what was added\n")) {
						t.Errorf("path %d: spoilt contents changed: %q", i, b)
					}
				}
			}
			// The open rewrote the marker for this boot, or (this boot)
			// scheduled a round that Close runs.
			top, err := s3.maxPathID(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := s3.Close(); err != nil {
				t.Fatal(err)
			}
			rec, _, ok = readMarker(t, root)
			if !ok || rec.boot != bootID() || rec.synced != top {
				t.Errorf("marker after reopening: %+v (valid %v), want boot %s synced %d", rec, ok, bootID(), top)
			}
		})
	}
}

// TestAddsDeferTheirSync: an add returns before any sync of its files, and
// Close syncs once and advances the marker past it.
func TestAddsDeferTheirSync(t *testing.T) {
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "root")
	var warn bytes.Buffer
	s := openRootWarn(t, root, &warn)
	if !s.deferred.Load() {
		t.Fatal("adds are not deferred")
	}
	s.syncer.delay = time.Hour // no round but Close's
	var last *store.PathInfo
	for i := range 10 {
		info, err := s.AddText(ctx, fmt.Sprintf("t%d", i), fmt.Sprintf("text %d\n", i), nil)
		if err != nil {
			t.Fatal(err)
		}
		last = info
	}
	if n := s.syncer.rounds; n != 0 {
		t.Errorf("%d sync rounds before Close, want 0", n)
	}
	before, _, _ := readMarker(t, root)
	if before.synced != 0 {
		t.Errorf("marker synced %d before Close, want 0", before.synced)
	}
	var id int64
	if err := s.rdb.QueryRow(sqlQueryPathID, last.Path.String()).Scan(&id); err != nil {
		t.Fatal(err)
	}
	sy := s.syncer
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if sy.rounds != 1 {
		t.Errorf("%d sync rounds after Close, want 1", sy.rounds)
	}
	after, _, _ := readMarker(t, root)
	if after.synced != id || after.boot != bootID() || after.seq != before.seq+1 {
		t.Errorf("marker after Close %+v, want synced %d, boot %s, seq %d", after, id, bootID(), before.seq+1)
	}
	if warn.Len() != 0 {
		t.Errorf("warnings: %s", warn.String())
	}
}

// TestRoundChoice: a round fsyncs each entry only when every row since the
// marker is its own, holds no symlink and is small; otherwise syncfs.
func TestRoundChoice(t *testing.T) {
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "root")
	var warn bytes.Buffer
	s := openRootWarn(t, root, &warn)
	other := openRootWarn(t, root, &warn) // another process on the same store
	s.syncer.delay, other.syncer.delay = time.Hour, time.Hour
	add := func(st *Store, name string) syncItem {
		info, err := st.AddText(ctx, name, "text of "+name, nil)
		if err != nil {
			t.Fatal(err)
		}
		return syncItem{base: info.Path.Base(), stats: restoreStats{entries: 1}}
	}
	a, b := add(s, "a"), add(s, "b")
	cur, _, _ := readMarker(t, root)
	n, err := s.maxPathID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	link := a
	link.stats.symlinks = true
	big := a
	big.stats.entries = fsyncEachMax + 1
	tests := []struct {
		name  string
		items []syncItem
		want  bool
	}{
		{"own rows", []syncItem{a, b}, true},
		{"a row missing from the list", []syncItem{a}, false},
		{"a symlink", []syncItem{link, b}, false},
		{"too many entries", []syncItem{big, b}, false},
		{"no list", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := s.syncer.fsyncEach(ctx, cur, n, tt.items); got != tt.want {
				t.Errorf("fsyncEach = %v, want %v", got, tt.want)
			}
		})
	}
	add(other, "c")
	n2, err := s.maxPathID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.syncer.fsyncEach(ctx, cur, n2, []syncItem{a, b}) {
		t.Error("fsyncEach with another writer's row = true, want false")
	}
}

// TestSyncerRuns: without Close, the syncer's goroutine makes an add durable
// on its own and advances the marker.
func TestSyncerRuns(t *testing.T) {
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "root")
	var warn bytes.Buffer
	s := openRootWarn(t, root, &warn)
	s.syncer.delay = time.Millisecond
	info, err := s.AddText(ctx, "t", "text\n", nil)
	if err != nil {
		t.Fatal(err)
	}
	var id int64
	if err := s.rdb.QueryRow(sqlQueryPathID, info.Path.String()).Scan(&id); err != nil {
		t.Fatal(err)
	}
	// Not a timing assertion: the round comes within milliseconds; the
	// deadline only keeps a broken syncer from hanging the test.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if rec, _, _ := readMarker(t, root); rec.synced >= id {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the marker never reached the add")
		}
	}
	if warn.Len() != 0 {
		t.Errorf("warnings: %s", warn.String())
	}
}
