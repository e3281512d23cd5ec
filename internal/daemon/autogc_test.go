package daemon

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"cairn/internal/gc"
	"cairn/internal/store/storetest"
	"cairn/internal/testutil/nixtest"
)

// TestAutoGCAgainstNix: with min-free set, an add through the daemon that
// finds less space available collects the dead paths first, as nix-daemon
// 2.8 does; run the same way through both daemons (the free space faked
// through Nix's own test hook), the same paths remain and the client is told
// the same.
func TestAutoGCAgainstNix(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix-daemon", "nix")
	free := filepath.Join(t.TempDir(), "free")
	os.WriteFile(free, []byte("100\n"), 0o644)
	t.Setenv(gc.FreeSpaceFileEnv, free)
	settings := [][2]string{{"min-free", "1000"}, {"max-free", "100000000"}, {"min-free-check-interval", "0"}}
	var opts []string
	for _, kv := range settings {
		opts = append(opts, "--option", kv[0], kv[1])
	}
	td := newTestDaemon(t, settings...)
	ref := storetest.StartDaemonWith(t, []string{"nix-daemon"}, opts)
	refEnv := nixDaemonClientEnv(ref)
	src := t.TempDir()
	for _, n := range []string{"dead1", "dead2", "live"} {
		os.WriteFile(filepath.Join(src, n), []byte(n+"\n"), 0o644)
	}
	type result struct {
		valid     []string
		gcMessage bool
	}
	run := func(env []string) result {
		os.WriteFile(free, []byte("100\n"), 0o644)
		// The first add collects (in an empty store); the second does not, as
		// the space has not fallen since.
		for _, n := range []string{"dead1", "dead2"} {
			if r := runNix(env, "nix-store", "--add", filepath.Join(src, n)); r.code != 0 {
				t.Fatalf("add %s: %+v", n, r)
			}
		}
		os.WriteFile(free, []byte("50\n"), 0o644)
		r := runNix(env, "nix-store", "--add", filepath.Join(src, "live"))
		if r.code != 0 {
			t.Fatalf("add live: %+v", r)
		}
		all := runNix(env, "nix", "path-info", "--all")
		valid := strings.Fields(all.stdout)
		slices.Sort(valid)
		return result{valid: valid, gcMessage: strings.Contains(r.stderr, "running auto-GC to free 99999950 bytes")}
	}
	ours, theirs := run(td.nixEnv()), run(refEnv)
	if !slices.Equal(ours.valid, theirs.valid) {
		t.Errorf("valid after auto-GC: %q, nix-daemon %q", ours.valid, theirs.valid)
	}
	if len(ours.valid) != 1 || !strings.HasSuffix(ours.valid[0], "-live") {
		t.Errorf("valid after auto-GC: %q, want the live path only", ours.valid)
	}
	if ours.gcMessage != theirs.gcMessage {
		t.Errorf("the client told of the collection: %v, by nix-daemon %v", ours.gcMessage, theirs.gcMessage)
	}
	// The metrics count what the collection deleted: the two dead paths.
	var deleted float64
	for range 500 {
		if deleted = gathered(t, td)["cairn_daemon_gc_deleted_paths_total{}"]; deleted >= 2 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if deleted != 2 {
		t.Errorf("%v paths deleted in the metrics, want 2", deleted)
	}
}
