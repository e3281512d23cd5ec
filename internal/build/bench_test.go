package build

import (
	"context"
	"fmt"
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
