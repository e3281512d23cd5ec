package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"cairn/internal/store/storetest"
	"cairn/internal/testutil/nixtest"
)

// TestNixAddAutoOptimise: Nix 2.8's nix-store --add and --import through
// cairn daemon and through nix-daemon, both with auto-optimise-store. The
// files end up with the same link counts (identical files of different paths
// are one inode, also linked from .links), and nix-store --optimise prints the
// same (nothing left to share) through both.
func TestNixAddAutoOptimise(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix-daemon")
	src := t.TempDir()
	for _, d := range []string{"a", "b", "c"} {
		os.MkdirAll(filepath.Join(src, d), 0o755)
		os.WriteFile(filepath.Join(src, d, "same"), []byte("the same words\n"), 0o644)
		os.WriteFile(filepath.Join(src, d, "own"), []byte(d+"\n"), 0o644)
	}
	// c reaches both daemons through an import, exported from Nix's own store.
	ns := nixtest.NewStore(t)
	c := ns.Run(t, nil, "nix-store", "--add", filepath.Join(src, "c"))
	exp, err := nixtest.Output(nil, "nix-store", "--store", ns.URL(), "--export", c)
	if err != nil {
		t.Fatal(err)
	}
	export := filepath.Join(t.TempDir(), "export")
	os.WriteFile(export, exp, 0o644)

	td := newTestDaemon(t, [2]string{"auto-optimise-store", "true"})
	ref := storetest.StartDaemonWith(t, []string{"nix-daemon"}, []string{"--option", "auto-optimise-store", "true"})
	refEnv := nixDaemonClientEnv(ref)
	type result struct {
		paths    []string
		links    map[string]uint64 // path/file → link count
		optimise nixRun
	}
	run := func(env []string, realStore string) result {
		var r result
		add := runNix(env, "nix-store", "--add", filepath.Join(src, "a"), filepath.Join(src, "b"))
		imp := runNix(env, "sh", "-c", "nix-store --import < "+export)
		if add.code != 0 || imp.code != 0 {
			t.Fatalf("add: %+v\nimport: %+v", add, imp)
		}
		r.paths = append(strings.Fields(add.stdout), imp.stdout)
		r.links = map[string]uint64{}
		for _, p := range r.paths {
			for _, f := range []string{"same", "own"} {
				fi, err := os.Stat(filepath.Join(realStore, filepath.Base(p), f))
				if err != nil {
					t.Fatal(err)
				}
				r.links[filepath.Base(p)+"/"+f] = uint64(fi.Sys().(*syscall.Stat_t).Nlink)
			}
		}
		r.optimise = runNix(env, "nix-store", "--optimise")
		if v := runNix(env, "nix-store", "--verify", "--check-contents"); v.code != 0 {
			t.Errorf("verify: %+v", v)
		}
		return r
	}
	ours, theirs := run(td.nixEnv(), td.cfg.RealStoreDir), run(refEnv, filepath.Join(ref.Root, "nix/store"))
	if strings.Join(ours.paths, " ") != strings.Join(theirs.paths, " ") {
		t.Fatalf("paths %q, nix-daemon's %q", ours.paths, theirs.paths)
	}
	for k, n := range theirs.links {
		if ours.links[k] != n {
			t.Errorf("%s: %d links, nix-daemon's %d", k, ours.links[k], n)
		}
	}
	if ours.links[filepath.Base(ours.paths[0])+"/same"] != 4 {
		t.Errorf("link counts %v: the three copies of same and .links should share an inode", ours.links)
	}
	if ours.optimise.code != theirs.optimise.code || ours.optimise.stderr != theirs.optimise.stderr {
		t.Errorf("nix-store --optimise: %d %q, through nix-daemon %d %q", ours.optimise.code, ours.optimise.stderr,
			theirs.optimise.code, theirs.optimise.stderr)
	}
}
