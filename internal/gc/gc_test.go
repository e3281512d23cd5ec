package gc

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"cairn/internal/fsnar"
	"cairn/internal/gcroots"
	"cairn/internal/nixhash"
	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
	"cairn/internal/testutil/nixtest"
)

// fixture is a store's content, named.
type fixture struct {
	paths map[string]storepath.StorePath
}

func openStore(t testing.TB, root string) (*local.Store, *gcroots.Roots) {
	t.Helper()
	cfg, err := store.ParseURL("local?root="+root, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := local.Open(context.Background(), cfg, local.Options{NoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st, gcroots.New(cfg.StateDir, cfg.StoreDir, cfg.RealStoreDir)
}

func addText(t testing.TB, st *local.Store, name, text string, refs ...storepath.StorePath) storepath.StorePath {
	t.Helper()
	info, err := st.AddText(context.Background(), name, text, refs)
	if err != nil {
		t.Fatal(err)
	}
	return info.Path
}

// registerOutput puts a file at out and registers it with deriver drv.
func registerOutput(t testing.TB, st *local.Store, out, drv storepath.StorePath, contents string) {
	t.Helper()
	real := st.RealPath(out)
	if err := os.WriteFile(real, []byte(contents), 0o444); err != nil {
		t.Fatal(err)
	}
	h := nixhash.NewHasher(nixhash.SHA256)
	cw := &counter{}
	if err := fsnar.Dump(context.Background(), multi{h, cw}, real); err != nil {
		t.Fatal(err)
	}
	info := &store.PathInfo{Path: out, NarHash: h.Sum(), NarSize: uint64(cw.n), Deriver: drv}
	if err := st.RegisterValidPaths(context.Background(), []*store.PathInfo{info}); err != nil {
		t.Fatal(err)
	}
}

type counter struct{ n int64 }

func (c *counter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

type multi []interface{ Write([]byte) (int, error) }

func (m multi) Write(p []byte) (int, error) {
	for _, w := range m {
		w.Write(p)
	}
	return len(p), nil
}

// makeFixture fills the store at root (through Nix for the derivation, Cairn
// for the rest) and its roots; extern is a directory outside the store for
// indirect roots. It returns the paths by name.
func makeFixture(t *testing.T, root, extern string) fixture {
	t.Helper()
	src := filepath.Join(extern, "src.txt")
	os.WriteFile(src, []byte("source\n"), 0o644)
	expr := fmt.Sprintf(`derivation { name = "thing"; system = "x86_64-linux"; builder = "/bin/sh"; src = %s; }`, src)
	drvStr := nixtest.Run(t, nil, "nix-instantiate", "--store", "local?root="+root, "-E", expr)
	outStr := nixtest.Run(t, nil, "nix-store", "--store", "local?root="+root, "-q", "--outputs", drvStr)

	st, roots := openStore(t, root)
	dir := st.StoreDir()
	drv, _ := dir.Parse(drvStr)
	out, _ := dir.Parse(outStr)
	registerOutput(t, st, out, drv, "built\n")
	f := fixture{paths: map[string]storepath.StorePath{"drv": drv, "out": out}}
	srcs, _ := st.QueryReferencesOf(context.Background(), []storepath.StorePath{drv})
	f.paths["src"] = srcs[drv][0]
	lib := addText(t, st, "lib", "lib\n")
	app := addText(t, st, "app", "app uses "+lib.String()+"\n", lib)
	f.paths["lib"], f.paths["app"] = lib, app
	f.paths["dead-lib"] = addText(t, st, "dead-lib", strings.Repeat("dead lib\n", 40000))
	f.paths["dead-app"] = addText(t, st, "dead-app", "x "+f.paths["dead-lib"].String(), f.paths["dead-lib"])
	f.paths["dead-top"] = addText(t, st, "dead-top", "y "+f.paths["dead-app"].String(), f.paths["dead-app"])
	f.paths["profiled"] = addText(t, st, "profiled", "in a profile\n")
	f.paths["indirect"] = addText(t, st, "indirect", "indirect root\n")
	f.paths["temp"] = addText(t, st, "temp", "temp root\n")
	f.paths["temp-dep"] = addText(t, st, "temp-dep", "dep of temp\n")
	f.paths["temp2"] = addText(t, st, "temp2", "z "+f.paths["temp-dep"].String(), f.paths["temp-dep"])
	f.paths["regular-root"] = addText(t, st, "regular-root", "named by a file\n")
	f.paths["drv-root"] = drv // keep-derivations keeps it through out, too

	state := roots.StateDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// Direct roots: a symlink (at depth), a regular file named like the path.
	must(os.MkdirAll(filepath.Join(state, "gcroots", "deep", "er"), 0o755))
	must(os.Symlink(app.String(), filepath.Join(state, "gcroots", "deep", "er", "app")))
	must(os.WriteFile(filepath.Join(state, "gcroots", f.paths["regular-root"].Base()), nil, 0o644))
	must(os.Symlink(out.String(), filepath.Join(state, "gcroots", "result")))
	// A root to a path that is not valid, a loop, and a dangling link.
	must(os.Symlink(string(dir)+"/00000000000000000000000000000000-gone", filepath.Join(state, "gcroots", "invalid")))
	must(os.Symlink("loop2", filepath.Join(state, "gcroots", "loop1")))
	must(os.Symlink("loop1", filepath.Join(state, "gcroots", "loop2")))
	// A profile.
	must(os.MkdirAll(filepath.Join(state, "profiles"), 0o755))
	must(os.Symlink(f.paths["profiled"].String(), filepath.Join(state, "profiles", "default-1-link")))
	// An indirect root through a link outside.
	link := filepath.Join(extern, "result-indirect")
	must(os.Symlink(f.paths["indirect"].String(), link))
	must(roots.AddIndirect(link))
	// A stale indirect root.
	must(roots.AddIndirect(filepath.Join(extern, "gone")))
	// Junk in the store dir: a leftover lock, a stray file, an invalid
	// leftover of a path.
	real := st.RealStoreDir()
	must(os.WriteFile(filepath.Join(real, f.paths["dead-lib"].Base()+".lock"), nil, 0o600))
	must(os.WriteFile(filepath.Join(real, "stray"), []byte("stray file contents"), 0o644))
	must(os.MkdirAll(filepath.Join(real, "11111111111111111111111111111111-leftover", "d"), 0o755))
	must(os.WriteFile(filepath.Join(real, "11111111111111111111111111111111-leftover", "d", "f"), []byte("left"), 0o444))
	return f
}

// holdTempRoots writes a temporary roots file under state holding paths and
// keeps it locked until the test ends, as a live process does.
func holdTempRoots(t *testing.T, state string, n int, paths ...storepath.StorePath) {
	t.Helper()
	dir := filepath.Join(state, "temproots")
	os.MkdirAll(dir, 0o755)
	f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(n)), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		f.WriteString(p.String() + "\x00")
	}
	t.Cleanup(func() { f.Close() })
}

// fixtureStores makes the fixture's store (the first root) and n-1 copies of
// it, so that Nix and Cairn can each work on one of identical stores.
func fixtureStores(t *testing.T, n int) (fixture, []string) {
	t.Helper()
	base := t.TempDir()
	extern := filepath.Join(base, "extern")
	os.MkdirAll(extern, 0o755)
	roots := []string{filepath.Join(base, "a")}
	f := makeFixture(t, roots[0], extern)
	for i := 1; i < n; i++ {
		roots = append(roots, filepath.Join(base, string(rune('a'+i))))
		copyTree(t, roots[0], roots[i])
	}
	return f, roots
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", from, to).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
}

// TestCollectMatchesNix collects two identical stores, one with nix-store
// --gc and one with Collect, and compares what each lists and deletes.
func TestCollectMatchesNix(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix-instantiate")
	for _, keep := range []struct {
		name      string
		outs, drv bool
	}{{"default", false, true}, {"keep-outputs", true, true}, {"keep-nothing", false, false}} {
		t.Run(keep.name, func(t *testing.T) {
			// Nix's --print-live and --print-dead delete what is not a store
			// path (a Nix 2.8 bug Cairn does not copy): b lists, c deletes.
			f, stores := fixtureStores(t, 3)
			rootA, rootB, rootC := stores[0], stores[1], stores[2]
			st, roots := openStore(t, rootA)
			holdTempRoots(t, filepath.Join(rootA, "nix/var/nix"), 4242, f.paths["temp"], f.paths["temp2"])
			holdTempRoots(t, filepath.Join(rootB, "nix/var/nix"), 4242, f.paths["temp"], f.paths["temp2"])
			holdTempRoots(t, filepath.Join(rootC, "nix/var/nix"), 4242, f.paths["temp"], f.paths["temp2"])
			// Garbage in a live temp roots file: skipped.
			holdTempRoots(t, filepath.Join(rootA, "nix/var/nix"), 4243)
			os.WriteFile(filepath.Join(rootA, "nix/var/nix/temproots/4243"), []byte("garbage\x00/nix/store/nonsense\x00"), 0o600)

			nixGC := func(root string, args ...string) []string {
				conf := fmt.Sprintf("keep-outputs = %v\nkeep-derivations = %v\n", keep.outs, keep.drv)
				out, err := nixtest.OutputEnv([]string{"NIX_CONFIG=" + conf + "experimental-features = nix-command\nsandbox = false\nsubstituters =\n"},
					"nix-store", append([]string{"--store", "local?root=" + root, "--gc"}, args...)...)
				if err != nil {
					t.Fatalf("nix-store --gc %v: %v", args, err)
				}
				return lines(string(out))
			}
			cairnGC := func(action protocol.GCAction) *Result {
				res, err := Collect(context.Background(), st, roots, Options{Action: action, MaxFreed: NoLimit,
					KeepOutputs: keep.outs, KeepDerivations: keep.drv})
				if err != nil {
					t.Fatalf("Collect %d: %v", action, err)
				}
				return res
			}
			if got, want := storePaths(cairnGC(protocol.GCReturnLive).Paths), storePaths(nixGC(rootB, "--print-live")); !slices.Equal(got, want) {
				t.Errorf("live:\n got %q\nwant %q", got, want)
			}
			if got, want := storePaths(cairnGC(protocol.GCReturnDead).Paths), storePaths(nixGC(rootB, "--print-dead")); !slices.Equal(got, want) {
				t.Errorf("dead:\n got %q\nwant %q", got, want)
			}
			res := cairnGC(protocol.GCDeleteDead)
			// Nix would also delete Cairn's temporaries (no Cairn process
			// holds their root now), which Cairn keeps.
			os.RemoveAll(filepath.Join(rootC, "nix/store", local.TempDirName))
			want := nixGC(rootC)
			summary := fmt.Sprintf("%d store paths deleted, %.2f MiB freed", len(res.Paths), float64(res.BytesFreed)/(1024*1024))
			if len(want) != 1 || want[0] != summary {
				t.Errorf("delete: got %q, nix says %q", summary, want)
			}
			listA, _ := os.ReadDir(filepath.Join(rootA, "nix/store"))
			listB, _ := os.ReadDir(filepath.Join(rootC, "nix/store"))
			if a, b := names(listA), names(listB); !slices.Equal(a, b) {
				t.Errorf("store dirs differ after collecting:\ncairn %q\n  nix %q", a, b)
			}
			va := nixtest.Run(t, nil, "nix-store", "--store", "local?root="+rootA, "--verify", "--check-contents")
			_ = va
			qa := nixtest.Run(t, nil, "nix-store", "--store", "local?root="+rootA, "--dump-db")
			qb := nixtest.Run(t, nil, "nix-store", "--store", "local?root="+rootC, "--dump-db")
			if validOf(qa) != validOf(qb) {
				t.Errorf("valid paths differ:\ncairn %s\n  nix %s", validOf(qa), validOf(qb))
			}
		})
	}
}

// storePaths drops the names that are not store paths, and Cairn's
// temporaries (which Nix lists when no Cairn process holds their root).
func storePaths(ps []string) []string {
	var out []string
	for _, p := range ps {
		if _, err := storepath.StoreDir("/nix/store").Parse(p); err == nil && !strings.HasSuffix(p, "/"+local.TempDirName) {
			out = append(out, p)
		}
	}
	return out
}

func names(es []os.DirEntry) []string {
	var out []string
	for _, e := range es {
		if e.Name() != local.TempDirName && e.Name() != ".links" {
			out = append(out, e.Name())
		}
	}
	return out
}

func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}

// validOf picks the path lines (the first of each record) of a dump-db.
func validOf(dump string) string {
	var out []string
	for _, l := range strings.Split(dump, "\n") {
		if strings.HasPrefix(l, "/nix/store/") {
			out = append(out, l)
		}
	}
	slices.Sort(out)
	return strings.Join(slices.Compact(out), "\n")
}
