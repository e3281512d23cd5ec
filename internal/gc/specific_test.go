package gc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"cairn/internal/protocol"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
	"cairn/internal/testutil/nixtest"
)

// TestDeleteSpecificMatchesNix deletes the same paths from two identical
// stores with nix-store --delete and with Collect(DeleteSpecific), and
// compares the outcome (deleted, refused, what is left).
func TestDeleteSpecificMatchesNix(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix-instantiate")
	f, stores := fixtureStores(t, 2)
	rootA, rootB := stores[0], stores[1]
	os.RemoveAll(filepath.Join(rootB, "nix/store", local.TempDirName))
	st, roots := openStore(t, rootA)
	holdTempRoots(t, filepath.Join(rootA, "nix/var/nix"), 4242, f.paths["temp"])
	holdTempRoots(t, filepath.Join(rootB, "nix/var/nix"), 4242, f.paths["temp"])
	gone := storepath.StoreDir("/nix/store")
	notThere, _ := gone.Parse("/nix/store/22222222222222222222222222222222-never")

	tests := []struct {
		name   string
		paths  []string
		ignore bool
	}{
		{"referenced alone", []string{"dead-lib"}, false},
		{"top", []string{"dead-top"}, false},
		{"closure", []string{"dead-lib", "dead-app"}, false},
		{"root", []string{"app"}, false},
		{"temp root", []string{"temp"}, false},
		{"root ignoring liveness", []string{"profiled"}, true},
		{"kept by its output (keep-derivations)", []string{"drv"}, true},
		{"invalid", []string{"never"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ps []storepath.StorePath
			args := []string{"--store", "local?root=" + rootB, "--delete"}
			if tt.ignore {
				args = append(args, "--ignore-liveness")
			}
			for _, n := range tt.paths {
				p := f.paths[n]
				if n == "never" {
					p = notThere
				}
				ps = append(ps, p)
				args = append(args, p.String())
			}
			res, err := Collect(context.Background(), st, roots, Options{Action: protocol.GCDeleteSpecific, Paths: ps,
				IgnoreLiveness: tt.ignore, MaxFreed: NoLimit, KeepDerivations: true})
			out, nixErr := nixtest.Output(nil, "nix-store", args...)
			var ae *AliveError
			if (nixErr != nil) != errors.As(err, &ae) {
				t.Fatalf("cairn: %v; nix: %v", err, nixErr)
			}
			if nixErr != nil {
				if !strings.Contains(nixErr.Error(), err.Error()) {
					t.Errorf("error %q, nix %q", err, nixErr)
				}
				return
			}
			got := fmt.Sprintf("%d store paths deleted, %.2f MiB freed", len(res.Paths), float64(res.BytesFreed)/(1024*1024))
			if want := strings.TrimSpace(string(out)); got != want {
				t.Errorf("got %q, nix %q", got, want)
			}
			la, _ := os.ReadDir(filepath.Join(rootA, "nix/store"))
			lb, _ := os.ReadDir(filepath.Join(rootB, "nix/store"))
			if a, b := names(la), names(lb); !slices.Equal(a, b) {
				t.Errorf("store dirs differ:\ncairn %q\n  nix %q", a, b)
			}
		})
	}
}

// TestNixTempRootHonoured keeps a path alive through a Nix 2.8 process's
// temporary root (builtins.toFile, which adds one, in an evaluation blocked
// on a FIFO)
// while Cairn collects.
func TestNixTempRootHonoured(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix-instantiate")
	root := filepath.Join(t.TempDir(), "root")
	st, roots := openStore(t, root)
	held := addText(t, st, "held", "held by nix\n")
	other := addText(t, st, "other", "not held\n")
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	expr := fmt.Sprintf(`builtins.seq (builtins.toFile "held" "held by nix\n") (builtins.readFile "%s")`, fifo)
	release := func() {
		if w, err := os.OpenFile(fifo, os.O_RDWR, 0); err == nil {
			w.Write([]byte("x"))
			w.Close()
		}
	}
	done := make(chan error, 1)
	go func() {
		_, err := nixtest.Output(nil, "nix-instantiate", "--store", "local?root="+root, "--eval", "--read-write-mode", "-E", expr)
		done <- err
	}()
	// Wait for Nix's temp roots file to name the path.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ents, _ := os.ReadDir(filepath.Join(roots.StateDir(), "temproots"))
		found := false
		for _, e := range ents {
			data, _ := os.ReadFile(filepath.Join(roots.StateDir(), "temproots", e.Name()))
			if strings.Contains(string(data), held.String()) {
				found = true
			}
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			release()
			t.Fatal("nix-instantiate wrote no temporary root")
		}
		time.Sleep(20 * time.Millisecond)
	}
	res, err := Collect(context.Background(), st, roots, Options{Action: protocol.GCDeleteDead, MaxFreed: NoLimit, KeepDerivations: true})
	release()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Paths, []string{other.String()}) {
		t.Errorf("deleted %q, want just %s", res.Paths, other)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Now that Nix is gone, its root is too.
	res, err = Collect(context.Background(), st, roots, Options{Action: protocol.GCDeleteDead, MaxFreed: NoLimit})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Paths, []string{held.String()}) {
		t.Errorf("deleted %q, want %s", res.Paths, held)
	}
}

// TestMaxFreedMatchesNix stops after the same paths as nix-store --gc
// --max-freed: both visit the store dir in its own order.
func TestMaxFreedMatchesNix(t *testing.T) {
	nixtest.Require(t, "nix-store")
	base := t.TempDir()
	files := filepath.Join(base, "files")
	os.MkdirAll(files, 0o755)
	args := []string{"--store", "local?root=" + filepath.Join(base, "a"), "--add"}
	for i := range 40 {
		f := filepath.Join(files, fmt.Sprintf("f%d", i))
		os.WriteFile(f, []byte(strings.Repeat("x", i+1)), 0o644)
		args = append(args, f)
	}
	nixtest.Run(t, nil, "nix-store", args...)
	copyTree(t, filepath.Join(base, "a"), filepath.Join(base, "b"))
	st, roots := openStore(t, filepath.Join(base, "b"))
	for _, limit := range []uint64{1, 100, 300} {
		res, err := Collect(context.Background(), st, roots, Options{Action: protocol.GCDeleteDead, MaxFreed: limit})
		if err != nil {
			t.Fatal(err)
		}
		out := nixtest.Run(t, nil, "nix-store", "--store", "local?root="+filepath.Join(base, "a"), "--gc", "--max-freed", fmt.Sprint(limit))
		if got := fmt.Sprintf("%d store paths deleted, %.2f MiB freed", len(res.Paths), float64(res.BytesFreed)/(1024*1024)); got != out {
			t.Errorf("--max-freed %d: %q, nix %q", limit, got, out)
		}
		la, _ := os.ReadDir(filepath.Join(base, "a/nix/store"))
		lb, _ := os.ReadDir(filepath.Join(base, "b/nix/store"))
		if a, b := names(la), names(lb); !slices.Equal(a, b) {
			t.Errorf("--max-freed %d: store dirs differ:\ncairn %q\n  nix %q", limit, b, a)
		}
	}
}
