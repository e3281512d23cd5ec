package local

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"cairn/internal/store"
	"cairn/internal/storepath"
	"cairn/internal/testutil/nixtest"
)

// copyStoreFiles copies the files (not the database) of one chroot store into
// a fresh root, keeping hard links and modes.
func copyStoreFiles(t *testing.T, fromRoot string) string {
	t.Helper()
	to := filepath.Join(t.TempDir(), "root")
	if err := os.MkdirAll(filepath.Join(to, "nix"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", filepath.Join(fromRoot, "nix/store"), filepath.Join(to, "nix/store")).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	return to
}

// TestDumpDBMatchesNix: dump-db prints what nix-store --dump-db prints, for the
// whole store and for chosen paths, and each side loads the other's dump into
// a store holding the same files, with the same result.
func TestDumpDBMatchesNix(t *testing.T) {
	nixtest.Require(t, "nix-store")
	ctx := context.Background()
	s, root := newStore(t)
	f := addFixture(t, s)
	url := storeURL(root)

	var all bytes.Buffer
	if err := s.DumpDB(ctx, &all, nil); err != nil {
		t.Fatal(err)
	}
	want, err := nixtest.Output(nil, "nix-store", "--store", url, "--dump-db")
	if err != nil {
		t.Fatal(err)
	}
	if all.String() != string(want) {
		t.Errorf("dump-db:\n%s\nnix-store --dump-db:\n%s", all.String(), want)
	}
	some := []storepath.StorePath{f.tree, f.derived, f.tree}
	var part bytes.Buffer
	if err := s.DumpDB(ctx, &part, some); err != nil {
		t.Fatal(err)
	}
	want, err = nixtest.Output(nil, "nix-store", "--store", url, "--dump-db", f.tree.String(), f.derived.String(), f.tree.String())
	if err != nil {
		t.Fatal(err)
	}
	if part.String() != string(want) {
		t.Errorf("dump-db PATHS:\n%s\nnix-store:\n%s", part.String(), want)
	}

	// Cairn's dump into Nix: same registrations come back out.
	nixRoot := copyStoreFiles(t, root)
	if _, err := nixtest.Output(all.Bytes(), "nix-store", "--store", storeURL(nixRoot), "--load-db"); err != nil {
		t.Fatal(err)
	}
	if got := nixtest.Run(t, nil, "nix-store", "--store", storeURL(nixRoot), "--dump-db"); got != strings.TrimSpace(all.String()) {
		t.Errorf("after nix-store --load-db:\n%s\nwant:\n%s", got, all.String())
	}
	nixVerify(t, nixRoot)

	// Nix's dump into Cairn.
	cairnRoot := copyStoreFiles(t, nixRoot)
	s2 := openRoot(t, cairnRoot)
	// A partial dump whose references are not valid is refused, by both.
	if _, err := s2.LoadDB(ctx, bytes.NewReader(want)); err == nil || !strings.Contains(err.Error(), "is not valid") {
		t.Errorf("LoadDB of a dump with dangling references: %v", err)
	}
	if _, err := nixtest.Output(want, "nix-store", "--store", storeURL(copyStoreFiles(t, root)), "--load-db"); err == nil {
		t.Errorf("nix-store --load-db accepted a dump with dangling references")
	}
	full, _ := nixtest.Output(nil, "nix-store", "--store", url, "--dump-db")
	n, err := s2.LoadDB(ctx, bytes.NewReader(full))
	if err != nil {
		t.Fatal(err)
	}
	if valid, _ := s.QueryAllValidPaths(ctx); n != len(valid) {
		t.Errorf("LoadDB read %d records, want %d", n, len(valid))
	}
	var back bytes.Buffer
	if err := s2.DumpDB(ctx, &back, nil); err != nil {
		t.Fatal(err)
	}
	if back.String() != string(full) {
		t.Errorf("after LoadDB:\n%s\nwant:\n%s", back.String(), full)
	}
	nixVerify(t, cairnRoot)
	// Re-loading updates in place (hash and size), as --load-db does.
	if _, err := s2.LoadDB(ctx, bytes.NewReader(full)); err != nil {
		t.Fatal(err)
	}
}

func TestRegistrationReader(t *testing.T) {
	dir := storepath.DefaultStoreDir
	p := "/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo"
	q := "/nix/store/q5w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar"
	hex := "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13"
	tests := []struct {
		name, in string
		n        int
		err      string
	}{
		{"empty", "", 0, ""},
		{"one", p + "\n" + hex + "\n120\n\n0\n", 1, ""},
		{"refs and deriver", p + "\n" + hex + "\n120\n" + q + "\n2\n" + q + "\n" + p + "\n", 1, ""},
		{"nix32 hash with prefix", p + "\nsha256:08m9shh7m0v5bk805531pb1y0h6psm3x6xkzcmz7f54mhlfk4vb2\n6\n\n0\n", 1, ""},
		{"no final newline", p + "\n" + hex + "\n120\n\n0", 1, ""},
		{"two", p + "\n" + hex + "\n120\n\n0\n" + q + "\n" + hex + "\n0\n\n0\n", 2, ""},
		{"truncated", p + "\n" + hex + "\n120\n", 0, "missing input"},
		{"missing reference", p + "\n" + hex + "\n120\n\n2\n" + q + "\n", 0, "missing input"},
		{"bad size", p + "\n" + hex + "\nlots\n\n0\n", 0, "number expected"},
		{"negative count", p + "\n" + hex + "\n1\n\n-1\n", 0, "number expected"},
		{"huge count", p + "\n" + hex + "\n1\n\n99999999999\n", 0, "number expected"},
		{"bad hash", p + "\nxyz\n1\n\n0\n", 0, "line 2"},
		{"bad path", "/elsewhere/foo\n" + hex + "\n1\n\n0\n", 0, "line 1"},
		{"long line", strings.Repeat("x", MaxRegistrationLine+10) + "\n", 0, "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rr := NewRegistrationReader(strings.NewReader(tt.in), dir)
			n := 0
			var err error
			for {
				var info *store.PathInfo
				info, err = rr.Next()
				if err != nil {
					break
				}
				n++
				// Round trip through the writer.
				var b bytes.Buffer
				w := bufio.NewWriter(&b)
				WriteRegistration(w, info)
				w.Flush()
				again, err2 := NewRegistrationReader(&b, dir).Next()
				if err2 != nil || again.Path != info.Path || again.NarHash != info.NarHash || len(again.References) != len(info.References) {
					t.Errorf("round trip: %+v, %v", again, err2)
				}
			}
			if tt.err == "" {
				if !errors.Is(err, io.EOF) || n != tt.n {
					t.Errorf("read %d records, err %v; want %d", n, err, tt.n)
				}
				return
			}
			if err == nil || errors.Is(err, io.EOF) || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("err = %v, want %q", err, tt.err)
			}
			if _, again := rr.Next(); again != err {
				t.Errorf("error not sticky: %v", again)
			}
		})
	}
}

func FuzzRegistrationReader(f *testing.F) {
	f.Add([]byte("/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo\n1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13\n120\n\n0\n"))
	f.Add([]byte("/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo\nsha256:08m9shh7m0v5bk805531pb1y0h6psm3x6xkzcmz7f54mhlfk4vb2\n6\n/nix/store/q5w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv\n1\n/nix/store/q5w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rr := NewRegistrationReader(bytes.NewReader(data), storepath.DefaultStoreDir)
		var infos []*store.PathInfo
		for range 1000 {
			info, err := rr.Next()
			if err != nil {
				break
			}
			infos = append(infos, info)
		}
		var b bytes.Buffer
		w := bufio.NewWriter(&b)
		for _, info := range infos {
			WriteRegistration(w, info)
		}
		w.Flush()
		rr2 := NewRegistrationReader(&b, storepath.DefaultStoreDir)
		for i, want := range infos {
			got, err := rr2.Next()
			if err != nil {
				t.Fatalf("record %d: %v", i, err)
			}
			if got.Path != want.Path || got.NarHash != want.NarHash || got.NarSize != want.NarSize || got.Deriver != want.Deriver {
				t.Fatalf("record %d: %+v, want %+v", i, got, want)
			}
		}
		if _, err := rr2.Next(); err != io.EOF {
			t.Fatalf("after the records: %v", err)
		}
	})
}
