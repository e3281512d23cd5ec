package remote_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cairn/internal/nixhash"
	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/store/remote"
	"cairn/internal/store/storetest"
	"cairn/internal/storepath"
	"cairn/internal/testutil/nixtest"
)

// daemons are the daemons the suite runs against: the reference nix-daemon
// 2.8 and `cairn daemon` (built from this tree) once it exists.
func daemons(t *testing.T) map[string]func(t *testing.T) *storetest.Daemon {
	return map[string]func(t *testing.T) *storetest.Daemon{
		"nix-daemon": func(t *testing.T) *storetest.Daemon {
			nixtest.Require(t, "nix-daemon")
			return storetest.StartDaemon(t, "nix-daemon")
		},
		"cairn-daemon": func(t *testing.T) *storetest.Daemon {
			return storetest.StartDaemon(t, cairnBinary(t), "daemon")
		},
	}
}

// cairnBinary builds cmd/cairn once per test binary, or skips when this tree
// has no daemon verb yet.
func cairnBinary(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("../../cli/daemon.go"); err != nil {
		t.Skip("cairn daemon not written yet (internal/cli/daemon.go)")
	}
	return storetest.BuildCairn(t)
}

func openRemote(t *testing.T, d *storetest.Daemon, opts remote.Options) *remote.Store {
	t.Helper()
	cfg, err := store.ParseURL("unix://"+d.Socket, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	s, err := remote.Open(context.Background(), cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	for name, start := range daemons(t) {
		t.Run(name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) store.Store {
				return openRemote(t, start(t), remote.Options{MaxConns: 8})
			})
		})
	}
}

func TestRemote(t *testing.T) {
	for name, start := range daemons(t) {
		t.Run(name, func(t *testing.T) {
			d := start(t)
			s := openRemote(t, d, remote.Options{MaxConns: 4})
			for _, tt := range remoteTests {
				t.Run(tt.name, func(t *testing.T) { tt.run(t, d, s) })
			}
		})
	}
}

var remoteTests = []struct {
	name string
	run  func(t *testing.T, d *storetest.Daemon, s *remote.Store)
}{
	{"Info", testInfo},
	{"DaemonError", testDaemonError},
	{"Cancel", testCancel},
	{"SourceFails", testSourceFails},
	{"Roots", testRoots},
	{"AddPaths", testAddPaths},
	{"Stdio", testStdio},
	{"Log", testLog},
}

func testInfo(t *testing.T, d *storetest.Daemon, s *remote.Store) {
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !info.Version.AtLeast(25) || info.NixVersion == "" {
		t.Errorf("Info = %+v, want ≥1.25 and a version string", info)
	}
	t.Logf("daemon speaks %v, says %q, trusted %v", info.DaemonVersion, info.NixVersion, info.Trusted)
}

// testDaemonError: a failed op carries the daemon's message, and the
// connection goes on serving.
func testDaemonError(t *testing.T, d *storetest.Daemon, s *remote.Store) {
	ctx := context.Background()
	// A text path may not be named "..".
	_, err := s.AddText(ctx, "bad/name", "x", nil)
	var re *remote.Error
	if !errors.As(err, &re) {
		t.Fatalf("AddText(bad name) error = %v (%T), want *remote.Error", err, err)
	}
	if re.Message == "" || strings.Contains(re.Message, "\x1b") {
		t.Errorf("message = %q", re.Message)
	}
	t.Logf("daemon said: %v", err)
	for range 8 { // more ops than connections: they must all still work
		if _, err := s.AddText(ctx, "ok", "fine "+t.Name(), nil); err != nil {
			t.Fatalf("AddText after an error: %v", err)
		}
	}
}

func testCancel(t *testing.T, d *storetest.Daemon, s *remote.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	// A payload that never ends: the op can only finish by cancellation.
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() {
		pw.Write([]byte("endless"))
		time.Sleep(100 * time.Millisecond)
		cancel()
	}()
	start := time.Now()
	_, err := s.AddCA(ctx, "endless", nixhash.Flat, nixhash.SHA256, nil, pr)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("AddCA cancelled: error = %v, want context.Canceled", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("cancellation took %v", time.Since(start))
	}
	pw.CloseWithError(io.ErrClosedPipe)
	if _, err := s.AddText(context.Background(), "after-cancel", "x "+t.Name(), nil); err != nil {
		t.Fatalf("AddText after a cancelled op: %v", err)
	}
	if _, err := s.QueryPathInfo(ctx, fakePath(t, s)); !errors.Is(err, context.Canceled) {
		t.Errorf("op on a cancelled ctx: error = %v", err)
	}
}

// testSourceFails: a payload source that fails mid-way must not become a
// valid (truncated) path.
func testSourceFails(t *testing.T, d *storetest.Daemon, s *remote.Store) {
	ctx := context.Background()
	src := io.MultiReader(strings.NewReader("partial "+t.Name()), errReader{})
	_, err := s.AddCA(ctx, "partial", nixhash.Flat, nixhash.SHA256, nil, src)
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("AddCA with a failing source: error = %v", err)
	}
	ca := nixhash.ContentAddress{Method: nixhash.Flat, Hash: nixhash.Sum(nixhash.SHA256, []byte("partial "+t.Name()))}
	p, _ := s.StoreDir().MakeFixedOutputPath("partial", ca, nil, false)
	if ok, err := s.IsValidPath(ctx, p); ok || err != nil {
		t.Errorf("truncated path valid = %v, %v", ok, err)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("boom") }

func fakePath(t *testing.T, s *remote.Store) storepath.StorePath {
	p, err := s.StoreDir().MakeStorePath("fake", nixhash.Sum(nixhash.SHA256, []byte(t.Name())), "fake")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func testRoots(t *testing.T, d *storetest.Daemon, s *remote.Store) {
	ctx := context.Background()
	info, err := s.AddText(ctx, "rooted", "root me "+t.Name(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AddTempRoot(ctx, info.Path); err != nil {
		t.Errorf("AddTempRoot: %v", err)
	}
	link := filepath.Join(t.TempDir(), "result")
	if err := os.Symlink(info.Path.String(), link); err != nil {
		t.Fatal(err)
	}
	if err := s.AddIndirectRoot(ctx, link); err != nil {
		t.Errorf("AddIndirectRoot: %v", err)
	}
	if err := s.EnsurePath(ctx, info.Path); err != nil {
		t.Errorf("EnsurePath(valid): %v", err)
	}
	if err := s.EnsurePath(ctx, fakePath(t, s)); err == nil {
		t.Errorf("EnsurePath(invalid) succeeded")
	}
	// The connection carries on after EnsurePath failed.
	if _, err := s.QueryPathInfo(ctx, info.Path); err != nil {
		t.Errorf("QueryPathInfo after EnsurePath failed: %v", err)
	}
}

func testAddPaths(t *testing.T, d *storetest.Daemon, s *remote.Store) {
	nixtest.Require(t, "nix-store")
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(tree, "sub"), 0o755)
	os.WriteFile(filepath.Join(tree, "sub", "x"), []byte("x "+t.Name()), 0o755)
	os.WriteFile(filepath.Join(tree, "y"), []byte("y"), 0o644)
	os.Symlink("sub/x", filepath.Join(tree, "link"))
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("flat "+t.Name()), 0o644)
	ctx := context.Background()
	infos, err := s.AddPaths(ctx, []string{tree, file}, nixhash.Recursive, nixhash.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	// nix-store --add on a throwaway store gives the same paths.
	ref := nixtest.NewStore(t)
	want := strings.Fields(ref.Run(t, nil, "nix-store", "--add", tree, file))
	for i, info := range infos {
		if info.Path.String() != want[i] {
			t.Errorf("AddPaths[%d] = %s, nix-store --add gives %s", i, info.Path, want[i])
		}
	}
	flat, err := s.AddPaths(ctx, []string{file}, nixhash.Flat, nixhash.SHA1)
	if err != nil {
		t.Fatal(err)
	}
	wantFlat := ref.Run(t, nil, "nix-store", "--add-fixed", "sha1", file)
	if flat[0].Path.String() != wantFlat {
		t.Errorf("AddPaths flat sha1 = %s, nix-store --add-fixed gives %s", flat[0].Path, wantFlat)
	}
}

// testStdio runs the daemon protocol over a pair of pipes: `nix-daemon
// --stdio` for the reference (it then forwards to the daemon socket), as an
// ssh-ng store does.
func testStdio(t *testing.T, d *storetest.Daemon, s *remote.Store) {
	nixtest.Require(t, "nix-daemon")
	cmd := exec.Command("nix-daemon", "--stdio")
	cmd.Env = append(storetest.DaemonEnv(d.Dir), "NIX_DAEMON_SOCKET_PATH="+d.Socket, "NIX_REMOTE=unix://"+d.Socket)
	rwc, err := stdioConn(cmd)
	if err != nil {
		t.Fatal(err)
	}
	rs := remote.NewConn(s.StoreDir(), rwc, remote.Options{NoSetOptions: true})
	defer rs.Close()
	ctx := context.Background()
	info, err := s.AddText(ctx, "stdio", "over stdio "+t.Name(), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := rs.QueryPathInfo(ctx, info.Path)
	if err != nil {
		t.Fatalf("QueryPathInfo over stdio: %v", err)
	}
	if got.NarHash != info.NarHash {
		t.Errorf("narHash over stdio = %s, want %s", got.NarHash, info.NarHash)
	}
	var buf bytes.Buffer
	if err := rs.NarFromPath(ctx, info.Path, &buf); err != nil || buf.Len() != int(info.NarSize) {
		t.Errorf("NarFromPath over stdio: %d bytes, %v", buf.Len(), err)
	}
}

type cmdConn struct {
	io.Reader
	io.WriteCloser
	cmd *exec.Cmd
}

func (c *cmdConn) Close() error {
	c.WriteCloser.Close()
	return c.cmd.Wait()
}

func stdioConn(cmd *exec.Cmd) (io.ReadWriteCloser, error) {
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &cmdConn{Reader: out, WriteCloser: in, cmd: cmd}, nil
}

// testLog: with verbosity raised, the daemon's messages reach Options.Log.
func testLog(t *testing.T, d *storetest.Daemon, s *remote.Store) {
	var msgs []*protocol.Message
	opts := remote.DefaultClientOptions()
	opts.Verbosity = protocol.LvlVomit
	cfg, _ := store.ParseURL("unix://"+d.Socket, func(string) string { return "" })
	ls, err := remote.Open(context.Background(), cfg, remote.Options{MaxConns: 1, ClientOptions: opts,
		Log: func(m *protocol.Message) { msgs = append(msgs, m) }})
	if err != nil {
		t.Fatal(err)
	}
	defer ls.Close()
	if _, err := ls.AddText(context.Background(), "logged", "log "+t.Name(), nil); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d messages at vomit level", len(msgs))
}

// TestHungUp: an idle connection the daemon closed is replaced transparently.
func TestHungUp(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := 0
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted++
			n := accepted
			go fakeDaemon(c, n == 1)
		}
	}()
	s := remote.New(storepath.DefaultStoreDir, remote.SocketDialer(sock), remote.Options{MaxConns: 1})
	defer s.Close()
	p, _ := storepath.DefaultStoreDir.FromBase("00000000000000000000000000000000-x")
	ctx := context.Background()
	if ok, err := s.IsValidPath(ctx, p); err != nil || !ok {
		t.Fatalf("IsValidPath #1 = %v, %v", ok, err)
	}
	// The first connection hung up after one op; the second op must work.
	if ok, err := s.IsValidPath(ctx, p); err != nil || !ok {
		t.Fatalf("IsValidPath #2 = %v, %v", ok, err)
	}
	if accepted != 2 {
		t.Errorf("%d connections, want 2", accepted)
	}
}

// fakeDaemon answers SetOptions and IsValidPath (true), hanging up after one
// IsValidPath when once is set.
func fakeDaemon(c net.Conn, once bool) {
	defer c.Close()
	r, w := wireReader(c), wireWriter(c)
	if _, err := protocol.ServerHandshake(r, w, protocol.ServerInfo{Version: protocol.Nix28, NixVersion: "fake"}); err != nil {
		return
	}
	l := protocol.NewLogger(w, protocol.Params{Version: protocol.Nix28})
	l.Last()
	for {
		req, err := protocol.ReadRequest(r, protocol.Params{Version: protocol.Nix28})
		if err != nil {
			return
		}
		l.Last()
		if req.Op() == protocol.OpIsValidPath {
			w.Uint64(1)
			w.Flush()
			if once {
				return
			}
		}
	}
}
