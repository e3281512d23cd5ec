package daemon

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"cairn/internal/testutil/nixtest"
)

// otherStoreDirNix is a small graph whose outputs name the store dir: a
// dependency, and a derivation that reads it and records $NIX_STORE.
const otherStoreDirNix = `
let
  dep = derivation { name = "dep"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo dep > $out" ]; };
  src = builtins.toFile "src.txt" "source\n";
in derivation {
  name = "top"; system = builtins.currentSystem; builder = "/bin/sh";
  inherit dep src;
  args = [ "-c" "read x < $dep; read y < $src; echo \"$x $y $dep $src $NIX_STORE\" > $out" ];
}
`

// TestNixOtherStoreDir runs Nix 2.8's clients against a daemon whose store
// dir is not /nix/store (local?store=…, the clients with NIX_STORE_DIR), and
// compares paths, hashes, references and outputs with Nix 2.8's own store
// with the same store dir. The build is sandboxed: inputs and the output are
// mounted at the non-default store dir inside.
func TestNixOtherStoreDir(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix", "nix-instantiate")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	var storeDir string
	td := newTestDaemonAt(t, func(dir string) string {
		storeDir = filepath.Join(dir, "x", "store")
		return fmt.Sprintf("local?store=%s&state=%s&log=%s", storeDir,
			filepath.Join(dir, "x", "state"), filepath.Join(dir, "x", "log"))
	}, [2]string{"sandbox-paths", "/bin/sh=/bin/busybox"})
	if string(td.cfg.StoreDir) != storeDir || td.cfg.RealStoreDir != storeDir {
		t.Fatalf("store dir %s, real %s; want %s", td.cfg.StoreDir, td.cfg.RealStoreDir, storeDir)
	}
	// Nix's own store: the same logical store dir, a chroot store.
	refRoot := filepath.Join(t.TempDir(), "root")
	refEnv := []string{"NIX_STORE_DIR=" + storeDir}
	ref := func(args ...string) string {
		t.Helper()
		full := append([]string{"--store", "local?root=" + refRoot,
			"--option", "build-users-group", "", "--option", "sandbox-paths", "/bin/sh=/bin/busybox"}, args[1:]...)
		out, err := nixtest.OutputEnv(refEnv, args[0], full...)
		if err != nil {
			t.Fatalf("nix %s: %v", strings.Join(args, " "), err)
		}
		return strings.TrimSpace(string(out))
	}
	same := func(args ...string) string {
		t.Helper()
		got, want := td.nix(t, args[0], args[1:]...), ref(args...)
		if got != want {
			t.Errorf("%s:\n got %q\nwant %q", strings.Join(args, " "), got, want)
		}
		return got
	}

	file := filepath.Join(t.TempDir(), "hello.txt")
	os.WriteFile(file, []byte("hello\n"), 0o644)
	added := same("nix-store", "--add", file)
	if !strings.HasPrefix(added, storeDir+"/") {
		t.Fatalf("added %s, not under %s", added, storeDir)
	}
	expr := filepath.Join(t.TempDir(), "top.nix")
	os.WriteFile(expr, []byte(otherStoreDirNix), 0o644)
	drv := same("nix-instantiate", expr)

	out, stderr, err := td.nixOut("nix-store", "-r", drv)
	if err != nil {
		if strings.Contains(stderr, "setting up the build environment") {
			t.Skipf("the kernel refuses the sandbox: %s", stderr)
		}
		t.Fatalf("nix-store -r: %v\n%s", err, stderr)
	}
	if want := ref("nix-store", "-r", drv); out != want {
		t.Fatalf("output %s, Nix built %s", out, want)
	}
	got, err := os.ReadFile(out) // no chroot: the store dir is where the files are
	if err != nil {
		t.Fatal(err)
	}
	// Nix's chroot store keeps its files under root/nix/store whatever the
	// logical store dir (as Cairn's does).
	want, err := os.ReadFile(filepath.Join(refRoot, "nix/store", filepath.Base(out)))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) || !strings.HasSuffix(strings.TrimSpace(string(got)), " "+storeDir) {
		t.Errorf("output %q, Nix's %q", got, want)
	}
	for _, q := range [][]string{{"--hash", out}, {"--references", out}, {"--requisites", out},
		{"--deriver", out}, {"--outputs", drv}, {"--requisites", drv}} {
		same(append([]string{"nix-store", "-q"}, q...)...)
	}
	td.nix(t, "nix-store", "--verify", "--check-contents")

	// nix path-info --json -r: equal but for registration times.
	pathInfo := func(s string) string {
		var v []map[string]any
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			t.Fatalf("path-info: %v", err)
		}
		for _, m := range v {
			delete(m, "registrationTime")
		}
		return fmt.Sprint(v)
	}
	if g, w := pathInfo(td.nix(t, "nix", "path-info", "--json", "-r", out)),
		pathInfo(ref("nix", "path-info", "--json", "-r", out)); g != w {
		t.Errorf("path-info:\n got %s\nwant %s", g, w)
	}

	// An export through the daemon imports into Nix's store as its own.
	cmd := exec.Command("nix-store", "--export", added)
	cmd.Env = append(nixtest.Env(), td.nixEnv()...)
	export, err := cmd.Output()
	if err != nil {
		t.Fatalf("export: %v", err)
	}
	refExport, err := nixtest.OutputEnv(refEnv, "nix-store", "--store", "local?root="+refRoot, "--export", added)
	if err != nil || string(export) != string(refExport) {
		t.Errorf("export differs from Nix's (%d bytes, want %d): %v", len(export), len(refExport), err)
	}

	// The collector sees the same dead paths; the store dir names them all.
	sorted := func(s string) string {
		l := strings.Fields(s)
		slices.Sort(l)
		return strings.Join(l, "\n")
	}
	dead := td.nix(t, "nix-store", "--gc", "--print-dead")
	if got, want := sorted(dead), sorted(ref("nix-store", "--gc", "--print-dead")); got != want || !strings.Contains(got, out) {
		t.Errorf("--gc --print-dead:\n got %s\nwant %s", got, want)
	}

	// Deleting through the daemon: the output has no roots and no referrers.
	td.nix(t, "nix-store", "--delete", out)
	if _, err := os.Lstat(out); !os.IsNotExist(err) {
		t.Errorf("%s still there after --delete: %v", out, err)
	}
	if msg := td.nixFails(t, "nix-store", "-q", "--hash", out); !strings.Contains(msg, "is not valid") {
		t.Errorf("query of the deleted path: %s", msg)
	}
	if left := td.tempLeft(); len(left) > 0 {
		t.Errorf("temporaries left: %v", left)
	}
}
