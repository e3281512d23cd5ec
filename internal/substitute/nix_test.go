package substitute

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"cairn/internal/narinfo"
	"cairn/internal/nixhash"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
	"cairn/internal/testutil/nixtest"
)

// fixture is a Nix chroot store holding a small closure, a key pair made by
// Nix, and binary caches Nix wrote from the store, one per compression.
type fixture struct {
	src              *nixtest.Store
	dep, mid, top    string // top → mid → dep (CA, --add); top refers to itself
	secFile, pubFile string
	pub              narinfo.PublicKey
	caches           map[string]string // compression → directory
}

var (
	fixtureOnce sync.Once
	fixtureVal  *fixture
	fixtureErr  error
)

func writeFile(t testing.TB, name, data string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(name, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}

// newFixture makes the closure and signed caches with Nix 2.8 (once per test
// binary).
func newFixture(t *testing.T) *fixture {
	nixtest.Require(t, "nix-store", "nix")
	fixtureOnce.Do(func() {
		dir, err := os.MkdirTemp("", "cairn-subst-fixture-")
		if err != nil {
			fixtureErr = err
			return
		}
		fixtureVal, fixtureErr = makeFixture(t, dir)
	})
	if fixtureErr != nil {
		t.Fatal(fixtureErr)
	}
	return fixtureVal
}

func makeFixture(t *testing.T, dir string) (*fixture, error) {
	f := &fixture{src: &nixtest.Store{Root: filepath.Join(dir, "root")}, caches: map[string]string{}}
	writeFile(t, filepath.Join(dir, "dep.txt"), "dependency\n", 0o644)
	f.dep = f.src.Run(t, nil, "nix-store", "--add", filepath.Join(dir, "dep.txt"))
	imp := func(path, content string, refs []string, deriver string) {
		tree := filepath.Join(dir, filepath.Base(path))
		os.MkdirAll(tree, 0o755)
		writeFile(t, filepath.Join(tree, "run"), content, 0o755)
		// Some bulk, so that compression matters.
		writeFile(t, filepath.Join(tree, "data"), strings.Repeat("cairn substitutes "+path+"\n", 4000), 0o644)
		nar, err := nixtest.Output(nil, "nix-store", "--dump", tree)
		if err != nil {
			t.Fatal(err)
		}
		f.src.Run(t, nixtest.ExportStream(nar, path, refs, deriver), "nix-store", "--import")
	}
	f.mid = "/nix/store/1b4x8vq2w0c7hz1mfgrwg3k2dh9ld6s1-mid"
	imp(f.mid, "#!/bin/sh\ncat "+f.dep+"\n", []string{f.dep}, "/nix/store/9sywk8y9zb6m4ps5vgj7ajqpk7mwli6l-mid.drv")
	f.top = "/nix/store/3k4x8vq2w0c7hz1mfgrwg3k2dh9ld6s1-top"
	imp(f.top, "#!/bin/sh\nexec "+f.mid+"/run # "+f.top+"\n", []string{f.mid, f.top}, "/nix/store/2sywk8y9zb6m4ps5vgj7ajqpk7mwli6l-top.drv")
	f.secFile, f.pubFile = filepath.Join(dir, "key.sec"), filepath.Join(dir, "key.pub")
	nixtest.Run(t, nil, "nix-store", "--generate-binary-cache-key", "cairn-test-1", f.secFile, f.pubFile)
	pubText, _ := os.ReadFile(f.pubFile)
	var err error
	if f.pub, err = narinfo.ParsePublicKey(strings.TrimSpace(string(pubText))); err != nil {
		return nil, err
	}
	for _, comp := range []string{"xz", "zstd", "bzip2", "none"} {
		cache := filepath.Join(dir, "cache-"+comp)
		f.src.Run(t, nil, "nix", "copy", "--to", "file://"+cache+"?compression="+comp+"&secret-key="+f.secFile, f.top)
		f.caches[comp] = cache
	}
	return f, nil
}

// copyDir copies a cache so a test may damage it.
func copyDir(t *testing.T, src string) string {
	dst := filepath.Join(t.TempDir(), "cache")
	if out, err := nixtest.Output(nil, "cp", "-a", src, dst); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	return dst
}

// newStore opens an empty Cairn store under a chroot root Nix can read.
func newStore(t *testing.T) (*local.Store, string) {
	t.Helper()
	return newStoreB(t)
}

func newStoreB(t testing.TB) (*local.Store, string) {
	t.Helper()
	root := filepath.Join(t.TempDir(), "root")
	cfg, err := store.ParseURL("local?root="+root, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	st, err := local.Open(context.Background(), cfg, local.Options{NoFsync: true, ReservedSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st, root
}

func parsePath(t *testing.T, s string) storepath.StorePath {
	t.Helper()
	p, err := storepath.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// testLogger records what a substitution reports.
type testLogger struct {
	mu         sync.Mutex
	started    []string
	warnings   []string
	bytes      uint64
	downloads  []string
	downloaded uint64 // the largest progress of one download
}

type testActivity struct {
	l *testLogger
}

func (a testActivity) Progress(done, expected uint64) {
	a.l.mu.Lock()
	a.l.bytes = max(a.l.bytes, done)
	a.l.mu.Unlock()
}
func (a testActivity) Done() {}

// Downloading counts the downloads and their bytes.
func (a testActivity) Downloading(url string) Activity {
	a.l.mu.Lock()
	a.l.downloads = append(a.l.downloads, url)
	a.l.mu.Unlock()
	return downloadActivity{a.l}
}

type downloadActivity struct{ l *testLogger }

func (d downloadActivity) Progress(done, expected uint64) {
	d.l.mu.Lock()
	d.l.downloaded = max(d.l.downloaded, done)
	d.l.mu.Unlock()
}
func (d downloadActivity) Done() {}

func (l *testLogger) Substituting(p storepath.StorePath, url string, narSize uint64) Activity {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.started = append(l.started, p.String()+" "+url)
	return testActivity{l}
}

func (l *testLogger) Error(msg string) { l.Warn("error: " + msg) }

func (l *testLogger) Warn(msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.warnings = append(l.warnings, msg)
}

// pathInfoJSON is what `nix path-info --json` prints for a path, minus its
// registration time.
type pathInfoJSON struct {
	Path       string   `json:"path"`
	NarHash    string   `json:"narHash"`
	NarSize    uint64   `json:"narSize"`
	References []string `json:"references"`
	Deriver    string   `json:"deriver"`
	Signatures []string `json:"signatures"`
	CA         string   `json:"ca"`
	Ultimate   bool     `json:"ultimate"`
}

func nixPathInfo(t *testing.T, root string, paths ...string) string {
	t.Helper()
	out := nixtest.Run(t, nil, "nix", append([]string{"path-info", "--json", "--store", "local?root=" + root, "--recursive"}, paths...)...)
	var infos []pathInfoJSON
	if err := json.Unmarshal([]byte(out), &infos); err != nil {
		t.Fatal(err)
	}
	b, _ := json.MarshalIndent(infos, "", " ")
	return string(b)
}

func cacheConfig(t *testing.T, f *fixture, url string, requireSigs bool) Config {
	c, err := NewCache(url, Options{NegativeTTL: 3600e9, PositiveTTL: 3600e9})
	if err != nil {
		t.Fatal(err)
	}
	return Config{Caches: []*Cache{c}, Keys: []narinfo.PublicKey{f.pub}, RequireSigs: requireSigs}
}

// TestNixCache substitutes a closure from caches Nix 2.8 wrote (every
// compression), then checks the store with nix-store --verify
// --check-contents and compares nix path-info --json with the same closure
// substituted by Nix 2.8 itself (nix-store -r) from the same cache.
func TestNixCache(t *testing.T) {
	f := newFixture(t)
	pubText, _ := os.ReadFile(f.pubFile)
	for _, comp := range []string{"xz", "zstd", "bzip2", "none"} {
		t.Run(comp, func(t *testing.T) {
			st, root := newStore(t)
			sub := New(st, 4)
			log := &testLogger{}
			cfg := cacheConfig(t, f, "file://"+f.caches[comp], true)
			if err := sub.Realise(context.Background(), cfg, []storepath.StorePath{parsePath(t, f.top)}, log); err != nil {
				t.Fatal(err)
			}
			if len(log.started) != 3 {
				t.Errorf("substitutions reported: %q, want 3", log.started)
			}
			nixtest.Run(t, nil, "nix-store", "--store", "local?root="+root, "--verify", "--check-contents")
			ref := filepath.Join(t.TempDir(), "ref")
			nixtest.Run(t, nil, "nix-store", "--store", "local?root="+ref, "--option", "substituters", "file://"+f.caches[comp],
				"--option", "trusted-public-keys", strings.TrimSpace(string(pubText)), "-r", f.top)
			if got, want := nixPathInfo(t, root, f.top), nixPathInfo(t, ref, f.top); got != want {
				t.Errorf("nix path-info --json differs:\ncairn: %s\nnix:   %s", got, want)
			}
			checkNoTemps(t, root)
		})
	}
}

// TestHTTPCache substitutes from an http:// cache on loopback.
func TestHTTPCache(t *testing.T) {
	f := newFixture(t)
	srv := httptest.NewServer(http.FileServer(http.Dir(f.caches["xz"])))
	defer srv.Close()
	st, root := newStore(t)
	sub := New(st, 2)
	cfg := cacheConfig(t, f, srv.URL, true)
	found, err := Query(context.Background(), cfg, parsePath(t, f.top), nil)
	if err != nil {
		t.Fatal(err)
	}
	if found.NarInfo.NarSize == 0 || len(found.NarInfo.References) != 2 {
		t.Errorf("narinfo: %+v", found.NarInfo)
	}
	log := &testLogger{}
	if err := sub.Realise(context.Background(), cfg, []storepath.StorePath{parsePath(t, f.top)}, log); err != nil {
		t.Fatal(err)
	}
	nixtest.Run(t, nil, "nix-store", "--store", "local?root="+root, "--verify", "--check-contents")
	if len(log.downloads) != 3 || !strings.HasPrefix(log.downloads[0], srv.URL+"/nar/") {
		t.Errorf("downloads reported: %q", log.downloads)
	}
	if log.downloaded == 0 || log.bytes == 0 {
		t.Errorf("no progress: %d file bytes, %d NAR bytes", log.downloaded, log.bytes)
	}
	// A path the cache lacks.
	missing := parsePath(t, "/nix/store/0000000000000000000000000000000a-missing")
	err = sub.Realise(context.Background(), cfg, []storepath.StorePath{missing}, nil)
	if !errors.Is(err, ErrNoSubstitute) {
		t.Errorf("missing path: %v, want ErrNoSubstitute", err)
	}
}

// TestSignatures: an unsigned or wrongly signed narinfo is refused with
// require-sigs, accepted without; a content-addressed path needs none.
func TestSignatures(t *testing.T) {
	f := newFixture(t)
	// A cache written without a key: unsigned narinfos.
	unsigned := filepath.Join(t.TempDir(), "unsigned")
	f.src.Run(t, nil, "nix", "copy", "--to", "file://"+unsigned+"?compression=none", f.top)
	_, other, err := narinfo.GenerateKey("other-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name        string
		cache       string
		keys        []narinfo.PublicKey
		requireSigs bool
		wantErr     string
	}{
		{"unsigned refused", unsigned, []narinfo.PublicKey{f.pub}, true, "with a signature by a key in 'trusted-public-keys'"},
		{"wrong key refused", f.caches["none"], []narinfo.PublicKey{other}, true, "with a signature by a key in 'trusted-public-keys'"},
		{"unsigned accepted without require-sigs", unsigned, nil, false, ""},
		{"signed accepted", f.caches["none"], []narinfo.PublicKey{f.pub}, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, _ := newStore(t)
			sub := New(st, 2)
			cfg := cacheConfig(t, f, "file://"+tc.cache, tc.requireSigs)
			cfg.Keys = tc.keys
			err := sub.Realise(context.Background(), cfg, []storepath.StorePath{parsePath(t, f.top)}, nil)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatal(err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want %q", err, tc.wantErr)
			}
			ok, _ := st.IsValidPath(context.Background(), parsePath(t, f.top))
			if ok != (tc.wantErr == "") {
				t.Errorf("top valid = %v", ok)
			}
			// The content-addressed dependency needs no signature.
			if err := sub.Realise(context.Background(), cfg, []storepath.StorePath{parsePath(t, f.dep)}, nil); err != nil {
				t.Errorf("content-addressed %s: %v", f.dep, err)
			}
		})
	}
}

// TestCorrupt: a NAR whose bytes or length differ from the narinfo fails
// cleanly, naming the cache and the path, registers nothing and leaves no
// temporary.
func TestCorrupt(t *testing.T) {
	f := newFixture(t)
	top := parsePath(t, f.top)
	for _, tc := range []struct {
		name    string
		comp    string
		damage  func(data []byte) []byte
		wantErr string
	}{
		{"flipped byte", "none", func(d []byte) []byte { d[len(d)/2] ^= 1; return d }, "hash"},
		{"truncated", "none", func(d []byte) []byte { return d[:len(d)-100] }, ""},
		{"truncated xz", "xz", func(d []byte) []byte { return d[:len(d)-20] }, ""},
		{"extra bytes", "none", func(d []byte) []byte { return append(d, 0, 0, 0, 0, 0, 0, 0, 0) }, ""},
		{"flipped zstd", "zstd", func(d []byte) []byte { d[len(d)-10] ^= 0x55; return d }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cache := copyDir(t, f.caches[tc.comp])
			ni := readNarInfo(t, cache, top)
			name := filepath.Join(cache, ni.URL)
			data, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			os.Chmod(name, 0o644)
			writeFile(t, name, string(tc.damage(data)), 0o644)
			st, root := newStore(t)
			sub := New(st, 2)
			cfg := cacheConfig(t, f, "file://"+cache, true)
			err = sub.Realise(context.Background(), cfg, []storepath.StorePath{top}, nil)
			if err == nil {
				t.Fatal("substituted a damaged NAR")
			}
			if !strings.Contains(err.Error(), f.top) || !strings.Contains(err.Error(), cache) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not name the path and cache (and %q)", err, tc.wantErr)
			}
			if ok, _ := st.IsValidPath(context.Background(), top); ok {
				t.Error("damaged path registered")
			}
			if _, err := os.Lstat(filepath.Join(root, f.top)); err == nil {
				t.Error("damaged path left in the store dir")
			}
			checkNoTemps(t, root)
		})
	}
}

func readNarInfo(t *testing.T, cache string, p storepath.StorePath) *narinfo.NarInfo {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(cache, p.HashPart()+".narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	ni, err := narinfo.ParseString(p.Dir(), string(data))
	if err != nil {
		t.Fatal(err)
	}
	return ni
}

// TestSharedJob: concurrent requests for one path share one substitution.
func TestSharedJob(t *testing.T) {
	f := newFixture(t)
	st, _ := newStore(t)
	sub := New(st, 4)
	cfg := cacheConfig(t, f, "file://"+f.caches["xz"], true)
	log := &testLogger{}
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Go(func() {
			errs[i] = sub.Realise(context.Background(), cfg, []storepath.StorePath{parsePath(t, f.top)}, log)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for _, s := range log.started {
		counts[s]++
	}
	for s, n := range counts {
		if n != 1 {
			t.Errorf("%s substituted %d times", s, n)
		}
	}
	if len(counts) != 3 {
		t.Errorf("substitutions: %v", counts)
	}
}

// TestStoreDirMismatch: a cache for another store dir is skipped with Nix's
// message.
func TestStoreDirMismatch(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "nix-cache-info"), "StoreDir: /gnu/store\nPriority: 10\n", 0o644)
	c, err := NewCache("file://"+dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	sd, _ := storepath.ParseStoreDir("/nix/store")
	_, err = c.Info(context.Background(), sd)
	if err == nil || err.Error() != "binary cache 'file://"+dir+"' is for Nix stores with prefix '/gnu/store', not '/nix/store'" {
		t.Errorf("error %v", err)
	}
}

// checkNoTemps fails when a NAR's temporary is left in the store's
// temporaries dir (what the process keeps for reuse is not, see
// local.TempLeftovers).
func checkNoTemps(t *testing.T, root string) {
	t.Helper()
	left, err := local.TempLeftovers(filepath.Join(root, "nix", "store"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range left {
		t.Errorf("temporary left: %s", name)
	}
}

// TestUnreachable: a cache that cannot be reached is skipped, and reported
// once, however many paths are asked for.
func TestUnreachable(t *testing.T) {
	c, err := NewCache("http://127.0.0.1:1/", Options{HTTP: HTTPOptions{ConnectTimeout: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	st, _ := newStore(t)
	sub := New(st, 2)
	log := &testLogger{}
	cfg := Config{Caches: []*Cache{c}, RequireSigs: true}
	for i := range 3 {
		p := parsePath(t, fmt.Sprintf("/nix/store/0000000000000000000000000000000%d-x", i))
		if err := sub.Realise(context.Background(), cfg, []storepath.StorePath{p}, log); !errors.Is(err, ErrNoSubstitute) {
			t.Errorf("%s: %v, want ErrNoSubstitute", p, err)
		}
	}
	if len(log.warnings) != 1 || !strings.Contains(log.warnings[0], "unable to download 'http://127.0.0.1:1/nix-cache-info'") {
		t.Errorf("warnings: %q", log.warnings)
	}
}

// TestPriority: of two caches that have a path, the one with the lower
// Priority is used, whatever the order of the substituters setting; a URL's
// ?priority= overrides nix-cache-info's.
func TestPriority(t *testing.T) {
	f := newFixture(t)
	a, b := copyDir(t, f.caches["none"]), copyDir(t, f.caches["zstd"])
	for _, d := range []struct{ dir, prio string }{{a, "60"}, {b, "20"}} {
		name := filepath.Join(d.dir, "nix-cache-info")
		os.Chmod(name, 0o644)
		writeFile(t, name, "StoreDir: /nix/store\nPriority: "+d.prio+"\n", 0o644)
	}
	for _, tc := range []struct {
		name string
		urls []string
		want string
	}{
		{"lower priority first", []string{"file://" + a, "file://" + b}, "file://" + b},
		{"order does not matter", []string{"file://" + b, "file://" + a}, "file://" + b},
		// Named as Nix names the store in messages: without parameters.
		{"URL priority wins", []string{"file://" + a + "?priority=10", "file://" + b}, "file://" + a},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cfg Config
			for _, u := range tc.urls {
				c, err := NewCache(u, Options{})
				if err != nil {
					t.Fatal(err)
				}
				cfg.Caches = append(cfg.Caches, c)
			}
			cfg.Keys, cfg.RequireSigs = []narinfo.PublicKey{f.pub}, true
			st, _ := newStore(t)
			log := &testLogger{}
			if err := New(st, 2).Realise(context.Background(), cfg, []storepath.StorePath{parsePath(t, f.mid)}, log); err != nil {
				t.Fatal(err)
			}
			if len(log.started) != 2 {
				t.Errorf("substitutions: %q, want mid and dep", log.started)
			}
			for _, s := range log.started {
				if !strings.HasSuffix(s, " "+tc.want) {
					t.Errorf("substituted %s, want from %s", s, tc.want)
				}
			}
		})
	}
}

// TestNegativeTTL: a path a cache lacked stays absent for
// narinfo-cache-negative-ttl, and is found once it expires.
func TestNegativeTTL(t *testing.T) {
	f := newFixture(t)
	top := parsePath(t, f.top)
	for _, tc := range []struct {
		name      string
		ttl       time.Duration
		wantFound bool
	}{{"remembered", time.Hour, false}, {"expired", 0, true}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := copyDir(t, f.caches["none"])
			niFile := filepath.Join(dir, top.HashPart()+".narinfo")
			saved := niFile + ".saved"
			if err := os.Rename(niFile, saved); err != nil {
				t.Fatal(err)
			}
			c, err := NewCache("file://"+dir, Options{NegativeTTL: tc.ttl, PositiveTTL: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.NarInfo(context.Background(), top); !errors.Is(err, ErrNotFound) {
				t.Fatalf("first lookup: %v", err)
			}
			os.Rename(saved, niFile)
			_, err = c.NarInfo(context.Background(), top)
			if found := err == nil; found != tc.wantFound {
				t.Errorf("after the narinfo appeared: found %v (%v), want %v", found, err, tc.wantFound)
			}
		})
	}
}

// TestUnboundedFile: a narinfo without FileSize whose xz file goes on after
// the NAR (stream padding, which xz allows) is refused once past what
// compressing the NAR could take.
func TestUnboundedFile(t *testing.T) {
	f := newFixture(t)
	top := parsePath(t, f.top)
	dir := copyDir(t, f.caches["xz"])
	ni := readNarInfo(t, dir, top)
	name := filepath.Join(dir, ni.URL)
	os.Chmod(name, 0o644)
	fh, err := os.OpenFile(name, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fh.Write(make([]byte, (ni.NarSize+ni.NarSize/8+fileSlack+4096)&^3))
	fh.Close()
	ni.FileSize, ni.FileHash = 0, nixhash.Hash{}
	text, _ := ni.MarshalText()
	niFile := filepath.Join(dir, top.HashPart()+".narinfo")
	os.Chmod(niFile, 0o644)
	writeFile(t, niFile, string(text), 0o644)
	st, _ := newStore(t)
	cfg := cacheConfig(t, f, "file://"+dir, true)
	err = New(st, 2).Realise(context.Background(), cfg, []storepath.StorePath{top}, nil)
	if err == nil || !strings.Contains(err.Error(), "the file is larger than") {
		t.Errorf("error %v, want the file refused as too large", err)
	}
	if ok, _ := st.IsValidPath(context.Background(), top); ok {
		t.Error("registered")
	}
}
