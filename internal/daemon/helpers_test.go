package daemon

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cairn/internal/config"
	"cairn/internal/gc"
	"cairn/internal/gcroots"
	"cairn/internal/metrics"
	"cairn/internal/nar"
	"cairn/internal/nixhash"
	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
	"cairn/internal/wire"
)

// testDaemon is a Server on a throwaway chroot store, listening on a socket in
// a temp dir.
type testDaemon struct {
	t        *testing.T
	dir      string
	cfg      *store.Config
	st       *local.Store
	srv      *Server
	sock     string
	decision atomic.Pointer[Decision]
	policy   atomic.Pointer[Policy] // when set, decides instead of decision
	logMu    sync.Mutex
	logs     []string
}

func newTestDaemon(t *testing.T, settings ...[2]string) *testDaemon {
	t.Helper()
	return newTestDaemonAt(t, func(dir string) string { return "local?root=" + filepath.Join(dir, "root") }, settings...)
}

// newTestDaemonAt is newTestDaemon on the store whose URL url makes from
// the test's directory.
func newTestDaemonAt(t *testing.T, url func(dir string) string, settings ...[2]string) *testDaemon {
	t.Helper()
	dir := t.TempDir()
	// Build users (nixbld, the default for root) must reach the state dir's
	// build dirs: t.TempDir's parent is 0700.
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755)
	cfg, err := store.ParseURL(url(dir), func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := config.New()
	s.Set("substituters", "")
	for _, kv := range settings {
		if err := s.Set(kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	// As cairn daemon opens its store, but without syncs or db/reserved.
	st, err := local.Open(ctx, cfg, local.Options{NoFsync: true, ReservedSize: -1, AutoOptimise: s.Bool("auto-optimise-store"),
		BuildUsersGroup: s.Get("build-users-group")})
	if err != nil {
		t.Fatal(err)
	}
	td := &testDaemon{t: t, dir: dir, cfg: cfg, st: st, sock: filepath.Join(dir, "sock", "socket")}
	td.decision.Store(&Decision{User: "tester", UID: uint32(os.Getuid()), Allowed: true, Trusted: true})
	td.srv = &Server{
		Store:    st,
		Settings: s,
		Roots:    gcroots.New(cfg.StateDir, cfg.StoreDir, cfg.RealStoreDir),
		LogDir:   cfg.LogDir,
		SpinWait: DefaultSpinWait, // as cairn daemon runs
		Auth: func(ctx context.Context, peer Peer) (Decision, error) {
			if p := td.policy.Load(); p != nil {
				return p.Authorize(ctx, peer)
			}
			return *td.decision.Load(), nil
		},
		ErrorLog: func(s string) {
			td.logMu.Lock()
			td.logs = append(td.logs, s)
			td.logMu.Unlock()
		},
	}
	td.srv.AutoGC = gc.NewAuto(st, td.srv.Roots, s, td.srv.ErrorLog)
	td.srv.Metrics = metrics.New() // counted in every test; checked in TestMetrics
	if td.srv.AutoGC != nil {
		td.srv.AutoGC.Collected = td.srv.Metrics.Collected
	}
	ln, err := Listen(td.sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		td.srv.Serve(ctx, ln)
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		st.Close()
	})
	return td
}

func (td *testDaemon) setDecision(d Decision) { td.decision.Store(&d) }

// client is a minimal worker protocol client for tests.
type client struct {
	t    *testing.T
	c    net.Conn
	r    *wire.Reader
	w    *wire.Writer
	p    protocol.Params
	info *protocol.DaemonInfo
	msgs []*protocol.Message
}

func (td *testDaemon) dialRaw() net.Conn {
	td.t.Helper()
	c, err := net.Dial("unix", td.sock)
	if err != nil {
		td.t.Fatal(err)
	}
	td.t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(time.Minute))
	return c
}

func (td *testDaemon) dial(cfg protocol.ClientConfig) (*client, error) {
	td.t.Helper()
	c := td.dialRaw()
	cl := &client{t: td.t, c: c, r: wire.NewReader(c), w: wire.NewWriter(c)}
	cl.r.StoreDir = storepath.DefaultStoreDir
	di, err := protocol.ClientHandshake(cl.r, cl.w, cfg, func(m *protocol.Message) error {
		cl.msgs = append(cl.msgs, m)
		return nil
	})
	if err != nil {
		return cl, err
	}
	cl.info, cl.p = di, di.Params
	return cl, nil
}

func (td *testDaemon) mustDial(cfg protocol.ClientConfig) *client {
	td.t.Helper()
	cl, err := td.dial(cfg)
	if err != nil {
		td.t.Fatal(err)
	}
	return cl
}

// call sends req with an optional framed payload and returns the reply.
func (cl *client) call(req protocol.Request, payload []byte) (protocol.Reply, error) {
	cl.t.Helper()
	protocol.WriteRequest(cl.w, cl.p, req)
	if payload != nil {
		fw := wire.NewFramedWriter(cl.w)
		fw.Write(payload)
		if err := fw.Close(); err != nil {
			return nil, err
		}
	}
	return cl.finish(req.Op())
}

// finish reads the stderr channel and the reply of op.
func (cl *client) finish(op protocol.Op) (protocol.Reply, error) {
	if err := cl.w.Flush(); err != nil {
		return nil, err
	}
	cl.msgs = nil
	if err := protocol.ProcessStderr(cl.r, cl.p, func(m *protocol.Message) error {
		cl.msgs = append(cl.msgs, m)
		return nil
	}); err != nil {
		return nil, err
	}
	reply := protocol.NewReply(op, cl.p)
	if reply != nil {
		reply.Read(cl.r, cl.p)
	}
	return reply, cl.r.Err()
}

func (cl *client) mustCall(req protocol.Request, payload []byte) protocol.Reply {
	cl.t.Helper()
	r, err := cl.call(req, payload)
	if err != nil {
		cl.t.Fatalf("%v: %v", req.Op(), err)
	}
	return r
}

// logText joins the log lines of the last call.
func (cl *client) logText() string {
	var b bytes.Buffer
	for _, m := range cl.msgs {
		if m.Code == protocol.StderrNext {
			b.WriteString(m.Text)
		}
	}
	return b.String()
}

// fileNAR returns the NAR of a regular file with contents s, and its info for
// path name (a flat sha256 content address is not used: the path is made
// input-addressed-like from the NAR hash, as a source path).
func fileNAR(t *testing.T, s string) []byte {
	t.Helper()
	var b bytes.Buffer
	w := nar.NewWriter(&b)
	if err := w.WriteHeader(&nar.Header{Type: nar.TypeRegular, Size: int64(len(s))}); err != nil {
		t.Fatal(err)
	}
	w.Write([]byte(s))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// narInfo returns a PathInfo for data (a NAR) at an input-addressed-looking
// path named name: it carries no content address, so it needs a signature.
func narInfo(t *testing.T, name string, data []byte) *protocol.PathInfo {
	t.Helper()
	h := nixhash.Sum(nixhash.SHA256, data)
	inner := nixhash.Sum(nixhash.SHA256, append([]byte(name+":"), data...))
	p, err := storepath.DefaultStoreDir.MakeStorePath("output:out", inner, name)
	if err != nil {
		t.Fatal(err)
	}
	return &protocol.PathInfo{Path: p, NarHash: h, NarSize: uint64(len(data))}
}

// caNarInfo returns the info of data (a NAR) as a content-addressed source
// path named name.
func caNarInfo(t *testing.T, name string, data []byte) *protocol.PathInfo {
	t.Helper()
	h := nixhash.Sum(nixhash.SHA256, data)
	p, err := storepath.DefaultStoreDir.MakeSourcePath(name, h, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	return &protocol.PathInfo{Path: p, NarHash: h, NarSize: uint64(len(data)),
		CA: nixhash.ContentAddress{Method: nixhash.Recursive, Hash: h}}
}

// tempLeft lists what remains in the store's temporaries directory (lock
// directories of live batches aside, it should be empty).
func (td *testDaemon) tempLeft() []string {
	left, err := local.TempLeftovers(td.cfg.RealStoreDir)
	if err != nil {
		return []string{err.Error()}
	}
	return left
}
