package serve

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cairn/internal/config"
	"cairn/internal/daemon"
	"cairn/internal/nar"
	"cairn/internal/nixhash"
	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/store/remote"
	"cairn/internal/storepath"
	"cairn/internal/wire"
)

func testStore(t testing.TB) *local.Store {
	t.Helper()
	cfg, err := store.ParseURL("local?root="+t.TempDir(), func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	st, err := local.Open(context.Background(), cfg, local.Options{NoFsync: true, ReservedSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// session runs the server on what write sends after the handshake, and
// returns the server's reply after its handshake, and its error.
func session(t *testing.T, s *Server, write func(w *wire.Writer)) ([]byte, error) {
	t.Helper()
	var in bytes.Buffer
	w := wire.NewWriter(&in)
	w.Uint64(protocol.ServeMagic1)
	w.Uint64(uint64(protocol.ServeVersion))
	write(w)
	w.Flush()
	var out bytes.Buffer
	err := s.Serve(context.Background(), &in, &out)
	r := wire.NewReader(&out)
	if m := r.Uint64(); m != protocol.ServeMagic2 {
		t.Fatalf("no handshake: %#x %v", m, r.Err())
	}
	r.Uint64()
	rest, _ := io.ReadAll(r)
	return rest, err
}

// addFile adds a file with contents to st and returns its path.
func addFile(t *testing.T, st *local.Store, name, contents string) storepath.StorePath {
	t.Helper()
	f := filepath.Join(t.TempDir(), name)
	os.WriteFile(f, []byte(contents), 0o644)
	infos, err := st.AddPaths(context.Background(), []string{f}, nixhash.Recursive, nixhash.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return infos[0].Path
}

func TestServeQueries(t *testing.T) {
	st := testStore(t)
	p := addFile(t, st, "a", "a\n")
	missing, _ := st.StoreDir().Parse("/nix/store/00000000000000000000000000000000-missing")
	reply, err := session(t, &Server{Store: &Local{Store: st}}, func(w *wire.Writer) {
		w.Uint64(uint64(protocol.ServeQueryValidPaths))
		(&protocol.ServeQueryValidPathsArgs{Paths: []storepath.StorePath{p, missing}}).Write(w)
		w.Uint64(uint64(protocol.ServeQueryPathInfos))
		w.StorePaths([]storepath.StorePath{missing, p})
		w.Uint64(uint64(protocol.ServeQueryClosure))
		w.Bool(false)
		w.StorePaths([]storepath.StorePath{p})
	})
	if err != nil {
		t.Fatal(err)
	}
	r := wire.NewReader(bytes.NewReader(reply))
	if valid := r.StorePaths(); len(valid) != 1 || valid[0] != p {
		t.Errorf("valid %v", valid)
	}
	infos := protocol.ReadServePathInfos(r, protocol.ServeVersion)
	want, _ := st.QueryPathInfo(context.Background(), p)
	if len(infos) != 1 || infos[0].Path != p || infos[0].NarHash != want.NarHash || infos[0].NarSize != want.NarSize {
		t.Errorf("infos %+v", infos)
	}
	if closure := r.StorePaths(); len(closure) != 1 || closure[0] != p || r.Err() != nil {
		t.Errorf("closure %v %v", closure, r.Err())
	}
}

// TestServeWrites: what changes the store needs --write; with it a NAR is
// added, and a NAR shorter than announced registers nothing.
func TestServeWrites(t *testing.T) {
	st := testStore(t)
	src := testStore(t)
	p := addFile(t, src, "b", "b\n")
	info, _ := src.QueryPathInfo(context.Background(), p)
	var narBuf bytes.Buffer
	if err := src.NarFromPath(context.Background(), p, &narBuf); err != nil {
		t.Fatal(err)
	}
	add := func(narBytes []byte) func(w *wire.Writer) {
		return func(w *wire.Writer) {
			w.Uint64(uint64(protocol.ServeAddToStoreNar))
			(&protocol.ServeAddToStoreNarArgs{Info: protocol.PathInfo(*info)}).Write(w)
			w.Write(narBytes)
		}
	}
	for _, cmd := range []protocol.ServeCmd{protocol.ServeImportPaths, protocol.ServeBuildPaths, protocol.ServeBuildDerivation} {
		_, err := session(t, &Server{Store: &Local{Store: st}}, func(w *wire.Writer) { w.Uint64(uint64(cmd)) })
		if err == nil || !strings.Contains(err.Error(), "is not allowed") {
			t.Errorf("%s without --write: %v", cmd, err)
		}
	}
	if _, err := session(t, &Server{Store: &Local{Store: st}}, add(narBuf.Bytes())); err == nil || !strings.Contains(err.Error(), "importing paths is not allowed") {
		t.Errorf("AddToStoreNar without --write: %v", err)
	}
	if _, err := session(t, &Server{Store: &Local{Store: st}, Write: true}, add(narBuf.Bytes()[:narBuf.Len()-8])); err == nil {
		t.Error("a short NAR was accepted")
	}
	if ok, _ := st.IsValidPath(context.Background(), p); ok {
		t.Fatal("a short NAR made the path valid")
	}
	reply, err := session(t, &Server{Store: &Local{Store: st}, Write: true}, add(narBuf.Bytes()))
	if err != nil || !bytes.Equal(reply, []byte{1, 0, 0, 0, 0, 0, 0, 0}) {
		t.Fatalf("AddToStoreNar: %v %x", err, reply)
	}
	if got, err := st.QueryPathInfo(context.Background(), p); err != nil || got.NarHash != info.NarHash {
		t.Errorf("after AddToStoreNar: %+v %v", got, err)
	}
	// The dump of it is the NAR that was sent.
	reply, err = session(t, &Server{Store: &Local{Store: st}}, func(w *wire.Writer) {
		w.Uint64(uint64(protocol.ServeDumpStorePath))
		w.StorePath(p)
	})
	var dumped bytes.Buffer
	if _, cerr := nar.Copy(&dumped, bytes.NewReader(reply)); err != nil || cerr != nil || !bytes.Equal(dumped.Bytes(), narBuf.Bytes()) {
		t.Errorf("DumpStorePath: %v %v", err, cerr)
	}
}

func TestServeBadInput(t *testing.T) {
	st := testStore(t)
	var out bytes.Buffer
	if err := (&Server{Store: &Local{Store: st}}).Serve(context.Background(), strings.NewReader("not the magic at all"), &out); err == nil {
		t.Error("bad magic accepted")
	}
	if _, err := session(t, &Server{Store: &Local{Store: st}}, func(w *wire.Writer) { w.Uint64(99) }); err == nil || !strings.Contains(err.Error(), "unknown serve command 99") {
		t.Errorf("unknown command: %v", err)
	}
}

// FuzzServe: whatever follows the handshake, the server answers or stops
// with an error; it never panics, and with Write it leaves the store
// consistent (every valid path has its files).
func FuzzServe(f *testing.F) {
	var b bytes.Buffer
	w := wire.NewWriter(&b)
	w.Uint64(uint64(protocol.ServeQueryClosure))
	w.Bool(true)
	w.StorePaths(nil)
	w.Flush()
	f.Add(b.Bytes())
	f.Add([]byte{9, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0})
	st := testStore(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var in bytes.Buffer
		w := wire.NewWriter(&in)
		w.Uint64(protocol.ServeMagic1)
		w.Uint64(uint64(protocol.ServeVersion))
		w.Flush()
		in.Write(data)
		(&Server{Store: &Local{Store: st}, Write: true}).Serve(context.Background(), &in, io.Discard)
		paths, err := st.QueryAllValidPaths(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range paths {
			if _, err := os.Lstat(st.RealPath(p)); err != nil {
				t.Fatalf("valid %s without files: %v", p, err)
			}
		}
	})
}

// daemonStore serves st with cairn's daemon on a socket and returns a
// client of it.
func daemonStore(t *testing.T, st *local.Store) *remote.Store {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "socket")
	ln, err := daemon.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := &daemon.Server{Store: st, Settings: config.New(), Auth: func(context.Context, daemon.Peer) (daemon.Decision, error) {
		return daemon.Decision{User: "tester", Allowed: true, Trusted: true}, nil
	}}
	done := make(chan struct{})
	go func() { srv.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	cfg, err := store.ParseURL("unix://"+sock, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	rs, err := remote.Open(ctx, cfg, remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.Close() })
	return rs
}

// TestServeDaemonImportExport: on a daemon's store, ImportPaths adds an
// export stream's paths (spooled, hashed, added through the daemon) and
// ExportPaths writes them back byte for byte.
func TestServeDaemonImportExport(t *testing.T) {
	src := testStore(t)
	a := addFile(t, src, "a", "a\n")
	b := addFile(t, src, "b", "b\n")
	var export bytes.Buffer
	if err := src.Export(context.Background(), &export, []storepath.StorePath{a, b}); err != nil {
		t.Fatal(err)
	}
	dst := testStore(t)
	s := &Server{Store: &Remote{Store: daemonStore(t, dst)}, Write: true}
	reply, err := session(t, s, func(w *wire.Writer) {
		w.Uint64(uint64(protocol.ServeImportPaths))
		w.Write(export.Bytes())
		w.Uint64(uint64(protocol.ServeExportPaths))
		w.Uint64(0)
		w.StorePaths([]storepath.StorePath{a, b})
	})
	if err != nil {
		t.Fatal(err)
	}
	r := wire.NewReader(bytes.NewReader(reply))
	if ok := r.Uint64(); ok != 1 {
		t.Fatalf("ImportPaths replied %d", ok)
	}
	rest, _ := io.ReadAll(r)
	if !bytes.Equal(rest, export.Bytes()) {
		t.Errorf("the export of the imported paths differs from the stream imported:\n%q\n%q", rest, export.Bytes())
	}
	for _, p := range []storepath.StorePath{a, b} {
		want, _ := src.QueryPathInfo(context.Background(), p)
		got, err := dst.QueryPathInfo(context.Background(), p)
		if err != nil || got.NarHash != want.NarHash || got.NarSize != want.NarSize {
			t.Errorf("%s in the daemon's store: %+v %v", p, got, err)
		}
	}
}
