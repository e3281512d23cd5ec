package cli

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"cairn/internal/testutil/nixtest"
)

// runMain runs a whole command line as Main does and returns its exit
// status, stdout and stderr.
func runMain(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := execute(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestTakeOptions(t *testing.T) {
	for _, c := range []struct {
		in, rest []string
		options  [][2]string
		err      string
	}{
		{in: []string{"store", "add", "x"}, rest: []string{"store", "add", "x"}},
		{in: []string{"--option", "cores", "3", "store", "--option", "max-jobs", "2", "add", "x"},
			rest: []string{"store", "add", "x"}, options: [][2]string{{"cores", "3"}, {"max-jobs", "2"}}},
		{in: []string{"store", "add", "--", "--option", "a", "b"}, rest: []string{"store", "add", "--", "--option", "a", "b"}},
		{in: []string{"store", "--option", "cores"}, err: "flag '--option' requires 2 argument(s)"},
	} {
		rest, options, err := takeOptions(c.in)
		if c.err != "" {
			if err == nil || err.Error() != c.err {
				t.Errorf("%q: error %v, want %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || !slices.Equal(rest, c.rest) || !slices.Equal(options, c.options) {
			t.Errorf("%q: got %q %q %v, want %q %q", c.in, rest, options, err, c.rest, c.options)
		}
	}
}

// TestOptionOnEveryVerb: --option works wherever Nix's commands take it, a
// setting only Nix's client uses is accepted, and a name no Nix knows is
// refused with Nix's wording.
func TestOptionOnEveryVerb(t *testing.T) {
	url := "local?root=" + filepath.Join(t.TempDir(), "root")
	file := filepath.Join(t.TempDir(), "f")
	os.WriteFile(file, []byte("f\n"), 0o644)
	code, out, errOut := runMain(t, "--store", url, "store", "add", "--option", "fsync-metadata", "false",
		"--option", "experimental-features", "nix-command flakes", file)
	if code != 0 || !strings.HasSuffix(strings.TrimSpace(out), "-f") {
		t.Fatalf("store add with --option: %d %q %q", code, out, errOut)
	}
	code, _, errOut = runMain(t, "--option", "no-such-setting", "1", "--store", url, "store", "query", "--hash", strings.TrimSpace(out))
	if code != 1 || errOut != "error: unknown setting 'no-such-setting'\n" {
		t.Errorf("unknown setting: %d %q", code, errOut)
	}
	// A value the setting cannot take: Nix 2.8 warns and goes on.
	code, hash, errOut := runMain(t, "--option", "fsync-metadata", "maybe", "--store", url, "store", "query", "--hash", strings.TrimSpace(out))
	nixOut, nixErr := nixBoth(t, "nix-store", "--option", "fsync-metadata", "maybe", "--store", url, "-q", "--hash", strings.TrimSpace(out))
	if code != 0 || hash != nixOut || errOut != nixErr {
		t.Errorf("invalid value on the command line: %d %q %q, Nix %q %q", code, hash, errOut, nixOut, nixErr)
	}
	// A store URL parameter no Nix store reads: a warning, as from Nix.
	odd := url + "&no-such-param=1&priority=30"
	code, hash, errOut = runMain(t, "--store", odd, "store", "query", "--hash", strings.TrimSpace(out))
	nixOut, nixErr = nixBoth(t, "nix-store", "--store", odd, "-q", "--hash", strings.TrimSpace(out))
	if code != 0 || hash != nixOut || errOut != nixErr {
		t.Errorf("unknown URL parameter: %d %q %q, Nix %q %q", code, hash, errOut, nixOut, nixErr)
	}
	code, _, errOut = runMain(t, "--store", url, "store", "verify", "--option", "cores")
	if code != 1 || errOut != "error: flag '--option' requires 2 argument(s)\n" {
		t.Errorf("--option without its value: %d %q", code, errOut)
	}
	// nix.conf's settings reach the store verbs too: the store setting
	// chooses the store when --store does not, as it does for nix-store.
	t.Setenv("NIX_CONFIG", "substituters =\nstore = "+url)
	code, hash, errOut = runMain(t, "store", "query", "--hash", strings.TrimSpace(out))
	if want := nixtest.Run(t, nil, "nix-store", "--store", url, "-q", "--hash", strings.TrimSpace(out)); code != 0 || strings.TrimSpace(hash) != want {
		t.Errorf("store from nix.conf: %d %q %q, Nix %q", code, hash, errOut, want)
	}
	t.Setenv("NIX_CONFIG", "substituters =\nfsync-metadata = maybe")
	code, _, errOut = runMain(t, "--store", url, "store", "query", "--hash", strings.TrimSpace(out))
	if code != 1 || !strings.Contains(errOut, "Boolean setting 'fsync-metadata' has invalid value 'maybe'") {
		t.Errorf("a malformed nix.conf setting: %d %q", code, errOut)
	}
}

// TestAutoOptimiseAgainstNix adds the same trees to a Cairn store and to a
// Nix store, both with auto-optimise-store: the same files end up shared
// (the same .links entries, the same link counts), and Nix finds Cairn's
// store intact and with nothing left to optimise.
func TestAutoOptimiseAgainstNix(t *testing.T) {
	nixtest.Require(t, "nix-store")
	src := t.TempDir()
	for _, d := range []string{"one", "two"} {
		os.MkdirAll(filepath.Join(src, d, "sub"), 0o755)
		os.WriteFile(filepath.Join(src, d, "same"), []byte("shared contents\n"), 0o644)
		os.WriteFile(filepath.Join(src, d, "sub", "run"), []byte("#!/bin/sh\necho shared\n"), 0o755)
		os.WriteFile(filepath.Join(src, d, "own"), []byte("only in "+d+"\n"), 0o644)
		os.Symlink("same", filepath.Join(src, d, "link"))
	}
	os.WriteFile(filepath.Join(src, "single"), []byte("shared contents\n"), 0o644)
	srcs := []string{filepath.Join(src, "one"), filepath.Join(src, "two"), filepath.Join(src, "single")}

	ns := nixtest.NewStore(t)
	nixPaths := strings.Fields(ns.Run(t, nil, "nix-store", append([]string{"--option", "auto-optimise-store", "true", "--add"}, srcs...)...))
	url := "local?root=" + filepath.Join(t.TempDir(), "root")
	// The first add is on its own: later adds must link to what it left.
	code, out1, errOut := runMain(t, append([]string{"--store", url, "--option", "auto-optimise-store", "true", "store", "add"}, srcs[0])...)
	if code != 0 {
		t.Fatalf("store add: %s", errOut)
	}
	code, out2, errOut := runMain(t, append([]string{"--store", url, "--option", "auto-optimise-store", "true", "store", "add"}, srcs[1:]...)...)
	if code != 0 {
		t.Fatalf("store add: %s", errOut)
	}
	cairnPaths := strings.Fields(out1 + out2)
	if !slices.Equal(cairnPaths, nixPaths) {
		t.Fatalf("paths %q, Nix %q", cairnPaths, nixPaths)
	}
	nixRoot, cairnRoot := ns.Root, strings.TrimPrefix(url, "local?root=")
	if got, want := linkNames(t, cairnRoot), linkNames(t, nixRoot); !slices.Equal(got, want) {
		t.Errorf(".links holds %q, Nix's %q", got, want)
	}
	for _, p := range nixPaths {
		filepath.Walk(nixRoot+p, func(path string, fi os.FileInfo, err error) error {
			if err != nil {
				t.Fatal(err)
			}
			rel := strings.TrimPrefix(path, nixRoot)
			ci, err := os.Lstat(cairnRoot + rel)
			if err != nil {
				t.Errorf("%s: %v", rel, err)
				return nil
			}
			if fi.IsDir() {
				return nil
			}
			if got, want := ci.Sys().(*syscall.Stat_t).Nlink, fi.Sys().(*syscall.Stat_t).Nlink; got != want {
				t.Errorf("%s: %d links, Nix's %d", rel, got, want)
			}
			return nil
		})
	}
	same1, _ := os.Stat(cairnRoot + cairnPaths[0] + "/same")
	same2, _ := os.Stat(cairnRoot + cairnPaths[2])
	if !os.SameFile(same1, same2) {
		t.Errorf("%s/same and %s are not one file", cairnPaths[0], cairnPaths[2])
	}
	nixtest.Run(t, nil, "nix-store", "--store", url, "--verify", "--check-contents")
	out, err := nixtest.OutputEnv(nil, "sh", "-c", "nix-store --store '"+url+"' --optimise 2>&1")
	if err != nil || !strings.Contains(string(out), "0.00 MiB freed by hard-linking 0 files") {
		t.Errorf("nix-store --optimise after auto-optimise: %v %s", err, out)
	}
	// Without the setting nothing is linked.
	plain := "local?root=" + filepath.Join(t.TempDir(), "root")
	if code, _, errOut := runMain(t, append([]string{"--store", plain, "store", "add"}, srcs...)...); code != 0 {
		t.Fatal(errOut)
	}
	if names := linkNames(t, strings.TrimPrefix(plain, "local?root=")); len(names) != 0 {
		t.Errorf("without auto-optimise-store, .links holds %q", names)
	}
}

// nixBoth runs a Nix tool in nixtest's environment and returns its stdout
// and stderr, failing the test if it fails.
func nixBoth(t *testing.T, name string, args ...string) (string, string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = nixtest.Env()
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, errOut.String())
	}
	return out.String(), errOut.String()
}

// linkNames lists ROOT/nix/store/.links, sorted (none if it does not exist).
func linkNames(t *testing.T, root string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(root, "nix/store/.links"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestBuildAutoGC: cairn build with min-free set collects the dead paths
// first when space is short (the free space faked through Nix's test hook).
func TestBuildAutoGC(t *testing.T) {
	url := "local?root=" + filepath.Join(t.TempDir(), "root")
	file := filepath.Join(t.TempDir(), "dead")
	os.WriteFile(file, []byte("dead\n"), 0o644)
	code, out, errOut := runMain(t, "--store", url, "store", "add", file)
	if code != 0 {
		t.Fatal(errOut)
	}
	dead := strings.TrimSpace(out)
	free := filepath.Join(t.TempDir(), "free")
	os.WriteFile(free, []byte("100"), 0o644)
	t.Setenv("_NIX_TEST_FREE_SPACE_FILE", free)
	t.Setenv("NIX_CONFIG", "substituters =\nmin-free = 1000\nmax-free = 5000")
	missing := "/nix/store/" + strings.Repeat("a", 32) + "-missing"
	_, _, errOut = runMain(t, "build", "--store", url, missing)
	if !strings.Contains(errOut, "running auto-GC to free 4900 bytes") {
		t.Errorf("cairn build did not say it collects: %q", errOut)
	}
	if code, _, _ := runMain(t, "--store", url, "store", "query", "--hash", dead); code == 0 {
		t.Errorf("%s is still valid after the automatic collection", dead)
	}
}

// TestReservedSpaceAgainstNix: gc-reserved-space sizes db/reserved as it
// does for nix-store.
func TestReservedSpaceAgainstNix(t *testing.T) {
	nixtest.Require(t, "nix-store")
	file := filepath.Join(t.TempDir(), "f")
	os.WriteFile(file, []byte("f\n"), 0o644)
	ours, theirs := filepath.Join(t.TempDir(), "root"), filepath.Join(t.TempDir(), "root")
	if code, _, errOut := runMain(t, "--store", "local?root="+ours, "--option", "gc-reserved-space", "1048576", "store", "add", file); code != 0 {
		t.Fatalf("store add: %s", errOut)
	}
	nixBoth(t, "nix-store", "--store", "local?root="+theirs, "--option", "gc-reserved-space", "1048576", "--add", file)
	a, errA := os.Stat(filepath.Join(ours, "nix/var/nix/db/reserved"))
	b, errB := os.Stat(filepath.Join(theirs, "nix/var/nix/db/reserved"))
	if errA != nil || errB != nil || a.Size() != b.Size() || a.Size() != 1<<20 {
		t.Errorf("db/reserved: Cairn %v %v, Nix %v %v", a, errA, b, errB)
	}
}
