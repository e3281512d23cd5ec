package daemon

import (
	"context"
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"cairn/internal/config"
	"cairn/internal/nixhash"
	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
	"cairn/internal/wire"
)

// benchDaemon serves a store of n registered paths on a socket with the
// given SpinWait and returns the socket and the paths.
func benchDaemon(b *testing.B, n int, spin time.Duration) (string, []storepath.StorePath) {
	b.Helper()
	dir := b.TempDir()
	cfg, err := store.ParseURL("local?root="+filepath.Join(dir, "root"), func(string) string { return "" })
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	st, err := local.Open(ctx, cfg, local.Options{NoFsync: true, ReservedSize: -1})
	if err != nil {
		b.Fatal(err)
	}
	infos := make([]*store.PathInfo, n)
	paths := make([]storepath.StorePath, n)
	for i := range infos {
		h := nixhash.Sum(nixhash.SHA256, []byte(strconv.Itoa(i)))
		p, err := cfg.StoreDir.MakeStorePath("output:out", h, "bench-"+strconv.Itoa(i))
		if err != nil {
			b.Fatal(err)
		}
		infos[i] = &store.PathInfo{Path: p, NarHash: h, NarSize: 120, Signatures: []string{"cache.example:c2ln"}}
		if i > 0 {
			infos[i].References = []storepath.StorePath{paths[i-1]}
		}
		paths[i] = p
	}
	if err := st.RegisterValidPaths(ctx, infos); err != nil {
		b.Fatal(err)
	}
	srv := &Server{Store: st, Settings: config.New(), SpinWait: spin,
		Auth: func(context.Context, Peer) (Decision, error) { return Decision{Allowed: true, Trusted: true}, nil }}
	sock := filepath.Join(dir, "socket")
	ln, err := Listen(sock)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		srv.Serve(ctx, ln)
		close(done)
	}()
	b.Cleanup(func() {
		cancel()
		<-done
		st.Close()
	})
	return sock, paths
}

// BenchmarkQueryPathInfo is one client asking for path infos one after
// another, as `nix-store -q` does: the round trip through the socket, the
// daemon's op loop and the store's cache.
func BenchmarkQueryPathInfo(b *testing.B) {
	for _, spin := range []time.Duration{0, DefaultSpinWait} {
		b.Run("spin="+spin.String(), func(b *testing.B) {
			sock, paths := benchDaemon(b, 1000, spin)
			c, err := net.Dial("unix", sock)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			r, w := wire.NewReader(c), wire.NewWriter(c)
			r.StoreDir = storepath.DefaultStoreDir
			di, err := protocol.ClientHandshake(r, w, protocol.ClientConfig{Version: protocol.Nix28}, nil)
			if err != nil {
				b.Fatal(err)
			}
			p := di.Params
			var reply protocol.QueryPathInfoReply
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				protocol.WriteRequest(w, p, &protocol.PathRequest{Code: protocol.OpQueryPathInfo, Path: paths[i%len(paths)]})
				i++
				if err := w.Flush(); err != nil {
					b.Fatal(err)
				}
				if err := protocol.ProcessStderr(r, p, func(*protocol.Message) error { return nil }); err != nil {
					b.Fatal(err)
				}
				reply.Read(r, p)
				if err := r.Err(); err != nil || !reply.Valid {
					b.Fatalf("reply %+v: %v", reply, err)
				}
			}
		})
	}
}
