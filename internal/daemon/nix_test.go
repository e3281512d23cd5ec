package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"cairn/internal/config"
	"cairn/internal/gcroots"
	"cairn/internal/sandbox"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/store/storetest"
	"cairn/internal/storepath"
	"cairn/internal/testutil/nixtest"
)

// TestMain lets the test binary act as `cairn daemon --stdio` (the remote
// program of ssh-ng://localhost): serving a store, or relaying to a socket.
func TestMain(m *testing.M) {
	if sandbox.IsInit() { // a build's sandbox init (build_test.go)
		fmt.Fprintln(os.Stderr, sandbox.Init())
		os.Exit(125)
	}
	if url := os.Getenv("CAIRN_TEST_STDIO_STORE"); url != "" {
		os.Exit(serveStdio(url))
	}
	if sock := os.Getenv("CAIRN_TEST_STDIO_SPLICE"); sock != "" {
		if err := Splice(context.Background(), sock, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func serveStdio(url string) int {
	ctx := context.Background()
	cfg, err := store.ParseURL(url, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	st, err := local.Open(ctx, cfg, local.Options{NoFsync: true, ReservedSize: -1})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer st.Close()
	srv := &Server{Store: st, Settings: config.New(), Roots: gcroots.New(cfg.StateDir, cfg.StoreDir, cfg.RealStoreDir), LogDir: cfg.LogDir}
	if err := srv.ServeStream(ctx, os.Stdin, os.Stdout, Decision{User: "stdio", Allowed: true, Trusted: true}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// nixEnv is the environment Nix clients run in: the daemon's socket as the
// store, a private home.
func (td *testDaemon) nixEnv() []string {
	home := filepath.Join(td.dir, "home")
	os.MkdirAll(home, 0o755)
	env := []string{"HOME=" + home, "XDG_CACHE_HOME=" + filepath.Join(home, ".cache")}
	if td.cfg.Root != "" {
		env = append(env, "NIX_REMOTE=unix://"+td.sock+"?root="+td.cfg.Root)
	} else {
		env = append(env, "NIX_REMOTE=unix://"+td.sock)
	}
	if td.cfg.StoreDir != storepath.DefaultStoreDir {
		env = append(env, "NIX_STORE_DIR="+string(td.cfg.StoreDir))
	}
	return env
}

// nixDaemonClientEnv is the environment of a Nix client of the reference
// daemon ref (storetest.StartDaemonWith), with extra entries.
func nixDaemonClientEnv(ref *storetest.Daemon, extra ...string) []string {
	return append([]string{"HOME=" + filepath.Join(ref.Dir, "home"), "NIX_REMOTE=unix://" + ref.Socket + "?root=" + ref.Root}, extra...)
}

func (td *testDaemon) nix(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := nixtest.OutputEnv(td.nixEnv(), name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out))
}

func (td *testDaemon) nixFails(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := nixtest.OutputEnv(td.nixEnv(), name, args...)
	if err == nil {
		t.Fatalf("%s %s succeeded: %s", name, strings.Join(args, " "), out)
	}
	return err.Error()
}

const testDrvExpr = `derivation { name = "hello"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo building; echo out > $out" ]; }`

// TestNixClients drives the daemon with Nix 2.8's own clients and compares
// what they print with the same commands run on a local store by Nix itself.
func TestNixClients(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix", "nix-instantiate")
	td := newTestDaemon(t, [2]string{"require-sigs", "true"})
	ref := nixtest.NewStore(t)
	files := t.TempDir()
	hello := filepath.Join(files, "hello.txt")
	os.WriteFile(hello, []byte("hello\n"), 0o644)
	tree := filepath.Join(files, "tree")
	os.MkdirAll(filepath.Join(tree, "sub"), 0o755)
	os.WriteFile(filepath.Join(tree, "sub", "a"), []byte("aaa"), 0o755)
	os.Symlink("sub/a", filepath.Join(tree, "link"))

	// Both stores get the same content; every query must print the same.
	both := func(name string, args ...string) (string, string) {
		t.Helper()
		return td.nix(t, name, args...), ref.Run(t, nil, name, args...)
	}
	same := func(name string, args ...string) string {
		t.Helper()
		got, want := both(name, args...)
		if got != want {
			t.Errorf("%s %s:\n got %q\nwant %q", name, strings.Join(args, " "), got, want)
		}
		return got
	}
	added := same("nix-store", "--add", hello)
	same("nix-store", "--add-fixed", "sha256", hello)
	same("nix-store", "--add-fixed", "--recursive", "sha1", tree)
	treePath := same("nix-store", "--add", tree)
	drv := same("nix-instantiate", "-E", testDrvExpr)
	withRef := same("nix-instantiate", "--eval", "--read-write-mode", "-E",
		`builtins.toFile "ref.txt" "refers to ${builtins.storePath `+added+`}"`)
	withRef = strings.Trim(withRef, `"`)
	for _, q := range [][]string{
		{"--hash", added}, {"--size", added}, {"--references", withRef}, {"--referrers", added},
		{"--requisites", withRef}, {"--referrers-closure", added}, {"--tree", withRef}, {"--graph", withRef},
		{"--graphml", withRef}, {"--deriver", added}, {"--outputs", drv},
		{"--binding", "builder", drv}, {"--hash", treePath}, {"--requisites", drv},
	} {
		same("nix-store", append([]string{"-q"}, q...)...)
	}
	same("nix-store", "--check-validity", added, withRef)
	same("nix", "store", "dump-path", treePath)
	td.nix(t, "nix-store", "--verify", "--check-contents")

	// nix path-info --json -r: equal but for registration times.
	pathInfo := func(s string) []map[string]any {
		var v []map[string]any
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			t.Fatal(err)
		}
		for _, m := range v {
			delete(m, "registrationTime")
		}
		return v
	}
	gotJSON, wantJSON := both("nix", "path-info", "--json", "-r", withRef)
	if g, w := fmt.Sprint(pathInfo(gotJSON)), fmt.Sprint(pathInfo(wantJSON)); g != w {
		t.Errorf("path-info:\n got %s\nwant %s", g, w)
	}
	ping := exec.Command("nix", "store", "ping")
	ping.Env = append(nixtest.Env(), td.nixEnv()...)
	if out, err := ping.CombinedOutput(); err != nil || !strings.Contains(string(out), "Version: "+HandshakeVersion) {
		t.Errorf("store ping: %q %v", out, err)
	}

	// Export from the reference store, import through the daemon.
	os.WriteFile(filepath.Join(files, "imported.txt"), []byte("imported\n"), 0o644)
	imp := ref.Run(t, nil, "nix-store", "--add", filepath.Join(files, "imported.txt"))
	export, err := exec.Command("nix-store", "--store", ref.URL(), "--export", imp).Output()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nix-store", "--import")
	cmd.Env = append(nixtest.Env(), td.nixEnv()...)
	cmd.Stdin = strings.NewReader(string(export))
	if out, err := cmd.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != imp {
		t.Fatalf("import: %s %v", out, err)
	}
	// And export through the daemon: the same stream.
	cmd = exec.Command("nix-store", "--export", imp)
	cmd.Env = append(nixtest.Env(), td.nixEnv()...)
	if out, err := cmd.Output(); err != nil || string(out) != string(export) {
		t.Fatalf("export differs (%d bytes, want %d): %v", len(out), len(export), err)
	}

	// nix copy to a binary cache and back.
	cache := "file://" + filepath.Join(t.TempDir(), "cache")
	td.nix(t, "nix", "copy", "--to", cache, withRef)
	td2 := newTestDaemon(t, [2]string{"require-sigs", "true"})
	td2.nix(t, "nix", "copy", "--no-check-sigs", "--from", cache, withRef)
	if got := td2.nix(t, "nix-store", "-q", "--hash", withRef); got != td.nix(t, "nix-store", "-q", "--hash", withRef) {
		t.Errorf("copied hash %s", got)
	}

	// Without sandbox-paths the builder /bin/sh is missing (build_test.go builds).
	if msg := td.nixFails(t, "nix-store", "-r", drv); !strings.Contains(msg, "exec /bin/sh: no such file or directory") {
		t.Errorf("build: %s", msg)
	}
	// An input-addressed (unsigned) path: built in the reference store.
	refDrv := ref.Run(t, nil, "nix-instantiate", "-E", testDrvExpr)
	out := ref.Run(t, nil, "nix-store", "--option", "build-users-group", "", "--option", "sandbox-paths", "/bin/sh=/bin/busybox", "-r", refDrv)
	refCopy := func(td *testDaemon, args ...string) (string, error) {
		b, err := nixtest.OutputEnv(td.nixEnv(), "nix", append(append([]string{"copy", "--from", ref.URL()}, args...), out)...)
		return string(b), err
	}
	// Trusted, signatures required: refused unless --no-check-sigs.
	if _, err := refCopy(td); err == nil || !strings.Contains(err.Error(), "lacks a valid signature") {
		t.Fatalf("unsigned copy: %v", err)
	}
	if _, err := refCopy(td, "--no-check-sigs"); err != nil {
		t.Fatalf("trusted copy with --no-check-sigs: %v", err)
	}
	// Untrusted: refused even with --no-check-sigs.
	td3 := newTestDaemon(t, [2]string{"require-sigs", "true"})
	td3.setDecision(Decision{User: "u", UID: 1000, Allowed: true})
	if _, err := refCopy(td3, "--no-check-sigs"); err == nil || !strings.Contains(err.Error(), "lacks a valid signature") {
		t.Fatalf("untrusted unsigned copy: %v", err)
	}
	// Roots: --add-root through the daemon, seen by --gc --print-roots.
	root := filepath.Join(td.dir, "home", "result")
	td.nix(t, "nix-store", "--add-root", root, "-r", added)
	if roots := td.nix(t, "nix-store", "--gc", "--print-roots"); !strings.Contains(roots, root+" -> "+added) {
		t.Errorf("print-roots: %q", roots)
	}
}

// TestNixStdio reaches the daemon over ssh-ng://localhost, whose remote program
// is `cairn daemon --stdio`: serving the store itself, and relaying to the
// socket.
func TestNixStdio(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix")
	td := newTestDaemon(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	hello := filepath.Join(t.TempDir(), "hello.txt")
	os.WriteFile(hello, []byte("hello\n"), 0o644)
	added := td.nix(t, "nix-store", "--add", hello)
	want := td.nix(t, "nix", "store", "dump-path", added)
	for _, mode := range []string{"CAIRN_TEST_STDIO_STORE=" + td.cfg.String(), "CAIRN_TEST_STDIO_SPLICE=" + td.sock} {
		script := filepath.Join(td.dir, "remote-program")
		os.WriteFile(script, []byte(fmt.Sprintf("#!/bin/sh\nexport %s\nexec %s \"$@\"\n", mode, self)), 0o755)
		url := "ssh-ng://localhost?remote-program=" + script
		got, err := nixtest.OutputEnv([]string{"HOME=" + td.dir}, "nix", "--store", url, "store", "dump-path", added)
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		if strings.TrimSpace(string(got)) != want {
			t.Errorf("%s: dump differs", mode)
		}
		// An invalid path: the 2.8 client ignores the daemon's error and reads
		// on, so it must fail on the closed connection rather than wait forever.
		missing := "/nix/store/00000000000000000000000000000000-missing"
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, "nix", "--store", url, "store", "dump-path", missing)
		cmd.Env = append(nixtest.Env(), "HOME="+td.dir)
		out, err := cmd.CombinedOutput()
		hung := ctx.Err() != nil
		cancel()
		if hung {
			t.Fatalf("%s: dump-path of an invalid path hung", mode)
		}
		if err == nil {
			t.Errorf("%s: dump-path of an invalid path succeeded: %s", mode, out)
		}
	}
}

// TestNixUnprivileged connects as an ordinary user (cairntest, made if
// missing): allowed but untrusted, then not allowed.
func TestNixUnprivileged(t *testing.T) {
	nixtest.Require(t, "nix-store", "setpriv")
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch users")
	}
	u, err := user.Lookup("cairntest")
	if err != nil {
		if out, err := exec.Command("useradd", "-m", "cairntest").CombinedOutput(); err != nil {
			t.Skipf("useradd: %v %s", err, out)
		}
		if u, err = user.Lookup("cairntest"); err != nil {
			t.Skip(err)
		}
	}
	for _, d := range []string{"allowed", "refused"} {
		t.Run(d, func(t *testing.T) {
			allowed := "*"
			if d == "refused" {
				allowed = "root"
			}
			td := newTestDaemon(t, [2]string{"trusted-users", "root"}, [2]string{"allowed-users", allowed})
			td.policy.Store(PolicyFromSettings(td.srv.Settings))
			for p := td.dir; p != "/"; p = filepath.Dir(p) {
				os.Chmod(p, 0o755) // the socket must be reachable
			}
			hello := filepath.Join(td.dir, "hello.txt")
			os.WriteFile(hello, []byte("hello from cairntest\n"), 0o644)
			home := filepath.Join(td.dir, "userhome")
			os.MkdirAll(home, 0o755)
			os.Chown(home, atoi(u.Uid), atoi(u.Gid))
			cmd := exec.Command("setpriv", "--reuid="+u.Uid, "--regid="+u.Gid, "--init-groups",
				"nix-store", "--store", "unix://"+td.sock, "--add", hello)
			cmd.Env = append(nixtest.Env(), "HOME="+home, "XDG_CACHE_HOME="+home+"/.cache")
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if d == "refused" {
				if err == nil || !strings.Contains(stderr.String(), "user 'cairntest' is not allowed to connect") {
					t.Fatalf("refused user: %v %s", err, out)
				}
				return
			}
			if err != nil || !regexp.MustCompile(`^/nix/store/[0-9a-z]{32}-hello.txt$`).MatchString(strings.TrimSpace(string(out))) {
				t.Fatalf("allowed user: %v %s %s", err, out, stderr.String())
			}
			fi, err := os.Stat(filepath.Join(td.cfg.StateDir, "gcroots", "per-user", "cairntest"))
			if err != nil {
				t.Fatal(err)
			}
			if st := fi.Sys().(*syscall.Stat_t); strconv.Itoa(int(st.Uid)) != u.Uid {
				t.Errorf("per-user dir owned by %d", st.Uid)
			}
			// Untrusted: the daemon's log says so, and repairs are refused.
			cmd = exec.Command("setpriv", "--reuid="+u.Uid, "--regid="+u.Gid, "--init-groups",
				"nix-store", "--store", "unix://"+td.sock, "--verify", "--repair")
			cmd.Env = append(nixtest.Env(), "HOME="+home)
			if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "not privileged to repair") {
				t.Errorf("untrusted repair: %v %s", err, out)
			}
		})
	}
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }
