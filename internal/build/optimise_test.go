package build

import (
	"context"
	"os"
	"testing"

	"cairn/internal/store"
	"cairn/internal/store/local"
)

// TestAutoOptimiseOutputs: with auto-optimise-store, identical files that
// two builds write end up as one inode, linked from .links, and the outputs
// still verify; without it they stay apart.
func TestAutoOptimiseOutputs(t *testing.T) {
	requireSandbox(t)
	for _, auto := range []bool{true, false} {
		root := t.TempDir()
		removable(t, root)
		cfg, err := store.ParseURL("local?root="+root, func(string) string { return "" })
		if err != nil {
			t.Fatal(err)
		}
		st, err := local.Open(context.Background(), cfg, local.Options{NoFsync: true, ReservedSize: -1, AutoOptimise: auto})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		b := newBuilder(t, st)
		script := "mkdir $out; echo same words > $out/f; echo $name > $out/own"
		one := addDrv(t, st, "one", script, nil, nil)
		two := addDrv(t, st, "two", script, nil, nil)
		res, err := b.Build(context.Background(), []Target{{Drv: one}, {Drv: two}}, testOptions(), &testLog{})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res {
			if r.Err != nil {
				t.Fatal(r.Err)
			}
		}
		f1, err1 := os.Stat(st.RealPath(res[0].Outputs["out"]) + "/f")
		f2, err2 := os.Stat(st.RealPath(res[1].Outputs["out"]) + "/f")
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		if os.SameFile(f1, f2) != auto {
			t.Errorf("auto-optimise-store %v: the two outputs' f shared: %v", auto, os.SameFile(f1, f2))
		}
		vr, err := st.Verify(context.Background(), local.VerifyOptions{CheckContents: true})
		if err != nil || vr.Errors {
			t.Errorf("verify after auto-optimise-store %v: %v %+v", auto, err, vr)
		}
	}
}
