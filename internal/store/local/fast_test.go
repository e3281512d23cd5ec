package local

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"cairn/internal/nar"
)

// entryMeta is what canonicalisation decides about one entry.
type entryMeta struct {
	mode  uint32
	mtime int64
	uid   uint32
	data  string // file contents or symlink target
}

func treeMeta(t *testing.T, root string) map[string]entryMeta {
	t.Helper()
	m := map[string]entryMeta{}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		e := entryMeta{mode: st.Mode, mtime: st.Mtim.Sec*1e9 + st.Mtim.Nsec, uid: st.Uid}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			e.data = string(b)
		case unix.S_IFLNK:
			e.data, _ = os.Readlink(p)
		}
		m[rel] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestRestoreCanonical: unpacking with restoreCanonical gives the same tree,
// modes, times and owner as nar.Restore followed by Canonicalise, for every
// kind of entry, the root directory included once CanonicaliseRoot ran.
func TestRestoreCanonical(t *testing.T) {
	src := t.TempDir()
	trees := map[string]map[string]string{
		"tree": {
			"a": "hello\n", "bin/run": "*#!/bin/sh\necho hi\n", "link": "->a", "empty/": "",
			"sub/deep/f": "deep", "sub/deep/x": "*", "zero": "", "sub/l2": "->../a",
		},
		"file":     {"file": "just a file"},
		"exec":     {"exec": "*#!/bin/sh\n"},
		"symlink":  {"symlink": "->somewhere/else"},
		"emptydir": {"emptydir/": ""},
		"many":     manySmallFiles(),
	}
	for name, files := range trees {
		t.Run(name, func(t *testing.T) {
			writeTree(t, filepath.Join(src, name), files)
			narBytes := narOf(t, filepath.Join(src, name))
			dir := t.TempDir()
			dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(dfd)

			// The reference: restore, then canonicalise by walking.
			if err := nar.Restore(bytes.NewReader(narBytes), filepath.Join(dir, "want"), nar.RestoreOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := Canonicalise(dfd, "want", true); err != nil {
				t.Fatal(err)
			}
			st, err := restoreCanonical(nar.NewReader(bytes.NewReader(narBytes)), dfd, "got", dir+"/got",
				readUmask(), make([]byte, 4096), false)
			if err != nil {
				t.Fatal(err)
			}
			var rst unix.Stat_t
			unix.Lstat(filepath.Join(dir, "got"), &rst)
			if st.rootDir != (rst.Mode&unix.S_IFMT == unix.S_IFDIR) {
				t.Errorf("rootDir = %v for mode %o", st.rootDir, rst.Mode)
			}
			if st.entries != len(treeMeta(t, filepath.Join(dir, "got"))) {
				t.Errorf("entries = %d", st.entries)
			}
			if want := strings.Contains(string(narBytes), "symlink"); st.symlinks != want {
				t.Errorf("symlinks = %v, want %v", st.symlinks, want)
			}
			for _, n := range []string{"want", "got"} {
				if err := CanonicaliseRoot(dfd, n); err != nil {
					t.Fatal(err)
				}
			}
			want, got := treeMeta(t, filepath.Join(dir, "want")), treeMeta(t, filepath.Join(dir, "got"))
			var names []string
			for n := range want {
				names = append(names, n)
			}
			sort.Strings(names)
			for _, n := range names {
				if got[n] != want[n] {
					t.Errorf("%s: got %+v, want %+v", n, got[n], want[n])
				}
			}
			if len(got) != len(want) {
				t.Errorf("%d entries, want %d", len(got), len(want))
			}
			os.Chmod(filepath.Join(dir, "want"), 0o755)
			os.Chmod(filepath.Join(dir, "got"), 0o755)
			removeTree(dfd, "want")
			removeTree(dfd, "got")
		})
	}
}

// TestSpareLocks: a path locked through a spare lock file is locked for the
// Nix protocol (a plain locker waits, then gets a fresh lock file); a spare
// nobody else opened is reused, still locked, and one that a waiter or a
// straggler opened is marked stale for them and never reused.
func TestSpareLocks(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	lockedThrough := func(base string) unix.Stat_t {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(s.RealStoreDir(), base+".lock"), &st); err != nil || st.Nlink != 2 || st.Size != 0 {
			t.Fatalf("lock file of %s %+v, %v: want an empty hard link to a spare", base, st, err)
		}
		return st
	}
	l, err := s.lockStorePaths(ctx, []string{"aaa-x"})
	if err != nil {
		t.Fatal(err)
	}
	held := lockedThrough("aaa-x")
	lockFile := filepath.Join(s.RealStoreDir(), "aaa-x.lock")
	// Pin the inodes compared below, so that a deleted spare's number is not
	// given to the next file (an O_PATH descriptor opens nothing for reading
	// or writing, so a lease still sees the spare as unshared).
	pin := func(base string) {
		t.Helper()
		fd, err := unix.Open(filepath.Join(s.RealStoreDir(), base+".lock"), unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
	}
	pin("aaa-x")
	got := make(chan *PathLocks)
	go func() {
		pl, err := LockPaths(ctx, []string{filepath.Join(s.RealStoreDir(), "aaa-x")})
		if err != nil {
			t.Error(err)
		}
		got <- pl
	}()
	select {
	case <-got:
		t.Fatal("a plain locker got a path held through a spare")
	case <-time.After(100 * time.Millisecond):
	}
	l.Unlock(true)
	var pl *PathLocks
	select {
	case pl = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("the plain locker did not get the lock once released")
	}
	var fresh unix.Stat_t
	if err := unix.Stat(lockFile, &fresh); err != nil || fresh.Ino == held.Ino || fresh.Size != 0 {
		t.Errorf("after release the waiter holds %+v (%v), want a fresh lock file", fresh, err)
	}
	pl.Unlock(true)
	// The waiter had the spare open: it is gone, not reused.
	l2, err := s.lockStorePaths(ctx, []string{"bbb-y"})
	if err != nil {
		t.Fatal(err)
	}
	st2 := lockedThrough("bbb-y")
	pin("bbb-y")
	if st2.Ino == held.Ino {
		t.Errorf("bbb-y locked through the spare a waiter had open")
	}
	// Nobody else opened this one: it serves the next path as it is.
	l2.Unlock(true)
	l3, err := s.lockStorePaths(ctx, []string{"ccc-z"})
	if err != nil {
		t.Fatal(err)
	}
	if st3 := lockedThrough("ccc-z"); st3.Ino != st2.Ino {
		t.Errorf("spare not reused: inode %d, spare %d", st3.Ino, st2.Ino)
	}
	// A straggler opens it under its name, then the path is released: the
	// spare must not serve the next path, and the straggler must find it
	// stale.
	straggler, err := unix.Open(filepath.Join(s.RealStoreDir(), "ccc-z.lock"), unix.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	l3.Unlock(true)
	l4, err := s.lockStorePaths(ctx, []string{"ddd-w"})
	if err != nil {
		t.Fatal(err)
	}
	if st4 := lockedThrough("ddd-w"); st4.Ino == st2.Ino {
		t.Errorf("ddd-w locked through a spare a straggler still has open")
	}
	if err := unix.Flock(straggler, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Errorf("the straggler cannot take the released lock: %v", err)
	}
	var sst unix.Stat_t
	if unix.Fstat(straggler, &sst); sst.Size == 0 {
		t.Errorf("the straggler's lock file is not marked stale")
	}
	unix.Close(straggler)
	l4.Unlock(true)
	ents, _ := os.ReadDir(s.RealStoreDir())
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".lock") {
			t.Errorf("lock file left: %s", e.Name())
		}
	}
}

// TestReadAhead: the read-ahead hands out the source's bytes in order and
// hashes exactly those consumed, whether the source fits in one buffer (read
// inline) or spans the ring several times.
func TestReadAhead(t *testing.T) {
	data := make([]byte, 3*aheadBuffers*aheadBufferSize+12345)
	for i := range data {
		data[i] = byte(i*7 + i>>9)
	}
	tests := []struct {
		name          string
		size, consume int
	}{
		{"empty", 0, 0},
		{"small, all", 1000, 1000},
		{"small, part", 1000, 600},
		{"one buffer exactly", aheadBufferSize, aheadBufferSize},
		{"big, all", len(data), len(data)},
		{"big, part", len(data), 700001},
		{"big, none", len(data), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newNarHashers(0)
			ra := newReadAhead(iotestHalfReader{bytes.NewReader(data[:tt.size])}, h)
			got := make([]byte, tt.consume)
			if _, err := io.ReadFull(ra, got); err != nil {
				t.Fatal(err)
			}
			if tt.consume == tt.size {
				if n, err := ra.Read(make([]byte, 10)); n != 0 || err != io.EOF {
					t.Errorf("Read at the end = %d, %v", n, err)
				}
			}
			ra.finish()
			if !bytes.Equal(got, data[:tt.consume]) {
				t.Errorf("bytes differ")
			}
			want := newNarHashers(0)
			want.Write(data[:tt.consume])
			if g, w := h.result(), want.result(); g.narHash != w.narHash || g.narSize != w.narSize {
				t.Errorf("hashed %d bytes %v, want %d %v", g.narSize, g.narHash, w.narSize, w.narHash)
			}
		})
	}
}

// iotestHalfReader returns at most half of what each Read asks for.
type iotestHalfReader struct{ r io.Reader }

func (h iotestHalfReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:len(p)/2]
	}
	return h.r.Read(p)
}

// manySmallFiles is a tree whose small files the restore hands to its
// writers (more of them than fit in the queue), in nested directories, with a
// file of exactly the largest size a writer takes and one just over it.
func manySmallFiles() map[string]string {
	files := map[string]string{
		"edge/at-max":   strings.Repeat("m", smallFileMax),
		"edge/over-max": strings.Repeat("o", smallFileMax+1),
	}
	for i := range 300 {
		data := fmt.Sprintf("file %d\n", i)
		if i%7 == 0 {
			data = "*" + data // executable
		}
		files[fmt.Sprintf("d%d/sub%d/f%d", i%5, i%3, i)] = data
	}
	return files
}

// TestRestoreCanonicalTruncated: a NAR cut anywhere in a tree of small files
// fails the restore with an error, after the writers are done (the entry
// can then be removed), never a hang or a crash.
func TestRestoreCanonicalTruncated(t *testing.T) {
	src := filepath.Join(t.TempDir(), "many")
	writeTree(t, src, manySmallFiles())
	narBytes := narOf(t, src)
	dir := t.TempDir()
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dfd)
	for _, cut := range []int{len(narBytes) / 7, len(narBytes) / 2, len(narBytes) - 200, len(narBytes) - 1} {
		_, err := restoreCanonical(nar.NewReader(bytes.NewReader(narBytes[:cut])), dfd, "got", dir+"/got",
			readUmask(), make([]byte, 4096), false)
		if err == nil {
			t.Errorf("cut at %d of %d: no error", cut, len(narBytes))
		}
		if err := removeTree(dfd, "got"); err != nil {
			t.Errorf("cut at %d: remove: %v", cut, err)
		}
	}
}
