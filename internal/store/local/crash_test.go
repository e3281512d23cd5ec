package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"cairn/internal/nixhash"
	"cairn/internal/store"
	"cairn/internal/storepath"
	"cairn/internal/testutil/nixtest"
)

// Tests that need separate processes re-exec the test binary, which runs
// TestStoreHelperProcess with CAIRN_STORE_HELPER naming the job:
//
//	crash  add (and sometimes delete) paths in a loop until killed
//	add    add the files listed in CAIRN_HELPER_FILES (comma-separated), print
//	       the store paths, exit
//
// CAIRN_HELPER_ROOT is the chroot store, CAIRN_HELPER_SRC a scratch directory.
const helperEnv = "CAIRN_STORE_HELPER"

func TestStoreHelperProcess(t *testing.T) {
	job := os.Getenv(helperEnv)
	if job == "" {
		t.Skip("only run as a helper process")
	}
	root, src := os.Getenv("CAIRN_HELPER_ROOT"), os.Getenv("CAIRN_HELPER_SRC")
	cfg, err := store.ParseURL("local?root="+root, func(string) string { return "" })
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx := context.Background()
	s, err := Open(ctx, cfg, DefaultOptions())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	switch job {
	case "crash":
		crashLoop(ctx, s, src)
	case "add":
		infos, err := s.AddPaths(ctx, strings.Split(os.Getenv("CAIRN_HELPER_FILES"), ","), nixhash.Recursive, nixhash.SHA256)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		for _, info := range infos {
			fmt.Println(info.Path)
		}
	}
	s.Close()
	os.Exit(0)
}

// crashLoop adds random trees (single ones and batches, small files and a few
// megabytes), paths with references through AddNar, and deletes a path now and
// then, forever.
func crashLoop(ctx context.Context, s *Store, src string) {
	r := rand.New(rand.NewPCG(uint64(os.Getpid()), uint64(time.Now().UnixNano())))
	big := make([]byte, 3<<20)
	for i := 0; ; i++ {
		dir := filepath.Join(src, fmt.Sprintf("%d-%d", os.Getpid(), i))
		var srcs []string
		for j := range 1 + r.IntN(4) {
			tree := filepath.Join(dir, fmt.Sprintf("t%d", j))
			os.MkdirAll(filepath.Join(tree, "sub"), 0o755)
			for k := range 1 + r.IntN(20) {
				os.WriteFile(filepath.Join(tree, "sub", fmt.Sprint(k)), fmt.Appendf(nil, "%d %d %d %d", r.Uint64(), i, j, k), 0o644)
			}
			if r.IntN(4) == 0 {
				big[r.IntN(len(big))]++
				os.WriteFile(filepath.Join(tree, "big"), big[:r.IntN(len(big))], 0o755)
			}
			srcs = append(srcs, tree)
		}
		infos, err := s.AddPaths(ctx, srcs, nixhash.Recursive, nixhash.SHA256)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		// A path referring to the first one.
		var nar bytes.Buffer
		fmt.Fprintf(&nar, "refers to %s", infos[0].Path)
		text, err := s.AddText(ctx, fmt.Sprintf("ref-%d-%d", os.Getpid(), i), nar.String(), []storepath.StorePath{infos[0].Path})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if r.IntN(3) == 0 {
			// Delete the referrer and its reference together, or one plain path.
			victims := []storepath.StorePath{text.Path, infos[0].Path}
			if len(infos) > 1 && r.IntN(2) == 0 {
				victims = []storepath.StorePath{infos[1].Path}
			}
			if _, err := s.Delete(ctx, victims, DeleteOptions{}); err != nil && !errors.Is(err, ErrPathInUse) {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}
		os.RemoveAll(dir)
	}
}

func helperCmd(t *testing.T, job, root, src string, extraEnv ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestStoreHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+job, "CAIRN_HELPER_ROOT="+root, "CAIRN_HELPER_SRC="+src)
	cmd.Env = append(cmd.Env, extraEnv...)
	return cmd
}

// TestCrashSafety kills writers at random moments, many times, and then
// checks that every registered path is intact (by Cairn and by Nix) and that
// reopening the store leaves no temporaries.
func TestCrashSafety(t *testing.T) {
	nixtest.Require(t, "nix-store")
	kills := 100
	if testing.Short() {
		kills = 20
	}
	root := filepath.Join(t.TempDir(), "root")
	src := t.TempDir()
	s0 := openRoot(t, root)
	s0.Close()
	r := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	var stderr bytes.Buffer
	for i := range kills {
		cmd := helperCmd(t, "crash", root, src)
		stderr.Reset()
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(20+r.IntN(200)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		err := cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("kill %d: helper ended by itself: %v\n%s", i, err, stderr.String())
		}
	}

	ctx := context.Background()
	s := openRoot(t, root)
	if ents := leftoverTemps(t, s.RealStoreDir()); len(ents) != 0 {
		t.Errorf("%d temporaries left after reopening", len(ents))
	}
	all, err := s.QueryAllValidPaths(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d kills, %d valid paths", kills, len(all))
	var log bytes.Buffer
	res, err := s.Verify(ctx, VerifyOptions{CheckContents: true, Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors || len(res.Invalidated)+len(res.Missing)+len(res.Modified) != 0 {
		t.Errorf("verify after crashes: %+v\n%s", res, log.String())
	}
	if len(res.Unregistered) != 0 {
		t.Errorf("%d unregistered paths linger after crashes (a crash between moving into place and committing): %v",
			len(res.Unregistered), res.Unregistered)
	}
	if code, out := nixVerifyOutput(t, root, "--check-contents"); code != 0 || strings.Contains(out, "modified") || strings.Contains(out, "disappeared") {
		t.Errorf("nix-store --verify --check-contents: exit %d\n%s", code, out)
	}
}

// TestConcurrentProcesses: 16 processes add overlapping sets of paths at once;
// all succeed and every path is valid once, with its files.
func TestConcurrentProcesses(t *testing.T) {
	nixtest.Require(t, "nix-store")
	root := filepath.Join(t.TempDir(), "root")
	src := t.TempDir()
	const files = 40
	var all []string
	for i := range files {
		p := filepath.Join(src, fmt.Sprintf("f%02d", i))
		writeTree(t, p, map[string]string{"a": fmt.Sprintf("file %d\n", i), "sub/b": strings.Repeat("x", i*1000)})
		all = append(all, p)
	}
	const procs = 16
	cmds := make([]*exec.Cmd, procs)
	for g := range procs {
		var set []string
		for i := g % 5; i < files; i += 1 + g%4 {
			set = append(set, all[i])
		}
		cmds[g] = helperCmd(t, "add", root, src, "CAIRN_HELPER_FILES="+strings.Join(set, ","))
	}
	seen := map[string]bool{}
	for _, out := range runConcurrently(t, cmds) {
		for _, p := range strings.Fields(out) {
			seen[p] = true
		}
	}
	checkRegisteredOnce(t, root, slices.Collect(maps.Keys(seen)))
}

// TestNixAndCairnConcurrent runs nix-store --add and Cairn writers at the
// same time on one store, with overlapping sets of paths: the two sides
// share the lock files and the database as Nix's own processes do, so every
// process succeeds, both print the same path for the same source, every path
// is registered once, and both verifiers accept the store.
func TestNixAndCairnConcurrent(t *testing.T) {
	nixtest.Require(t, "nix-store")
	root := filepath.Join(t.TempDir(), "root")
	src := t.TempDir()
	const files = 60
	var all []string
	for i := range files {
		p := filepath.Join(src, fmt.Sprintf("f%02d", i))
		writeTree(t, p, map[string]string{"a": fmt.Sprintf("file %d\n", i), "sub/b": strings.Repeat("y", i*500)})
		all = append(all, p)
	}
	openRoot(t, root).Close() // a store Cairn made; Nix opens it as its own
	const procs = 8
	sets := make([][]string, procs)
	cmds := make([]*exec.Cmd, procs)
	for g := range procs {
		for i := g % 3; i < files; i += 1 + g%3 {
			sets[g] = append(sets[g], all[i])
		}
		if g%2 == 0 {
			cmds[g] = helperCmd(t, "add", root, src, "CAIRN_HELPER_FILES="+strings.Join(sets[g], ","))
			continue
		}
		slices.Reverse(sets[g])
		cmds[g] = exec.Command("nix-store", append([]string{"--store", storeURL(root), "--add"}, sets[g]...)...)
		cmds[g].Env = nixtest.Env()
	}
	pathOf := map[string]string{} // source → store path, as every process printed it
	for g, out := range runConcurrently(t, cmds) {
		printed := strings.Fields(out)
		if len(printed) != len(sets[g]) {
			t.Fatalf("process %d printed %d paths for %d sources", g, len(printed), len(sets[g]))
		}
		for i, p := range printed {
			if q, ok := pathOf[sets[g][i]]; ok && q != p {
				t.Errorf("%s added as %s and as %s", sets[g][i], q, p)
			}
			pathOf[sets[g][i]] = p
		}
	}
	checkRegisteredOnce(t, root, slices.Collect(maps.Values(pathOf)))
}

// runConcurrently runs cmds at the same time and returns what each printed;
// a command that fails ends the test.
func runConcurrently(t *testing.T, cmds []*exec.Cmd) []string {
	t.Helper()
	outs := make([]bytes.Buffer, len(cmds))
	errs := make([]error, len(cmds))
	var wg sync.WaitGroup
	for g, cmd := range cmds {
		cmd.Stdout = &outs[g]
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := cmd.Run(); err != nil {
				errs[g] = fmt.Errorf("%w: %s", err, stderr.String())
			}
		}()
	}
	wg.Wait()
	printed := make([]string, len(cmds))
	for g := range cmds {
		if errs[g] != nil {
			t.Fatalf("process %d (%s): %v", g, filepath.Base(cmds[g].Path), errs[g])
		}
		printed[g] = outs[g].String()
	}
	return printed
}

// checkRegisteredOnce checks that the valid paths of the store under root
// are exactly want, each in one row, that Cairn's and Nix's verifiers accept
// the store, and that no lock file is left in the store dir.
func checkRegisteredOnce(t *testing.T, root string, want []string) {
	t.Helper()
	s := openRoot(t, root)
	valid, err := s.QueryAllValidPaths(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := pathStrings(valid)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("valid paths %v\nwant %v", got, want)
	}
	var n int
	if err := s.rdb.QueryRow(`select count(*) from ValidPaths`).Scan(&n); err != nil || n != len(want) {
		t.Errorf("%d rows, want %d (%v)", n, len(want), err)
	}
	if res, err := s.Verify(context.Background(), VerifyOptions{CheckContents: true}); err != nil || res.Errors {
		t.Errorf("cairn verify: %+v %v", res, err)
	}
	nixVerify(t, root)
	ents, _ := os.ReadDir(s.RealStoreDir())
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".lock") {
			t.Errorf("lock file left: %s", e.Name())
		}
	}
}
