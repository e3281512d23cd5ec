package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"cairn/internal/gc"
	"cairn/internal/nixhash"
	"cairn/internal/store"
	"cairn/internal/store/local"
)

// TestServesProcessRoots runs cairn-roots on a store while a process works
// in one of its paths and an indirect root leads to another: a client of its
// socket is told both.
func TestServesProcessRoots(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command to build cairn-roots")
	}
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "cairn-roots")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	url := plainStoreURL(tmp)
	cfg, st := openPlainStore(t, url)
	ctx := context.Background()
	src := filepath.Join(tmp, "tree")
	if err := os.MkdirAll(filepath.Join(src, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(tmp, "other")
	if err := os.WriteFile(other, []byte("other\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	infos, err := st.AddPaths(ctx, []string{src, other}, nixhash.Recursive, nixhash.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	used, linked := infos[0].Path, infos[1].Path

	// An indirect root: gcroots/auto/x → home/result → linked; and a stale
	// one, which cairn-roots must leave alone (it changes nothing).
	home := filepath.Join(tmp, "home")
	auto := filepath.Join(cfg.StateDir, "gcroots", "auto")
	for _, d := range []string{home, auto} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(linked.String(), filepath.Join(home, "result")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(home, "result"), filepath.Join(auto, "x")); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(auto, "stale")
	if err := os.Symlink(filepath.Join(home, "gone"), stale); err != nil {
		t.Fatal(err)
	}

	sleeper := exec.Command("sleep", "60")
	sleeper.Dir = filepath.Join(cfg.RealStoreDir, used.Base(), "sub")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sleeper.Process.Kill(); sleeper.Wait() }()

	daemon := exec.Command(bin, "--store", url)
	daemon.Stderr = os.Stderr
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { daemon.Process.Signal(syscall.SIGTERM); daemon.Wait() }()
	sock := gc.RootsSocketPath(cfg.StateDir)
	for i := 0; ; i++ {
		if fi, err := os.Stat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
			if fi.Mode().Perm() != 0o666 {
				t.Errorf("socket mode %v, want 0666", fi.Mode().Perm())
			}
			break
		}
		if i == 100 {
			t.Fatal("cairn-roots made no socket")
		}
		time.Sleep(50 * time.Millisecond)
	}
	rs, err := gc.DaemonRoots(sock)(ctx, cfg.StoreDir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rs {
		got = append(got, r.Target)
	}
	for _, p := range []string{used.String(), linked.String()} {
		if !slices.Contains(got, p) {
			t.Errorf("cairn-roots named %v, not %s", got, p)
		}
	}
	if _, err := os.Lstat(stale); err != nil {
		t.Errorf("cairn-roots removed a stale root: %v", err)
	}
}

// plainStoreURL is a store under dir whose paths are named where they are on
// disk, so that what /proc shows of a process working in one names it.
func plainStoreURL(dir string) string {
	return "local?store=" + filepath.Join(dir, "store") + "&state=" + filepath.Join(dir, "state") + "&log=" + filepath.Join(dir, "log")
}

// openPlainStore opens (making) the store url names.
func openPlainStore(t *testing.T, url string) (*store.Config, *local.Store) {
	t.Helper()
	cfg, err := store.ParseURL(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := local.Open(context.Background(), cfg, local.Options{NoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	return cfg, st
}
