package build

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestPostBuildHook: post-build-hook runs after the outputs are registered,
// with DRV_PATH and OUT_PATHS, its output reaching the build's log; a hook
// that fails fails the build with Nix's message and leaves the outputs valid.
func TestPostBuildHook(t *testing.T) {
	requireSandbox(t)
	ctx := context.Background()
	st := testStore(t)
	b := newBuilder(t, st)
	dir := t.TempDir()
	seen := filepath.Join(dir, "seen")
	hook := filepath.Join(dir, "hook")
	os.WriteFile(hook, []byte("#!/bin/sh\necho \"$DRV_PATH|$OUT_PATHS\" >> "+seen+"\necho hello from the hook\necho to stderr >&2\nexit ${HOOK_EXIT:-0}\n"), 0o755)
	multi := addDrv(t, st, "multi", "echo a > $out; echo b > $dev", nil, nil, "out", "dev")
	opts := testOptions()
	opts.PostBuildHook = hook
	log := &testLog{}
	res, err := b.Build(ctx, []Target{{Drv: multi}}, opts, log)
	if err != nil || res[0].Err != nil {
		t.Fatal(err, res[0].Err)
	}
	outs := []string{outPath(t, st, multi, "out").String(), outPath(t, st, multi, "dev").String()}
	slices.Sort(outs)
	got, _ := os.ReadFile(seen)
	if want := multi.String() + "|" + strings.Join(outs, " ") + "\n"; string(got) != want {
		t.Errorf("the hook saw %q, want %q", got, want)
	}
	for _, l := range []string{"post-build-hook: hello from the hook", "post-build-hook: to stderr"} {
		if !slices.Contains(log.lines, l) {
			t.Errorf("log lines %q lack %q", log.lines, l)
		}
	}

	t.Setenv("HOOK_EXIT", "3")
	failing := addDrv(t, st, "failing-hook", "echo c > $out", nil, nil)
	res, err = b.Build(ctx, []Target{{Drv: failing}}, opts, &testLog{})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Err == nil || res[0].Err.Error() != "program '"+hook+"' failed with exit code 3" {
		t.Errorf("a failing hook: %v", res[0].Err)
	}
	if ok, _ := st.IsValidPath(ctx, outPath(t, st, failing, "out")); !ok {
		t.Errorf("the output of a build whose hook failed is not valid")
	}
}
