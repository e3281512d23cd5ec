package build

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"cairn/internal/storepath"
)

// BenchmarkBuild measures the overhead of one trivial build (echo > $out)
// in the sandbox, from goal to registered output: sandbox setup, builder,
// log, scan, registration.
func BenchmarkBuild(b *testing.B) {
	requireSandbox(b)
	ctx := context.Background()
	st := testStore(b)
	bl := newBuilder(b, st)
	drvs := make([]storepath.StorePath, b.N)
	for i := range drvs {
		drvs[i] = addDrv(b, st, fmt.Sprintf("bench-%d", i), "echo "+fmt.Sprint(i)+" > $out", nil, nil)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res, err := bl.Build(ctx, []Target{{Drv: drvs[i]}}, testOptions(), nil)
		if err != nil || res[0].Status != Built {
			b.Fatalf("%v %v", err, res[0].Err)
		}
	}
}

// BenchmarkBuildInputs is BenchmarkBuild with 50 inputs in the closure, each
// bound into the sandbox.
func BenchmarkBuildInputs(b *testing.B) {
	requireSandbox(b)
	ctx := context.Background()
	st := testStore(b)
	bl := newBuilder(b, st)
	if dir := os.Getenv("CAIRN_BENCH_BUILDS_DIR"); dir != "" {
		var err error
		if bl, err = New(st, filepath.Join(dir, fmt.Sprint(os.Getpid()))); err != nil {
			b.Fatal(err)
		}
	}
	inputs := map[storepath.StorePath][]string{}
	for i := range 50 {
		p := addDrv(b, st, fmt.Sprintf("in-%d", i), fmt.Sprintf("echo %d > $out", i), nil, nil)
		inputs[p] = []string{"out"}
	}
	if _, err := bl.Build(ctx, targetsOf(inputs), testOptions(), nil); err != nil {
		b.Fatal(err)
	}
	drvs := make([]storepath.StorePath, b.N)
	for i := range drvs {
		drvs[i] = addDrv(b, st, fmt.Sprintf("bench-%d", i), "echo "+fmt.Sprint(i)+" > $out", inputs, nil)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res, err := bl.Build(ctx, []Target{{Drv: drvs[i]}}, testOptions(), nil)
		if err != nil || res[0].Status != Built {
			b.Fatalf("%v %v", err, res[0].Err)
		}
	}
}

func targetsOf(m map[storepath.StorePath][]string) []Target {
	var ts []Target
	for p, outs := range m {
		ts = append(ts, Target{Drv: p, Outputs: outs})
	}
	return ts
}
