package gc

import (
	"bufio"
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"cairn/internal/gcroots"
	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
)

// serveRootsAt runs ServeRoots on a Unix socket at path until the test ends.
func serveRootsAt(t *testing.T, path string, dir storepath.StoreDir, find RuntimeRoots) {
	t.Helper()
	ln, err := listenAt(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeRoots(ctx, ln, dir, find, func(msg string) { t.Log(msg) }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeRoots: %v", err)
		}
	})
}

func listenAt(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	return net.Listen("unix", path)
}

// TestRootsDaemonProtocol: the server names each store path a process uses
// once, sorted, NUL-terminated (a file inside a path names the path; a
// target outside the store names nothing); the client reads them back as
// censored roots.
func TestRootsDaemonProtocol(t *testing.T) {
	dir := storepath.DefaultStoreDir
	a := "/nix/store/0c8a1m6w8sfiaxrpdh1lw8gc1qkxrjlx-a"
	b := "/nix/store/1b9fwfkwr0kn2zkqsg1kznh4fwvpzq5l-b"
	find := func(context.Context, storepath.StoreDir) ([]RuntimeRoot, error) {
		return []RuntimeRoot{
			{Link: "/proc/1/exe", Target: b + "/bin/b"},
			{Link: "/proc/1/cwd", Target: a},
			{Link: "/proc/2/maps", Target: a + "/lib/liba.so"},
			{Link: "/proc/2/fd/3", Target: "/etc/passwd"},
			{Link: "/proc/3/environ", Target: "/nix/store/not-a-store-path"},
		}, nil
	}
	sock := filepath.Join(t.TempDir(), "gc-roots-socket", "socket")
	serveRootsAt(t, sock, dir, find)

	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := bufio.NewReader(conn).ReadString('\xff')
	conn.Close()
	if want := a + "\x00" + b + "\x00"; raw != want {
		t.Errorf("the daemon wrote %q, want %q", raw, want)
	}

	rs, err := DaemonRoots(sock)(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []RuntimeRoot{{Link: gcroots.Censored, Target: a}, {Link: gcroots.Censored, Target: b}}
	if !slices.Equal(rs, want) {
		t.Errorf("DaemonRoots = %v, want %v", rs, want)
	}
}

// TestReadDaemonRootsBad: a path past the limit, or an answer that ends
// inside a path, is an error; an empty path ends the answer.
func TestReadDaemonRootsBad(t *testing.T) {
	for _, tt := range []struct {
		name, in string
		ok       bool
		n        int
	}{
		{"empty", "", true, 0},
		{"two", "/nix/store/x\x00/nix/store/y\x00", true, 2},
		{"empty path ends", "/nix/store/x\x00\x00junk", true, 1},
		{"truncated", "/nix/store/x\x00/nix/st", false, 0},
		{"too long", strings.Repeat("a", maxDaemonRootLen+1) + "\x00", false, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rs, err := readDaemonRoots(bufio.NewReader(strings.NewReader(tt.in)))
			if (err == nil) != tt.ok || len(rs) != tt.n {
				t.Errorf("read %q: %d roots, %v", tt.in, len(rs), err)
			}
		})
	}
}

func FuzzReadDaemonRoots(f *testing.F) {
	f.Add("/nix/store/0c8a1m6w8sfiaxrpdh1lw8gc1qkxrjlx-a\x00")
	f.Add("\x00")
	f.Fuzz(func(t *testing.T, in string) {
		rs, err := readDaemonRoots(bufio.NewReader(strings.NewReader(in)))
		if err != nil {
			return
		}
		for _, r := range rs {
			if r.Target == "" || strings.IndexByte(r.Target, 0) >= 0 || len(r.Target) > maxDaemonRootLen {
				t.Fatalf("root %q", r.Target)
			}
		}
	})
}

// TestCollectAsksRootsDaemon: a store opened with use-roots-daemon=true keeps
// what the roots daemon names (and what it refers to), deletes the rest,
// and fails to collect, deleting nothing, when no roots daemon answers.
func TestCollectAsksRootsDaemon(t *testing.T) {
	root := t.TempDir()
	cfg, err := store.ParseURL("local?root="+root+"&use-roots-daemon=true", nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := local.Open(context.Background(), cfg, local.Options{NoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	roots := gcroots.New(cfg.StateDir, cfg.StoreDir, cfg.RealStoreDir)
	dep := addText(t, st, "dep", "dep")
	used := addText(t, st, "used", "used", dep)
	dead := addText(t, st, "dead", "dead")
	ctx := context.Background()

	if _, err := Collect(ctx, st, roots, Options{Action: protocol.GCDeleteDead, MaxFreed: NoLimit}); err == nil {
		t.Fatal("collected without a roots daemon to ask")
	}
	for _, p := range []storepath.StorePath{dep, used, dead} {
		if ok, _ := st.IsValidPath(ctx, p); !ok {
			t.Fatalf("%s deleted by the failed collection", p)
		}
	}

	serveRootsAt(t, RootsSocketPath(cfg.StateDir), cfg.StoreDir, func(context.Context, storepath.StoreDir) ([]RuntimeRoot, error) {
		return []RuntimeRoot{{Link: "/proc/1/cwd", Target: st.RealPath(used)}, {Link: "/proc/1/exe", Target: used.String()}}, nil
	})
	res, err := Collect(ctx, st, roots, Options{Action: protocol.GCDeleteDead, MaxFreed: NoLimit})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Paths, []string{dead.String()}) {
		t.Errorf("deleted %v, want only %s", res.Paths, dead)
	}
	for _, p := range []storepath.StorePath{dep, used} {
		if ok, _ := st.IsValidPath(ctx, p); !ok {
			t.Errorf("%s deleted although the roots daemon names it or a referrer", p)
		}
	}
}
