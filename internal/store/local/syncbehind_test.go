package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cairn/internal/store"
)

// openBehind opens the store at root with SyncBehind set to behind, and no
// round but Close's. Its warnings go to warn, or, when that is nil, must be
// none.
func openBehind(t *testing.T, root string, behind func(SyncRound) error, warn *bytes.Buffer) *Store {
	t.Helper()
	cfg, err := store.ParseURL("local?root="+root, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	opts := DefaultOptions()
	none := warn == nil
	if none {
		warn = new(bytes.Buffer)
	}
	opts.Warnings = warn
	opts.SyncBehind = behind
	s, err := Open(context.Background(), cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	s.syncer.delay = time.Hour
	t.Cleanup(func() {
		s.Close()
		if none && warn.Len() != 0 {
			t.Errorf("warnings: %s", warn.String())
		}
	})
	return s
}

// addTexts adds n text paths and returns the highest row id.
func addTexts(t *testing.T, s *Store, prefix string, n int) int64 {
	t.Helper()
	ctx := context.Background()
	for i := range n {
		if _, err := s.AddText(ctx, fmt.Sprintf("%s%d", prefix, i), fmt.Sprintf("%s %d\n", prefix, i), nil); err != nil {
			t.Fatal(err)
		}
	}
	id, err := s.maxPathID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestSyncBehind: Close hands a big last round to SyncBehind and returns
// with the marker where it was; running the round advances the marker to
// every row, once. A small round stays in Close, and so does one whose
// hand-off fails.
func TestSyncBehind(t *testing.T) {
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "root")
	var rounds []SyncRound
	s := openBehind(t, root, func(r SyncRound) error {
		rounds = append(rounds, r)
		return nil
	}, nil)
	id := addTexts(t, s, "big", fsyncEachMax+1)
	before, _, _ := readMarker(t, root)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	want := SyncRound{StateDir: filepath.Join(root, "nix/var/nix"), RealStoreDir: filepath.Join(root, "nix/store"), Through: id}
	if len(rounds) != 1 || rounds[0] != want {
		t.Fatalf("rounds handed off %+v, want [%+v]", rounds, want)
	}
	if rec, _, _ := readMarker(t, root); rec != before {
		t.Errorf("marker %+v after Close, want it untouched (%+v)", rec, before)
	}
	r, err := ParseSyncRound(rounds[0].Args())
	if err != nil || r != want {
		t.Fatalf("ParseSyncRound(Args) = %+v, %v", r, err)
	}
	if err := r.Run(ctx); err != nil {
		t.Fatal(err)
	}
	after, _, _ := readMarker(t, root)
	if after.synced != id || after.boot != bootID() || after.seq != before.seq+1 {
		t.Errorf("marker after the round %+v, want synced %d, boot %s, seq %d", after, id, bootID(), before.seq+1)
	}
	if err := r.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if again, _, _ := readMarker(t, root); again != after {
		t.Errorf("a second run moved the marker to %+v", again)
	}

	t.Run("small", func(t *testing.T) {
		rounds = nil
		s := openBehind(t, root, func(r SyncRound) error {
			rounds = append(rounds, r)
			return nil
		}, nil)
		id := addTexts(t, s, "small", 3)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if len(rounds) != 0 {
			t.Errorf("a small round was handed off: %+v", rounds)
		}
		if rec, _, _ := readMarker(t, root); rec.synced != id {
			t.Errorf("marker synced %d after Close, want %d", rec.synced, id)
		}
	})
	t.Run("one big file", func(t *testing.T) {
		rounds = nil
		s := openBehind(t, root, func(r SyncRound) error {
			rounds = append(rounds, r)
			return nil
		}, nil)
		big := strings.Repeat("x", smallRoundBytes+1)
		if _, err := s.AddText(ctx, "big", big, nil); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if len(rounds) != 1 {
			t.Fatalf("rounds handed off %+v, want the one of a file over %d bytes", rounds, smallRoundBytes)
		}
		if err := rounds[0].Run(ctx); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("hand-off fails", func(t *testing.T) {
		var warn bytes.Buffer
		s := openBehind(t, root, func(SyncRound) error { return errors.New("no process") }, &warn)
		id := addTexts(t, s, "failed", fsyncEachMax+1)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if rec, _, _ := readMarker(t, root); rec.synced != id {
			t.Errorf("marker synced %d after Close, want %d", rec.synced, id)
		}
		if want := "cannot sync " + filepath.Join(root, "nix/store") + " behind: no process; syncing now"; !strings.Contains(warn.String(), want) {
			t.Errorf("warnings %q, want one saying %q", warn.String(), want)
		}
	})
	t.Run("never run", func(t *testing.T) {
		// A round handed off and lost (the process killed): the next
		// open in this boot syncs the rows.
		s := openBehind(t, root, func(SyncRound) error { return nil }, nil)
		id := addTexts(t, s, "lost", fsyncEachMax+1)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if rec, _, _ := readMarker(t, root); rec.synced >= id {
			t.Fatalf("marker synced %d, want below %d", rec.synced, id)
		}
		var warn bytes.Buffer
		openRootWarn(t, root, &warn).Close()
		if rec, _, _ := readMarker(t, root); rec.synced != id {
			t.Errorf("marker synced %d after the next open, want %d", rec.synced, id)
		}
	})
}

// TestSyncRoundArgs: ParseSyncRound refuses what Args cannot have written,
// and a round on a store without a marker does nothing and creates none.
func TestSyncRoundArgs(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"/state", "/store"},
		{"/state", "/store", "x"},
		{"/state", "/store", "0"},
		{"/state", "/store", "-3"},
		{"/state", "/store", "1", "2"},
	} {
		if r, err := ParseSyncRound(args); err == nil {
			t.Errorf("ParseSyncRound(%q) = %+v, want an error", args, r)
		}
	}
	dir := t.TempDir()
	state, real := filepath.Join(dir, "state"), filepath.Join(dir, "store")
	for _, d := range []string{filepath.Join(state, "db"), real} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	r := SyncRound{StateDir: state, RealStoreDir: real, Through: 5}
	if err := r.Run(context.Background()); err != nil {
		t.Fatalf("round without a marker: %v", err)
	}
	if _, err := os.Stat(filepath.Join(state, "db", markerName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a marker appeared: %v", err)
	}
}

// FuzzParseSyncRound: whatever ParseSyncRound accepts, Args writes back so
// that it parses to the same round.
func FuzzParseSyncRound(f *testing.F) {
	f.Add("/nix/var/nix", "/nix/store", "12")
	f.Add("", "", "-1")
	f.Add("a b", "c\x00", "9223372036854775807")
	f.Fuzz(func(t *testing.T, state, real, id string) {
		r, err := ParseSyncRound([]string{state, real, id})
		if err != nil {
			return
		}
		if r.Through < 1 {
			t.Fatalf("accepted row id %d", r.Through)
		}
		again, err := ParseSyncRound(r.Args())
		if err != nil || again != r {
			t.Fatalf("round trip of %+v: %+v, %v", r, again, err)
		}
	})
}
