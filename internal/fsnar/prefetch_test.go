package fsnar

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// evictFiles drops the page cache of every regular file under dir (written
// back first), and reports whether it could: tmpfs keeps the data whatever
// fadvise says.
func evictFiles(t *testing.T, dir string) bool {
	t.Helper()
	unix.Sync()
	var first string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED)
		unix.Close(fd)
		if first == "" {
			if info, _ := d.Info(); info != nil && info.Size() > 0 {
				first = p
			}
		}
		return nil
	})
	must(t, err)
	return first != "" && !inMemory(t, first)
}

// inMemory reports whether the first byte of the file at p is in the page cache.
func inMemory(t *testing.T, p string) bool {
	t.Helper()
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	must(t, err)
	defer unix.Close(fd)
	var b [1]byte
	_, err = unix.Preadv2(fd, [][]byte{b[:]}, 0, unix.RWF_NOWAIT)
	return err == nil
}

// A tree whose files are not in memory dumps to the same bytes as nar.Dump
// gives, with the fetcher running beside the walker.
func TestDumpEvictedTree(t *testing.T) {
	dir := makeTree(t)
	must(t, os.WriteFile(filepath.Join(dir, "big"), bytes.Repeat([]byte("big "), fetchMaxSize/4+10), 0o644))
	want := narDump(t, dir)
	if !evictFiles(t, dir) {
		t.Skip("the file system keeps evicted files in memory")
	}
	if got := dump(t, dir); !bytes.Equal(got, want) {
		t.Fatalf("dump of an evicted tree differs from nar.Dump (%d vs %d bytes)", len(got), len(want))
	}
}

// The fetcher reads ahead in the walker's order, no further than
// fetchAheadFiles past the walker, and stops once the walk is over.
func TestFetcherWindow(t *testing.T) {
	dir := t.TempDir()
	const dirs, per = 6, 100 // more files than the window
	var order []string
	for d := range dirs {
		sub := filepath.Join(dir, fmt.Sprintf("d%d", d))
		must(t, os.Mkdir(sub, 0o755))
		for f := range per {
			p := filepath.Join(sub, fmt.Sprintf("f%03d", f))
			must(t, os.WriteFile(p, []byte(p), 0o644))
			order = append(order, p)
		}
	}
	if !evictFiles(t, dir) {
		t.Skip("the file system keeps evicted files in memory")
	}
	const walked = 40 // as if the walker had dumped these
	p := &progress{}
	p.files.Store(walked)
	f := &fetcher{p: p, buf: new([direntBufferSize]byte)}
	done := make(chan struct{})
	go func() { f.run(dir); close(done) }()

	last := order[walked+fetchAheadFiles-1]
	deadline := time.Now().Add(5 * time.Second)
	for !inMemory(t, last) {
		if time.Now().After(deadline) {
			t.Fatalf("the fetcher did not read %s, the last file of its window", last)
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // room to overstep, were it to
	for _, p := range order[walked+fetchAheadFiles:] {
		if inMemory(t, p) {
			t.Errorf("%s, past the window, was read", p)
		}
	}
	if inMemory(t, order[walked-1]) {
		t.Errorf("%s, which the walker had dumped, was read", order[walked-1])
	}
	p.done.Store(true)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the fetcher did not stop when the walk was over")
	}
}
