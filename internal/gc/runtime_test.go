package gc

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"cairn/internal/protocol"
	"cairn/internal/testutil/nixtest"
)

// TestProcRootsFake reads a made-up /proc: links, maps, environ, the kernel's
// helper paths, and what cannot be read (skipped).
func TestProcRootsFake(t *testing.T) {
	proc := t.TempDir()
	mk := func(rel, data string) {
		p := filepath.Join(proc, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ln := func(rel, target string) {
		p := filepath.Join(proc, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
	ln("42/exe", "/nix/store/aaaa-exe/bin/x")
	ln("42/cwd", "relative")
	ln("42/fd/3", "/nix/store/bbbb-fd/lib")
	ln("42/fd/4", "socket:[123]")
	mk("42/maps", "7f00-7f01 r-xp 00000000 08:01 42 /nix/store/cccc-map/lib/libc.so\n7f01-7f02 rw-p 0 0 0\n"+
		"7f02-7f03 r--p 00000000 08:01 43 /usr/lib/x (deleted)\n")
	mk("42/environ", "PATH=/nix/store/dddd-env/bin:/bin\x00X=/nix/store/\x00")
	mk("notapid/environ", "X=/nix/store/eeee-no\x00")
	mk("sys/kernel/modprobe", "/nix/store/ffff-kmod/bin/modprobe")
	os.MkdirAll(filepath.Join(proc, "43"), 0o755) // a process that is gone: nothing to read
	rs, err := procRoots(context.Background(), proc, "/nix/store")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rs {
		got = append(got, r.Link[len(proc):]+" "+r.Target)
	}
	slices.Sort(got)
	want := []string{
		"/42/environ /nix/store/dddd-env",
		"/42/exe /nix/store/aaaa-exe/bin/x",
		"/42/fd/3 /nix/store/bbbb-fd/lib",
		"/42/maps /nix/store/cccc-map/lib/libc.so",
		"/sys/kernel/modprobe /nix/store/ffff-kmod/bin/modprobe",
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

// TestRuntimeRootMatchesNix keeps a path a running process names in its
// environment, as nix-store --gc does.
func TestRuntimeRootMatchesNix(t *testing.T) {
	nixtest.Require(t, "nix-store")
	root := filepath.Join(t.TempDir(), "root")
	st, roots := openStore(t, root)
	kept := addText(t, st, "in-environ", "named by a process\n")
	gone := addText(t, st, "not-named", "nobody\n")
	cmd := exec.Command("sleep", "60")
	cmd.Env = []string{"CAIRN_TEST_ROOT=" + kept.String() + "/bin"}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	// Start may return before the child has exec'd sleep: until then its
	// environ is not the one given.
	environ := fmt.Sprintf("/proc/%d/environ", cmd.Process.Pid)
	for i := 0; ; i++ {
		if b, _ := os.ReadFile(environ); strings.Contains(string(b), "CAIRN_TEST_ROOT=") {
			break
		}
		if i == 500 {
			t.Fatal("the sleeper's environment never showed CAIRN_TEST_ROOT")
		}
		time.Sleep(10 * time.Millisecond)
	}
	res, err := Collect(context.Background(), st, roots, Options{Action: protocol.GCReturnDead, MaxFreed: NoLimit})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{gone.String()}; !slices.Equal(storePaths(res.Paths), want) {
		t.Errorf("dead %q, want %q", res.Paths, want)
	}
	if got := lines(nixtest.Run(t, nil, "nix-store", "--store", "local?root="+root, "--gc", "--print-dead")); !slices.Equal(storePaths(got), storePaths(res.Paths)) {
		t.Errorf("nix-store --gc --print-dead: %q, cairn %q", got, res.Paths)
	}
}
