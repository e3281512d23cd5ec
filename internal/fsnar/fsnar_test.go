package fsnar

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"cairn/internal/nar"
	"cairn/internal/testutil/nixtest"
)

// makeTree builds a tree with every kind of entry the NAR format knows, names that
// sort differently byte-wise than by locale, and files that span read-ahead buffers.
func makeTree(t testing.TB) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "tree")
	files := map[string]string{
		"a/empty":            "",
		"a/B":                "upper",
		"a/b":                "lower",
		"a/é-non-ascii":      "ünïcödé",
		"big":                strings.Repeat("0123456789abcdef", (3*bufferSize)/16+7),
		"z/deep/er/est/file": "deep",
	}
	for name, data := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 3*maxEventsPerBatch/2; i++ { // more headers than one batch holds
		p := filepath.Join(root, "many", strings.Repeat("x", i%7)+string(rune('a'+i%26))+string(rune('0'+i%10))+"-"+itoa(i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(itoa(i)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	must(t, os.WriteFile(filepath.Join(root, "run.sh"), []byte("#!/bin/sh\n"), 0o755))
	must(t, os.MkdirAll(filepath.Join(root, "emptydir"), 0o755))
	must(t, os.Symlink("a/b", filepath.Join(root, "link")))
	must(t, os.Symlink("/nonexistent/dangling", filepath.Join(root, "dangling")))
	return root
}

func itoa(i int) string {
	var b []byte
	for {
		b = append([]byte{byte('0' + i%10)}, b...)
		i /= 10
		if i == 0 {
			return string(b)
		}
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func dump(t testing.TB, path string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Dump(context.Background(), &buf, path); err != nil {
		t.Fatalf("Dump(%s): %v", path, err)
	}
	return buf.Bytes()
}

func TestDumpMatchesNarDump(t *testing.T) {
	root := makeTree(t)
	paths := []string{root, filepath.Join(root, "big"), filepath.Join(root, "link"), filepath.Join(root, "emptydir")}
	if !testing.Short() {
		paths = append(paths, filepath.Join(runtime.GOROOT(), "src"))
	}
	for _, p := range paths {
		t.Run(filepath.Base(p), func(t *testing.T) {
			var want bytes.Buffer
			if err := nar.Dump(&want, p, nar.DumpOptions{}); err != nil {
				t.Fatal(err)
			}
			if got := dump(t, p); !bytes.Equal(got, want.Bytes()) {
				t.Errorf("fsnar.Dump differs from nar.Dump (%d vs %d bytes)", len(got), want.Len())
			}
			var direct bytes.Buffer
			if err := DumpDirect(context.Background(), &direct, p); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(direct.Bytes(), want.Bytes()) {
				t.Errorf("fsnar.DumpDirect differs from nar.Dump (%d vs %d bytes)", direct.Len(), want.Len())
			}
		})
	}
}

func TestDumpMatchesNixStore(t *testing.T) {
	nixtest.Require(t, "nix-store")
	root := makeTree(t)
	for _, p := range []string{root, filepath.Join(root, "run.sh"), filepath.Join(root, "dangling")} {
		want, err := nixtest.Output(nil, "nix-store", "--dump", p)
		if err != nil {
			t.Fatal(err)
		}
		if got := dump(t, p); !bytes.Equal(got, want) {
			t.Errorf("Dump(%s) differs from nix-store --dump (%d vs %d bytes)", p, len(got), len(want))
		}
	}
}

func TestDumpErrors(t *testing.T) {
	dir := t.TempDir()
	if err := Dump(context.Background(), io.Discard, filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing path: %v, want ErrNotExist", err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := mkfifo(fifo); err != nil {
		t.Skip("mkfifo:", err)
	}
	if err := Dump(context.Background(), io.Discard, dir); err == nil || !strings.Contains(err.Error(), "unsupported type") {
		t.Errorf("tree with a fifo: %v, want an unsupported type error", err)
	}
}

type failWriter struct{ n int }

func (w *failWriter) Write(p []byte) (int, error) {
	if w.n -= len(p); w.n < 0 {
		return 0, errors.New("disk full")
	}
	return len(p), nil
}

// A failing writer stops the dump with its error, and the walker goroutine exits.
func TestDumpWriterFails(t *testing.T) {
	root := makeTree(t)
	before := runtime.NumGoroutine()
	for i := 0; i < 20; i++ {
		if err := Dump(context.Background(), &failWriter{n: 100000}, root); err == nil || !strings.Contains(err.Error(), "disk full") {
			t.Fatalf("Dump to a failing writer: %v", err)
		}
	}
	for i := 0; i < 100 && runtime.NumGoroutine() > before; i++ {
		runtime.Gosched()
	}
	if n := runtime.NumGoroutine(); n > before+1 {
		t.Errorf("%d goroutines after failed dumps, %d before: the walker leaked", n, before)
	}
}

// Files the walker leaves for the consumer to close are closed however the
// dump ends: written, failed at any point, or canceled. (The first dump leaves
// a ring for the next, whose descriptor stays open.)
func TestDumpClosesFiles(t *testing.T) {
	src := filepath.Join(runtime.GOROOT(), "src", "crypto")
	closeIdleRings()
	Dump(context.Background(), io.Discard, src)
	before := openFiles(t)
	for _, n := range []int{0, 1000, 100000, 3 << 20, 1 << 40} {
		Dump(context.Background(), &failWriter{n: n}, src)
		if after := openFiles(t); after != before {
			t.Fatalf("writer failing after %d bytes: %d open files, %d before", n, after, before)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := writerFunc(func(p []byte) (int, error) { cancel(); return len(p), nil })
	Dump(ctx, w, src)
	if after := openFiles(t); after != before {
		t.Fatalf("canceled dump: %d open files, %d before", after, before)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func openFiles(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip(err)
	}
	return len(ents)
}

func TestDumpCanceled(t *testing.T) {
	root := makeTree(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Dump(ctx, io.Discard, root); err == nil {
		t.Error("Dump with a canceled context succeeded")
	}
}

func BenchmarkDumpGoSource(b *testing.B) {
	src := filepath.Join(runtime.GOROOT(), "src")
	var size countWriter
	if err := Dump(context.Background(), &size, src); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(size))
	for b.Loop() {
		if err := Dump(context.Background(), io.Discard, src); err != nil {
			b.Fatal(err)
		}
	}
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }
