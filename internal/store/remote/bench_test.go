package remote_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"cairn/internal/nixhash"
	"cairn/internal/store/remote"
	"cairn/internal/store/storetest"
	"cairn/internal/testutil/nixtest"
)

// BenchmarkQueryPathInfo measures one client's round trip (one connection,
// sequential) against each daemon.
func BenchmarkQueryPathInfo(b *testing.B) {
	for name, start := range benchDaemons() {
		b.Run(name, func(b *testing.B) {
			s := openBench(b, start(b))
			info, err := s.AddText(context.Background(), "bench", "bench", nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.QueryPathInfo(context.Background(), info.Path); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkNarRoundTrip adds a 4 MiB NAR and reads it back.
func BenchmarkNarRoundTrip(b *testing.B) {
	for name, start := range benchDaemons() {
		b.Run(name, func(b *testing.B) {
			s := openBench(b, start(b))
			body := bytes.Repeat([]byte("0123456789abcdef"), 1<<18)
			var n int
			b.SetBytes(int64(2 * len(body)))
			b.ReportAllocs()
			for b.Loop() {
				n++
				body[0] = byte(n)
				body[1] = byte(n >> 8)
				body[2] = byte(n >> 16)
				info, err := s.AddCA(context.Background(), "blob", nixhash.Flat, nixhash.SHA256, nil, bytes.NewReader(body))
				if err != nil {
					b.Fatal(err)
				}
				var out bytes.Buffer
				if err := s.NarFromPath(context.Background(), info.Path, &out); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func benchDaemons() map[string]func(b *testing.B) *storetest.Daemon {
	return map[string]func(b *testing.B) *storetest.Daemon{
		"nix-daemon": func(b *testing.B) *storetest.Daemon {
			nixtest.Require(b, "nix-daemon")
			return storetest.StartDaemon(b, "nix-daemon")
		},
		"cairn-daemon": func(b *testing.B) *storetest.Daemon {
			return storetest.StartDaemon(b, storetest.BuildCairn(b), "daemon")
		},
	}
}

func openBench(b *testing.B, d *storetest.Daemon) *remote.Store {
	s := remote.New("/nix/store", remote.SocketDialer(d.Socket), remote.Options{MaxConns: 1})
	b.Cleanup(func() { s.Close() })
	return s
}

// BenchmarkAddToStoreOneByOne adds small files one AddToStore call each, as
// `nix-store --add` of 2000 files through a daemon does. With Cairn's adds
// acknowledged before their sync (docs/store.md, Durability), the daemon with
// fsync-metadata on should answer about as fast as with it off; each add
// used to wait for two disk flushes.
func BenchmarkAddToStoreOneByOne(b *testing.B) {
	daemons := benchDaemons()
	daemons["cairn-daemon-nofsync"] = func(b *testing.B) *storetest.Daemon {
		return storetest.StartDaemonWith(b, []string{storetest.BuildCairn(b), "daemon"},
			[]string{"--option", "fsync-metadata", "false"})
	}
	for name, start := range daemons {
		b.Run(name, func(b *testing.B) {
			s := openBench(b, start(b))
			ctx := context.Background()
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				data := fmt.Sprintf("one by one %d\n", i)
				if _, err := s.AddCA(ctx, fmt.Sprintf("f%d", i), nixhash.Flat, nixhash.SHA256, nil, strings.NewReader(data)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
