package daemon

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"cairn/internal/protocol"
	"cairn/internal/store/storetest"
	"cairn/internal/storepath"
	"cairn/internal/testutil/nixtest"
	"cairn/internal/wire"
)

// substCache is a binary cache Nix 2.8 wrote and signed: a closure top →
// mid → dep, and the output of a derivation whose builder would fail, so
// that only substitution can realise it.
type substCache struct {
	dir, pub      string
	dep, mid, top string
	drvExpr       string // evaluates to the derivation
	drv           string // its .drv, in the cache
	drvOut        string // its output path, in the cache
}

const substDrvExpr = `derivation { name = "from-cache"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo cannot build; exit 1" ]; }`

func makeSubstCache(t *testing.T) *substCache {
	t.Helper()
	dir := t.TempDir()
	src := &nixtest.Store{Root: filepath.Join(dir, "src")}
	sc := &substCache{dir: filepath.Join(dir, "cache"), drvExpr: substDrvExpr}
	os.WriteFile(filepath.Join(dir, "dep.txt"), []byte("dependency\n"), 0o644)
	sc.dep = src.Run(t, nil, "nix-store", "--add", filepath.Join(dir, "dep.txt"))
	imp := func(path, content string, refs []string, deriver string) {
		tree := filepath.Join(dir, filepath.Base(path))
		os.MkdirAll(tree, 0o755)
		os.WriteFile(filepath.Join(tree, "run"), []byte(content), 0o755)
		os.WriteFile(filepath.Join(tree, "data"), []byte(strings.Repeat(path+"\n", 20000)), 0o644)
		nar, err := nixtest.Output(nil, "nix-store", "--dump", tree)
		if err != nil {
			t.Fatal(err)
		}
		src.Run(t, nixtest.ExportStream(nar, path, refs, deriver), "nix-store", "--import")
	}
	sc.mid = "/nix/store/1b4x8vq2w0c7hz1mfgrwg3k2dh9ld6s1-mid"
	imp(sc.mid, "#!/bin/sh\ncat "+sc.dep+"\n", []string{sc.dep}, "/nix/store/9sywk8y9zb6m4ps5vgj7ajqpk7mwli6l-mid.drv")
	sc.top = "/nix/store/3k4x8vq2w0c7hz1mfgrwg3k2dh9ld6s1-top"
	imp(sc.top, "#!/bin/sh\nexec "+sc.mid+"/run # "+sc.top+"\n", []string{sc.mid, sc.top}, "/nix/store/2sywk8y9zb6m4ps5vgj7ajqpk7mwli6l-top.drv")
	// The derivation's output, made without building it.
	sc.drv = src.Run(t, nil, "nix-instantiate", "--expr", sc.drvExpr)
	sc.drvOut = src.Run(t, nil, "nix-store", "-q", "--outputs", sc.drv)
	imp(sc.drvOut, "#!/bin/sh\necho from the cache "+sc.mid+"\n", []string{sc.mid}, sc.drv)
	sec, pub := filepath.Join(dir, "key.sec"), filepath.Join(dir, "key.pub")
	nixtest.Run(t, nil, "nix-store", "--generate-binary-cache-key", "cairn-daemon-test-1", sec, pub)
	b, _ := os.ReadFile(pub)
	sc.pub = strings.TrimSpace(string(b))
	src.Run(t, nil, "nix", "copy", "--to", "file://"+sc.dir+"?compression=xz&secret-key="+sec, sc.top, sc.drvOut, sc.drv)
	return sc
}

// pathInfos is nix path-info --json without registration times.
func pathInfos(t *testing.T, env []string, paths ...string) string {
	t.Helper()
	out, err := nixtest.OutputEnv(env, "nix", append([]string{"path-info", "--json", "--recursive"}, paths...)...)
	if err != nil {
		t.Fatal(err)
	}
	var infos []map[string]any
	if err := json.Unmarshal(out, &infos); err != nil {
		t.Fatal(err)
	}
	for _, i := range infos {
		delete(i, "registrationTime")
	}
	b, _ := json.MarshalIndent(infos, "", " ")
	return string(b)
}

// TestNixSubstitute drives cairn daemon and nix-daemon 2.8, both with the
// same file:// cache as substituter, with Nix 2.8's clients: nix-store -r
// --dry-run (QueryMissing: what will be fetched and the sizes), nix-store -r
// of a plain path (its closure substituted) and of a derivation whose output
// the cache has (substituted, not built: its builder fails), a path no cache
// has; then compares nix path-info --json and checks the contents.
func TestNixSubstitute(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix", "nix-instantiate", "nix-daemon")
	sc := makeSubstCache(t)
	cache := "file://" + sc.dir
	td := newTestDaemon(t, [2]string{"substituters", cache}, [2]string{"trusted-public-keys", sc.pub})
	ref := storetest.StartDaemonWith(t, []string{"nix-daemon"}, []string{"--option", "substituters", cache,
		"--option", "trusted-public-keys", sc.pub})
	refEnv := nixDaemonClientEnv(ref)
	// The clients name the cache too (else they send substituters = "").
	clientConf := "NIX_CONFIG=experimental-features = nix-command\nsandbox = false\nsubstituters = " + cache + "\n"
	refEnv = append(refEnv, clientConf)
	ourEnv := append(td.nixEnv(), clientConf)
	ours := func(args ...string) nixRun { return runNix(ourEnv, args[0], args[1:]...) }
	theirs := func(args ...string) nixRun { return runNix(refEnv, args[0], args[1:]...) }
	same := func(what string, args ...string) nixRun {
		t.Helper()
		o, n := ours(args...), theirs(args...)
		if o.code != n.code || o.stdout != n.stdout {
			t.Errorf("%s: cairn %d %q\n%s\nnix-daemon %d %q\n%s", what, o.code, o.stdout, o.stderr, n.code, n.stdout, n.stderr)
		}
		return o
	}
	// Nix's client prints what QueryMissing said; the sizes are rounded.
	dry := func(what string, args ...string) {
		t.Helper()
		o, n := ours(args...), theirs(args...)
		if o.stderr != n.stderr || o.code != n.code {
			t.Errorf("%s: cairn %d\n%s\nnix-daemon %d\n%s", what, o.code, o.stderr, n.code, n.stderr)
		}
		if !strings.Contains(o.stderr, "will be fetched") {
			t.Errorf("%s: nothing to fetch:\n%s", what, o.stderr)
		}
	}

	// builtins.storePath makes the evaluator EnsurePath mid: substituted.
	useMid := `derivation { name = "uses-mid"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "exit 1" ]; dep = builtins.storePath "` + sc.mid + `"; }`
	if r := same("ensure path", "nix-instantiate", "--expr", useMid); r.code != 0 {
		t.Fatalf("nix-instantiate with builtins.storePath: %s", r.stderr)
	} else {
		// To be built (its output is in no cache), nothing to fetch.
		o, n := ours("nix-store", "-r", "--dry-run", r.stdout), theirs("nix-store", "-r", "--dry-run", r.stdout)
		if o.stderr != n.stderr || !strings.Contains(o.stderr, "will be built") {
			t.Errorf("dry run of a derivation to build: cairn\n%s\nnix-daemon\n%s", o.stderr, n.stderr)
		}
	}
	dry("dry run of a path", "nix-store", "-r", "--dry-run", sc.top)
	r := same("realise a path", "nix-store", "-r", sc.top)
	if r.code != 0 {
		t.Fatalf("nix-store -r: %s", r.stderr)
	}
	if !regexp.MustCompile(`copying path '` + regexp.QuoteMeta(sc.top) + `' from '` + regexp.QuoteMeta(cache) + `'`).MatchString(r.stderr) {
		t.Errorf("no copying message:\n%s", r.stderr)
	}
	if got, want := pathInfos(t, ourEnv, sc.top), pathInfos(t, refEnv, sc.top); got != want {
		t.Errorf("path-info:\ncairn %s\nnix-daemon %s", got, want)
	}
	if out, err := nixtest.Output(nil, "nix-store", "--store", "local?root="+td.cfg.Root, "--verify", "--check-contents"); err != nil {
		t.Errorf("verify: %v %s", err, out)
	}

	// A derivation whose output the cache has.
	// A .drv that is not valid is not substituted by Nix 2.8.
	if o, n := ours("nix-store", "-r", sc.drv), theirs("nix-store", "-r", sc.drv); o.code != n.code || lastLine(o.stderr) != lastLine(n.stderr) {
		t.Errorf("missing .drv: cairn %d %q, nix-daemon %d %q", o.code, lastLine(o.stderr), n.code, lastLine(n.stderr))
	}
	drvO, drvN := ours("nix-instantiate", "--expr", sc.drvExpr), theirs("nix-instantiate", "--expr", sc.drvExpr)
	if drvO.code != 0 || drvO.stdout != drvN.stdout {
		t.Fatalf("nix-instantiate: %+v %+v", drvO, drvN)
	}
	dry("dry run of a derivation", "nix-store", "-r", "--dry-run", drvO.stdout)
	if r := same("realise a derivation", "nix-store", "-r", drvO.stdout); r.code != 0 || r.stdout != sc.drvOut {
		t.Errorf("nix-store -r drv: %+v", r)
	} else if strings.Contains(r.stderr, "building") {
		t.Errorf("built instead of substituted:\n%s", r.stderr)
	}
	if got, want := pathInfos(t, ourEnv, sc.drvOut), pathInfos(t, refEnv, sc.drvOut); got != want {
		t.Errorf("path-info:\ncairn %s\nnix-daemon %s", got, want)
	}

	// A path no cache has.
	missing := "/nix/store/0000000000000000000000000000000a-missing"
	o, n := ours("nix-store", "-r", missing), theirs("nix-store", "-r", missing)
	if o.code != n.code || lastLine(o.stderr) != lastLine(n.stderr) {
		t.Errorf("missing path: cairn %d %q, nix-daemon %d %q", o.code, o.stderr, n.code, n.stderr)
	}
	// QuerySubstitutablePaths wants mass queries, which nix copy's cache
	// does not (no WantMassQuery): both answer nothing... as nix-store does.
	same("query substitutes", "nix-store", "-q", "--hash", sc.top)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestNixSubstituteHTTP: cairn daemon substitutes from an http:// cache on
// loopback for Nix 2.8's nix-store -r, and the client receives Nix's
// activities (Substitute, CopyPath, FileTransfer) with progress.
func TestNixSubstituteHTTP(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix", "nix-instantiate")
	sc := makeSubstCache(t)
	srv := httptest.NewServer(http.FileServer(http.Dir(sc.dir)))
	defer srv.Close()
	td := newTestDaemon(t, [2]string{"substituters", srv.URL}, [2]string{"trusted-public-keys", sc.pub})
	env := append(td.nixEnv(), "NIX_CONFIG=experimental-features = nix-command\nsubstituters = "+srv.URL+"\n")
	r := runNix(env, "nix-store", "-r", "--log-format", "internal-json", "-v", sc.top)
	if r.code != 0 || r.stdout != sc.top {
		t.Fatalf("nix-store -r: %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	types := map[int]int{}
	var progress bool
	for _, line := range strings.Split(r.stderr, "\n") {
		var m struct {
			Action string `json:"action"`
			Type   int    `json:"type"`
			Fields []any  `json:"fields"`
		}
		if json.Unmarshal([]byte(strings.TrimPrefix(line, "@nix ")), &m) != nil {
			continue
		}
		if m.Action == "start" {
			types[m.Type]++
		}
		if n, ok := fieldNum(m.Fields, 0); m.Action == "result" && m.Type == 105 && len(m.Fields) == 4 && ok && n > 0 {
			progress = true
		}
	}
	// Three paths: a Substitute (108), CopyPath (100) and FileTransfer (101) each.
	if types[108] != 3 || types[100] != 3 || types[101] != 3 || !progress {
		t.Errorf("activities started by type %v, progress %v:\n%s", types, progress, r.stderr)
	}
	if testing.Verbose() {
		t.Log(r.stderr)
	}
	if out, err := nixtest.Output(nil, "nix-store", "--store", "local?root="+td.cfg.Root, "--verify", "--check-contents"); err != nil {
		t.Errorf("verify: %v %s", err, out)
	}
}

func fieldNum(fields []any, i int) (float64, bool) {
	if i >= len(fields) {
		return 0, false
	}
	n, ok := fields[i].(float64)
	return n, ok
}

// dialSocket is testDaemon.dial for any daemon's socket.
func dialSocket(t *testing.T, sock string) *client {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(time.Minute))
	cl := &client{t: t, c: c, r: wire.NewReader(c), w: wire.NewWriter(c)}
	cl.r.StoreDir = storepath.DefaultStoreDir
	di, err := protocol.ClientHandshake(cl.r, cl.w, protocol.ClientConfig{Version: protocol.Nix28}, func(m *protocol.Message) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	cl.info, cl.p = di, di.Params
	return cl
}

// TestSubstituteQueries sends the substitute queries (QuerySubstitutablePaths,
// HasSubstitutes, QuerySubstitutablePathInfos, the old
// QuerySubstitutablePathInfo) to cairn daemon and nix-daemon 2.8 with the same
// cache, with and without WantMassQuery, and compares the replies.
func TestSubstituteQueries(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix", "nix-instantiate", "nix-daemon")
	sc := makeSubstCache(t)
	missing := "/nix/store/0000000000000000000000000000000a-missing"
	paths := []storepath.StorePath{mustParse(t, sc.top), mustParse(t, sc.dep), mustParse(t, missing)}
	for _, mass := range []bool{false, true} {
		t.Run(fmt.Sprintf("WantMassQuery=%v", mass), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "cache")
			if out, err := nixtest.Output(nil, "cp", "-a", sc.dir, dir); err != nil {
				t.Fatalf("cp: %v %s", err, out)
			}
			if mass {
				os.Chmod(filepath.Join(dir, "nix-cache-info"), 0o644)
				os.WriteFile(filepath.Join(dir, "nix-cache-info"), []byte("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"), 0o644)
			}
			cache := "file://" + dir
			td := newTestDaemon(t, [2]string{"substituters", cache}, [2]string{"trusted-public-keys", sc.pub})
			ref := storetest.StartDaemonWith(t, []string{"nix-daemon"}, []string{"--option", "substituters", cache,
				"--option", "trusted-public-keys", sc.pub})
			ours, theirs := dialSocket(t, td.sock), dialSocket(t, ref.Socket)
			for _, req := range []protocol.Request{
				&protocol.PathsRequest{Code: protocol.OpQuerySubstitutablePaths, Paths: paths},
				&protocol.PathRequest{Code: protocol.OpHasSubstitutes, Path: paths[0]},
				&protocol.PathRequest{Code: protocol.OpHasSubstitutes, Path: paths[2]},
				&protocol.QuerySubstitutablePathInfosRequest{Paths: paths},
				&protocol.PathRequest{Code: protocol.OpQuerySubstitutablePathInfo, Path: paths[0]},
				&protocol.PathRequest{Code: protocol.OpQuerySubstitutablePathInfo, Path: paths[2]},
			} {
				o, oerr := ours.call(req, nil)
				n, nerr := theirs.call(req, nil)
				if (oerr != nil) != (nerr != nil) {
					t.Errorf("%v: cairn error %v, nix-daemon error %v", req.Op(), oerr, nerr)
					continue
				}
				if si, ok := n.(*protocol.SubstitutablePathInfosReply); ok {
					if len(si.Infos) != 2 {
						t.Errorf("nix-daemon knows %d of the paths, want 2 (the test proves nothing)", len(si.Infos))
					}
					slices.SortFunc(si.Infos, func(a, b protocol.SubstitutablePathInfo) int { return storepath.Compare(a.Path, b.Path) })
					slices.SortFunc(o.(*protocol.SubstitutablePathInfosReply).Infos, func(a, b protocol.SubstitutablePathInfo) int { return storepath.Compare(a.Path, b.Path) })
				}
				if !reflect.DeepEqual(o, n) {
					t.Errorf("%v %v:\ncairn      %+v\nnix-daemon %+v", req.Op(), req, o, n)
				}
			}
		})
	}
}

func mustParse(t *testing.T, s string) storepath.StorePath {
	t.Helper()
	p, err := storepath.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestNixSubstituteThenBuild: a derivation whose input derivation's output
// is in the cache (and its own is not) gets the input substituted and is
// built, through cairn daemon and nix-daemon 2.8 (in its sandbox): the same
// output path and NAR hash.
func TestNixSubstituteThenBuild(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix", "nix-instantiate", "nix-daemon")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	sc := makeSubstCache(t)
	cache := "file://" + sc.dir
	td := newTestDaemon(t, [2]string{"substituters", cache}, [2]string{"trusted-public-keys", sc.pub},
		[2]string{"sandbox-paths", "/bin/sh=/bin/busybox"})
	ref := storetest.StartDaemonWith(t, []string{"nix-daemon"}, []string{"--option", "substituters", cache,
		"--option", "trusted-public-keys", sc.pub, "--option", "sandbox", "true", "--option", "sandbox-paths", "/bin/sh=/bin/busybox"})
	clientConf := "NIX_CONFIG=experimental-features = nix-command\nsubstituters = " + cache + "\n"
	refEnv := nixDaemonClientEnv(ref, clientConf)
	ourEnv := append(td.nixEnv(), clientConf)
	expr := `let cached = ` + sc.drvExpr + `; in derivation { name = "uses-cached"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "read line < ${cached}/run; echo $line > $out" ]; }`
	var outs [2]nixRun
	for i, env := range [][]string{ourEnv, refEnv} {
		drv := runNix(env, "nix-instantiate", "--expr", expr)
		if drv.code != 0 {
			t.Fatalf("nix-instantiate: %s", drv.stderr)
		}
		outs[i] = runNix(env, "nix-store", "-r", drv.stdout)
	}
	o, n := outs[0], outs[1]
	if n.code != 0 {
		if strings.Contains(n.stderr, "sandbox") {
			t.Skipf("Nix's own sandbox does not work here: %s", n.stderr)
		}
		t.Fatalf("nix-daemon: %s", n.stderr)
	}
	if o.code != 0 || o.stdout != n.stdout {
		t.Fatalf("cairn %d %q\n%s\nnix-daemon %q", o.code, o.stdout, o.stderr, n.stdout)
	}
	for _, r := range []nixRun{o, n} {
		if !strings.Contains(r.stderr, "copying path '"+sc.drvOut+"' from") || strings.Contains(r.stderr, "from-cache.drv'...") {
			t.Errorf("the input was not substituted:\n%s", r.stderr)
		}
	}
	if got, want := pathInfos(t, ourEnv, o.stdout), pathInfos(t, refEnv, n.stdout); got != want {
		t.Errorf("path-info:\ncairn %s\nnix-daemon %s", got, want)
	}
}

// TestUntrustedSubstituters: an untrusted client's substituters are used
// only when the daemon lists them in trusted-substituters (else ignored
// with nix-daemon's warning), as nix-daemon 2.8.
func TestUntrustedSubstituters(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix")
	sc := makeSubstCache(t)
	cache := "file://" + sc.dir
	for _, tc := range []struct {
		name    string
		trusted string // the daemon's trusted-substituters
		want    bool   // substituted
	}{{"listed", cache, true}, {"not listed", "", false}} {
		t.Run(tc.name, func(t *testing.T) {
			td := newTestDaemon(t, [2]string{"trusted-substituters", tc.trusted}, [2]string{"trusted-public-keys", sc.pub})
			td.setDecision(Decision{User: "someone", UID: uint32(os.Getuid()), Allowed: true})
			env := append(td.nixEnv(), "NIX_CONFIG=experimental-features = nix-command\nsubstituters = "+cache+"\n")
			r := runNix(env, "nix-store", "-r", sc.top)
			if (r.code == 0) != tc.want {
				t.Errorf("nix-store -r: %d\n%s", r.code, r.stderr)
			}
			if !tc.want && !strings.Contains(r.stderr, "ignoring untrusted substituter '"+cache+"'") {
				t.Errorf("no warning:\n%s", r.stderr)
			}
		})
	}
}

// TestNixCopySubstituteOnDestination: QueryValidPaths with its substitute
// flag (which Nix 2.8's client sets from builders-use-substitutes) fetches
// what the daemon's caches have before it answers, through cairn daemon as
// through nix-daemon: the paths nix copy would have sent come from the
// cache instead, signed by it.
func TestNixCopySubstituteOnDestination(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix", "nix-daemon")
	sc := makeSubstCache(t)
	cache := "file://" + sc.dir
	td := newTestDaemon(t, [2]string{"substituters", cache}, [2]string{"trusted-public-keys", sc.pub})
	ref := storetest.StartDaemonWith(t, []string{"nix-daemon"}, []string{"--option", "substituters", cache,
		"--option", "trusted-public-keys", sc.pub})
	// The closure in a store of the client's, unsigned (an export stream
	// carries no signatures).
	fetched := &nixtest.Store{Root: filepath.Join(t.TempDir(), "fetched")}
	fetched.Run(t, nil, "nix-store", "--option", "substituters", cache, "--option", "trusted-public-keys", sc.pub, "-r", sc.top)
	closure := strings.Fields(fetched.Run(t, nil, "nix-store", "-qR", sc.top))
	stream, err := nixtest.Output(nil, "nix-store", append([]string{"--store", "local?root=" + fetched.Root, "--export"}, closure...)...)
	if err != nil {
		t.Fatal(err)
	}
	src := &nixtest.Store{Root: filepath.Join(t.TempDir(), "src")}
	src.Run(t, stream, "nix-store", "--import")
	clientConf := "NIX_CONFIG=experimental-features = nix-command\nsubstituters = " + cache + "\n"
	var infos [2]string
	for i, env := range [][]string{td.nixEnv(), nixDaemonClientEnv(ref)} {
		env = append(env, clientConf)
		if r := runNix(env, "nix", "copy", "--from", "local?root="+src.Root, "--option", "builders-use-substitutes", "true", sc.top); r.code != 0 {
			t.Fatalf("nix copy: %+v", r)
		}
		infos[i] = pathInfos(t, env, sc.top)
	}
	if infos[0] != infos[1] || !strings.Contains(infos[0], "cairn-daemon-test-1:") {
		t.Errorf("copied with builders-use-substitutes, through cairn daemon:\n%s\nthrough nix-daemon:\n%s", infos[0], infos[1])
	}
}
