package gcroots

import (
	"context"
	"crypto/sha1"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"cairn/internal/nixbase32"
	"cairn/internal/storepath"
)

func TestRoots(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	r := New(state, storepath.DefaultStoreDir, filepath.Join(dir, "store"))
	p1, _ := storepath.Parse("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt")
	p2, _ := storepath.Parse("/nix/store/y4rfwymqjf9qz65h5c3wyzb3m4a83xy9-hello")
	ctx := context.Background()

	// Indirect roots are named by nix32(sha1(link)), as Nix's addIndirectRoot.
	link := filepath.Join(dir, "home", "result")
	sum := sha1.Sum([]byte(link))
	if got, want := r.IndirectLink(link), filepath.Join(state, "gcroots/auto", nixbase32.EncodeToString(sum[:])); got != want {
		t.Fatalf("indirect link %s, want %s", got, want)
	}
	root, err := r.AddPerm(p1, link)
	if err != nil || root != link {
		t.Fatalf("AddPerm: %q %v", root, err)
	}
	if _, err := r.AddPerm(p1, "/nix/store/x"); err == nil {
		t.Error("root in the store accepted")
	}
	os.WriteFile(filepath.Join(dir, "home", "file"), nil, 0o644)
	if _, err := r.AddPerm(p1, filepath.Join(dir, "home", "file")); err == nil {
		t.Error("existing file clobbered")
	}
	// A stale indirect root is removed.
	if err := r.AddIndirect(filepath.Join(dir, "gone")); err != nil {
		t.Fatal(err)
	}
	// A direct root: a symlink in gcroots, and one in profiles.
	os.MkdirAll(filepath.Join(state, "profiles"), 0o755)
	os.Symlink(p2.String(), filepath.Join(state, "profiles", "p"))
	// A temp root of a live holder, and a stale file of a dead one.
	tr, err := r.OpenTemp()
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Add(ctx, p2); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(state, "temproots", "12345")
	os.WriteFile(stale, []byte(p1.String()+"\x00"), 0o600)

	var msgs []string
	roots, err := r.Find(ctx, FindOptions{Log: func(s string) { msgs = append(msgs, s) }})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, x := range roots {
		got = append(got, x.Link+" -> "+x.Path.String())
	}
	num := strings.TrimPrefix(filepath.Base(tr.Name()), "")
	want := []string{
		link + " -> " + p1.String(),
		filepath.Join(state, "profiles", "p") + " -> " + p2.String(),
		"{temp:" + num + "} -> " + p2.String(),
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("roots:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, err := os.Lstat(stale); err == nil {
		t.Error("stale temp roots file kept")
	}
	if _, err := os.Lstat(r.IndirectLink(filepath.Join(dir, "gone"))); err == nil {
		t.Error("stale indirect root kept")
	}
	// Censored for untrusted callers; invalid paths skipped.
	roots, _ = r.Find(ctx, FindOptions{Censor: true, Valid: func(p storepath.StorePath) bool { return p == p2 }})
	if len(roots) != 1 || roots[0].Link != Censored || roots[0].Path != p2 {
		t.Fatalf("censored roots %+v", roots)
	}
	// The temp roots file is write-locked while held, and goes on Close.
	f, _ := os.OpenFile(tr.Name(), os.O_RDWR, 0)
	if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
		t.Error("temp roots file not locked")
	}
	f.Close()
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(tr.Name()); err == nil {
		t.Error("temp roots file left")
	}
	if n := filepath.Base(tr.Name()); len(n) < 8 {
		t.Errorf("temp roots name %s may clash with a pid", n)
	}
	// Per-user directories.
	if err := r.CreateUserDirs("alice", os.Getuid(), false); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(state, "gcroots/per-user/alice")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("per-user dir: %v %v", fi, err)
	}
	if err := r.CreateUserDirs("../x", 0, false); err == nil {
		t.Error("bad user name accepted")
	}
}

// TestTempRootsWhileCollecting: while a collector holds the GC lock, a new temp
// root is sent to its socket, and it is in the temp roots file already when
// the collector gets it: a collector may release the lock as soon as it has
// answered, and the next one reads only the files (the adder, descheduled
// between the answer and a later write, lost its root to that one).
func TestTempRootsWhileCollecting(t *testing.T) {
	dir := t.TempDir()
	r := New(dir, storepath.DefaultStoreDir, "")
	p, _ := storepath.Parse("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt")
	lock, err := os.OpenFile(filepath.Join(dir, GCLockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "gc-socket"), 0o755)
	ln, err := netListen(filepath.Join(dir, GCSocketName))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	tr, err := r.OpenTemp()
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	type received struct{ line, file string }
	got := make(chan received, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		buf := make([]byte, 200)
		n, _ := c.Read(buf)
		file, _ := os.ReadFile(tr.Name())
		got <- received{string(buf[:n]), string(file)}
		c.Write([]byte("1"))
	}()
	if err := tr.Add(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	g := <-got
	if g.line != p.String()+"\n" {
		t.Fatalf("collector got %q", g.line)
	}
	if g.file != p.String()+"\x00" {
		t.Fatalf("temp roots file %q when the collector got the root, want %q", g.file, p.String()+"\x00")
	}
}

func netListen(path string) (interface {
	Accept() (net.Conn, error)
	Close() error
}, error) {
	return net.Listen("unix", path)
}
