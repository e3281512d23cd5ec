package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"cairn/internal/gc"
	"cairn/internal/nixhash"
	"cairn/internal/testutil/testuser"
)

// TestRootlessCollectorAsksCairnRoots: a store owned by an unprivileged user,
// collected by that user. A root process works in one path, and an indirect
// root leads to another through root's 0700 home directory: neither is
// visible to the user, so `cairn gc` deletes both; with cairn-roots running as
// root and the store opened with use-roots-daemon=true, it keeps both.
func TestRootlessCollectorAsksCairnRoots(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the collector as another user")
	}
	uid, gid, err := testuser.Ensure()
	if err != nil {
		t.Fatal(err)
	}
	tmp, err := os.MkdirTemp("/var/tmp", "cairn-roots-test-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(tmp, "bin")
	for _, pkg := range []string{".", "../cairn"} {
		if out, err := exec.Command("go", "build", "-o", bin+"/", pkg).CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, out)
		}
	}

	base := plainStoreURL(tmp)
	for round, withRoots := range []bool{false, true} {
		// A fresh store each round, made and owned by the user.
		for _, d := range []string{"store", "state", "log"} {
			os.RemoveAll(filepath.Join(tmp, d))
		}
		cfg, st := openPlainStore(t, base)
		ctx := context.Background()
		src := filepath.Join(tmp, "src")
		os.RemoveAll(src)
		for _, d := range []string{"used/sub", "linked"} {
			if err := os.MkdirAll(filepath.Join(src, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		os.WriteFile(filepath.Join(src, "linked", "f"), []byte{byte('0' + round)}, 0o644)
		os.WriteFile(filepath.Join(src, "used", "f"), []byte{byte('0' + round)}, 0o644)
		infos, err := st.AddPaths(ctx, []string{filepath.Join(src, "used"), filepath.Join(src, "linked")}, nixhash.Recursive, nixhash.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		st.Close()
		used, linked := infos[0].Path, infos[1].Path
		for _, d := range []string{"store", "state", "log"} {
			chownTree(t, filepath.Join(tmp, d), uid, gid)
		}

		// Root's home: 0700, with the result link an indirect root names.
		home := filepath.Join(tmp, "roothome")
		os.RemoveAll(home)
		if err := os.Mkdir(home, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(linked.String(), filepath.Join(home, "result")); err != nil {
			t.Fatal(err)
		}
		auto := filepath.Join(cfg.StateDir, "gcroots", "auto")
		if err := os.MkdirAll(auto, 0o755); err != nil {
			t.Fatal(err)
		}
		os.Lchown(auto, uid, gid)
		if err := os.Symlink(filepath.Join(home, "result"), filepath.Join(auto, "r")); err != nil {
			t.Fatal(err)
		}
		sleeper := exec.Command("sleep", "60")
		sleeper.Dir = filepath.Join(cfg.RealStoreDir, used.Base(), "sub")
		if err := sleeper.Start(); err != nil {
			t.Fatal(err)
		}

		url := base
		var roots *exec.Cmd
		if withRoots {
			url += "&use-roots-daemon=true"
			roots = exec.Command(filepath.Join(bin, "cairn-roots"), "--store", base)
			roots.Stderr = os.Stderr
			if err := roots.Start(); err != nil {
				t.Fatal(err)
			}
			waitSocket(t, gc.RootsSocketPath(cfg.StateDir))
		}
		collect := exec.Command(filepath.Join(bin, "cairn"), "--store", url, "gc")
		collect.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		collect.Env = append(os.Environ(), "HOME="+tmp, "NIX_CONFIG=")
		out, err := collect.CombinedOutput()
		sleeper.Process.Kill()
		sleeper.Wait()
		if roots != nil {
			roots.Process.Signal(syscall.SIGTERM)
			roots.Wait()
		}
		if err != nil {
			t.Fatalf("cairn gc as %s (cairn-roots: %v): %v\n%s", testuser.Name, withRoots, err, out)
		}
		for _, p := range []string{used.Base(), linked.Base()} {
			_, err := os.Lstat(filepath.Join(cfg.RealStoreDir, p))
			if kept := err == nil; kept != withRoots {
				t.Errorf("cairn-roots %v: %s kept %v, want %v\n%s", withRoots, p, kept, withRoots, out)
			}
		}
		if withRoots && !strings.Contains(string(out), "0 store paths deleted") {
			t.Logf("cairn gc printed:\n%s", out)
		}
	}
}

func chownTree(t *testing.T, dir string, uid, gid int) {
	t.Helper()
	err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func waitSocket(t *testing.T, sock string) {
	t.Helper()
	for range 100 {
		if fi, err := os.Stat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("cairn-roots made no socket")
}
