package local

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"cairn/internal/nixhash"
)

// evict drops the page cache of the given files (written back first), and
// reports whether the first one's data is now missing from memory: a file
// system like tmpfs keeps it whatever fadvise says.
func evict(t *testing.T, paths ...string) bool {
	t.Helper()
	unix.Sync()
	for _, p := range paths {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			continue // a symlink
		}
		unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED)
		unix.Close(fd)
	}
	fd, err := unix.Open(paths[0], unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var b [1]byte
	_, err = unix.Preadv2(fd, [][]byte{b[:]}, 0, unix.RWF_NOWAIT)
	return err == unix.EAGAIN
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// coldSources writes n sources of every kind AddPaths takes (small files, an
// empty one, an executable one, one bigger than the openers fetch, a
// directory, a symlink) and returns their paths.
func coldSources(t *testing.T, n int) []string {
	t.Helper()
	dir := t.TempDir()
	srcs := make([]string, n)
	for i := range srcs {
		srcs[i] = filepath.Join(dir, fmt.Sprintf("f%04d", i))
		var err error
		switch i % 50 {
		case 7:
			err = os.WriteFile(srcs[i], nil, 0o644)
		case 8:
			err = os.WriteFile(srcs[i], []byte("#!/bin/sh\n"), 0o755)
		case 9:
			err = os.WriteFile(srcs[i], []byte(strings.Repeat("big ", fetchMaxSize/4+1)), 0o644)
		case 10:
			writeTree(t, srcs[i], map[string]string{"a": "x", "sub/b": "*y", "l": "->a"})
		case 11:
			err = os.Symlink("f0000", srcs[i])
		default:
			err = os.WriteFile(srcs[i], []byte(fmt.Sprintf("source %d\n", i)), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return srcs
}

// TestAddPathsColdSources: sources whose data is not in memory wake the
// openers; AddPaths then gives the same paths and infos as for sources in
// memory, and every descriptor the openers opened is closed.
func TestAddPathsColdSources(t *testing.T) {
	ctx := context.Background()
	srcs := coldSources(t, 3*maxSpareLocks+25)
	warm, _ := newStore(t)
	want, err := warm.AddPaths(ctx, srcs, nixhash.Recursive, nixhash.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if !evict(t, srcs...) {
		t.Skip("the file system keeps evicted files in memory")
	}
	before := openFDs(t)
	s, _ := newStore(t)
	got, err := s.AddPaths(ctx, srcs, nixhash.Recursive, nixhash.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	s.Close() // its spare lock files, slots and database
	if len(got) != len(want) {
		t.Fatalf("%d infos, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].Path != want[i].Path || got[i].NarHash != want[i].NarHash || got[i].NarSize != want[i].NarSize {
			t.Errorf("source %d: %s %v %d, want %s %v %d", i, got[i].Path, got[i].NarHash, got[i].NarSize, want[i].Path, want[i].NarHash, want[i].NarSize)
		}
	}
	waitFDs(t, before)
}

// TestAddPathsColdBadSource: a missing source among cold ones stops AddPaths
// as it does for warm ones, and the descriptors the openers opened past it are
// closed.
func TestAddPathsColdBadSource(t *testing.T) {
	ctx := context.Background()
	srcs := coldSources(t, 3*maxSpareLocks)
	bad := maxSpareLocks + 20
	os.RemoveAll(srcs[bad])
	if !evict(t, srcs[:bad]...) {
		t.Skip("the file system keeps evicted files in memory")
	}
	before := openFDs(t)
	s, _ := newStore(t)
	infos, err := s.AddPaths(ctx, srcs, nixhash.Recursive, nixhash.SHA256)
	if err == nil || !strings.Contains(err.Error(), srcs[bad]) {
		t.Fatalf("error %v, want one naming %s", err, srcs[bad])
	}
	if len(infos) != bad {
		t.Fatalf("%d infos, want %d", len(infos), bad)
	}
	if left := leftoverTemps(t, s.RealStoreDir()); len(left) != 0 {
		t.Errorf("temporaries left: %v", left)
	}
	s.Close()
	waitFDs(t, before)
}

// TestSourceOpener drives the openers as the workers do, woken from the
// start: each source is handed out once, as a descriptor of that very file
// or as -1 (the worker opens it), and nothing stays open once all are claimed.
func TestSourceOpener(t *testing.T) {
	srcs := coldSources(t, 600)
	srcs = append(srcs, filepath.Join(t.TempDir(), "missing"))
	before := openFDs(t)
	o := startOpeners(srcs)
	o.cold.Store(true)
	o.broadcast(false)
	for range 200 { // let the openers get ahead
		if o.fds[openAhead/2].Load() != slotEmpty {
			break
		}
		unix.Nanosleep(&unix.Timespec{Nsec: 5e6}, nil)
	}
	handed := 0
	for i, src := range srcs {
		fd := o.claim(i)
		if fd < 0 {
			continue
		}
		handed++
		var got, want unix.Stat_t
		if err := unix.Fstat(fd, &got); err != nil {
			t.Fatal(err)
		}
		if err := unix.Lstat(src, &want); err != nil {
			t.Fatalf("source %d: a descriptor for %s, which does not exist", i, src)
		}
		if got.Ino != want.Ino || got.Dev != want.Dev {
			t.Errorf("source %d: descriptor of inode %d, want %d", i, got.Ino, want.Ino)
		}
		unix.Close(fd)
	}
	o.finish()
	if handed == 0 {
		t.Error("the openers opened nothing")
	}
	// An opener that lost the race for a slot closes its descriptor: wait for
	// the openers to be done with every slot.
	for i := range o.fds {
		if v := o.fds[i].Load(); v != slotClaimed {
			t.Errorf("slot %d is %d after every source was claimed", i, v)
		}
	}
	waitFDs(t, before)
}

// waitFDs waits (briefly) for the descriptors open to fall back to want.
func waitFDs(t *testing.T, want int) {
	t.Helper()
	for range 200 {
		if openFDs(t) <= want {
			return
		}
		unix.Nanosleep(&unix.Timespec{Nsec: 5e6}, nil)
	}
	t.Errorf("%d descriptors open, %d before", openFDs(t), want)
}
