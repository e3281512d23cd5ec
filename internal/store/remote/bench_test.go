package remote_test

import (
	"bytes"
	"context"
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
