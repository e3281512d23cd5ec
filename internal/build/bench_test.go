package build

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"cairn/internal/derivation"
	"cairn/internal/nixhash"
	"cairn/internal/sandbox"
	"cairn/internal/storepath"
)

// BenchmarkBuild measures the overhead of one trivial build (echo > $out)
// in the sandbox, from goal to registered output: sandbox setup, builder,
// log, scan, registration.
func BenchmarkBuild(b *testing.B) {
	requireSandbox(b)
	benchBuild(b, testOptions(), "echo $i > $out")
}

// BenchmarkBuildLog is BenchmarkBuild with 1000 lines (about 30 kB) of log,
// written compressed (the default) or plain.
func BenchmarkBuildLog(b *testing.B) {
	requireSandbox(b)
	for _, compress := range []bool{true, false} {
		b.Run(map[bool]string{true: "bzip2", false: "plain"}[compress], func(b *testing.B) {
			opts := testOptions()
			opts.CompressLog = compress
			benchBuild(b, opts, "n=0; while [ $n -lt 1000 ]; do echo log line $n of build $i; n=$((n+1)); done; echo $i > $out")
		})
	}
}

// benchBuild builds b.N derivations running script, with $i set to the
// derivation's number.
func benchBuild(b *testing.B, opts Options, script string) {
	ctx := context.Background()
	st := testStore(b)
	bl := newBuilder(b, st)
	drvs := make([]storepath.StorePath, b.N)
	for i := range drvs {
		drvs[i] = addDrv(b, st, fmt.Sprintf("bench-%d", i), "i="+fmt.Sprint(i)+"; "+script, nil, nil)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res, err := bl.Build(ctx, []Target{{Drv: drvs[i]}}, opts, nil)
		if err != nil || res[0].Status != Built {
			b.Fatalf("%v %v", err, res[0].Err)
		}
	}
}

// BenchmarkLogWriter compresses build log text as compress-build-log does.
func BenchmarkLogWriter(b *testing.B) {
	var text []byte
	for i := 0; len(text) < 1<<20; i++ {
		text = fmt.Appendf(text, "gcc -O2 -c src/file%d.c -o build/file%d.o\n", i, i)
	}
	b.SetBytes(int64(len(text)))
	b.ReportAllocs()
	for b.Loop() {
		w := NewLogWriter(io.Discard)
		w.Write(text)
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBuildInputs is BenchmarkBuild with 50 inputs in the closure:
// "bind" with the daemon's ids (each input bound into the sandbox),
// "link" as root with a build user (each input, a file, hard-linked into
// the scratch store dir; see linkInputs).
func BenchmarkBuildInputs(b *testing.B) {
	requireSandbox(b)
	for _, c := range []struct {
		name  string
		users bool
	}{{"bind", false}, {"link", true}} {
		b.Run(c.name, func(b *testing.B) {
			ctx := context.Background()
			st := testStore(b)
			cfg := Config{}
			if dir := os.Getenv("CAIRN_BENCH_BUILDS_DIR"); dir != "" {
				cfg.BuildsDir = filepath.Join(dir, fmt.Sprint(os.Getpid()), c.name)
			}
			if c.users {
				requireRoot(b)
				pool(b)
				cfg.BuildUsersGroup = testPool
			}
			bl, err := NewWithConfig(st, cfg)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(bl.Close)
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
		})
	}
}

func targetsOf(m map[storepath.StorePath][]string) []Target {
	var ts []Target
	for p, outs := range m {
		ts = append(ts, Target{Drv: p, Outputs: outs})
	}
	return ts
}

// BenchmarkBuildFixed measures what a fixed-output build costs on top of
// BenchmarkBuild's trivial one: "plain" is that build, the others a
// fixed-output derivation writing the same few bytes (no download) with
// fixed-output-network none (the output copied out of the builder's reach
// before its hash is checked, no network) or each installed stack. Back to
// back the builder's pool of spare sandboxes runs dry when a spare takes
// longer to start than a build (pasta); "spaced" leaves 150 ms between
// builds (a download's worth), untimed. build-ms is the median build.
func BenchmarkBuildFixed(b *testing.B) {
	requireSandbox(b)
	ctx := context.Background()
	for _, kind := range []string{"plain", "none", sandbox.NetPasta, sandbox.NetSlirp4netns} {
		if kind == sandbox.NetPasta || kind == sandbox.NetSlirp4netns {
			if _, err := sandbox.LookNet(kind, true); err != nil {
				continue
			}
		}
		for _, spaced := range []bool{false, true} {
			name := kind
			if spaced {
				name += "/spaced"
			}
			b.Run(name, func(b *testing.B) { benchBuildFixed(b, ctx, kind, spaced) })
		}
	}
}

func benchBuildFixed(b *testing.B, ctx context.Context, kind string, spaced bool) {
	st := testStore(b)
	bl := newBuilder(b, st)
	opts := testOptions()
	opts.Network = kind
	drvs := make([]storepath.StorePath, b.N)
	for i := range drvs {
		name := fmt.Sprintf("bench-%d", i)
		if kind == "plain" {
			drvs[i] = addDrv(b, st, name, "printf hello > $out", nil, nil)
			continue
		}
		d := &derivation.Derivation{
			Name:     name,
			Outputs:  map[string]derivation.Output{"out": derivation.FixedOutput(storepath.StorePath{}, nixhash.ContentAddress{Method: nixhash.Flat, Hash: nixhash.Sum(nixhash.SHA256, []byte("hello"))})},
			Platform: "x86_64-linux", Builder: "/bin/sh", Args: []string{"-c", "printf hello > $out"},
			Env: map[string]string{"name": name, "out": ""},
		}
		p, err := AddDerivation(ctx, st, d)
		if err != nil {
			b.Fatal(err)
		}
		drvs[i] = p
	}
	var took []time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		res, err := bl.Build(ctx, []Target{{Drv: drvs[i]}}, opts, nil)
		if err != nil || res[0].Status != Built {
			b.Fatalf("%v %v", err, res[0].Err)
		}
		took = append(took, time.Since(t0))
		if spaced {
			b.StopTimer()
			time.Sleep(150 * time.Millisecond)
			b.StartTimer()
		}
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2])/float64(time.Millisecond), "build-ms")
}

// BenchmarkBuildDAG builds dag.nix's shape (layers of 10 derivations, each
// on two of the layer below; 5 layers and a top: 51 builds) with max-jobs 1,
// as the Nix client asks for; build-ms is the time per build. With one job
// the next build's sandbox is set up while the last one's builder runs.
func BenchmarkBuildDAG(b *testing.B) {
	requireSandbox(b)
	ctx := context.Background()
	st := testStore(b)
	bl := newBuilder(b, st)
	opts := testOptions()
	opts.MaxJobs = 1
	const layers, width = 5, 10
	var per []float64
	b.ReportAllocs()
	for n := 0; b.Loop(); n++ {
		b.StopTimer()
		var prev []storepath.StorePath
		for l := range layers {
			var cur []storepath.StorePath
			for i := range width {
				in := map[storepath.StorePath][]string{}
				if len(prev) > 0 {
					in[prev[i]] = []string{"out"}
					in[prev[(i+1)%width]] = []string{"out"}
				}
				cur = append(cur, addDrv(b, st, fmt.Sprintf("n-%d-%d-%d", n, l, i), fmt.Sprintf("echo %d $i > $out", n), in, nil))
			}
			prev = cur
		}
		top := map[storepath.StorePath][]string{}
		for _, p := range prev {
			top[p] = []string{"out"}
		}
		drv := addDrv(b, st, fmt.Sprintf("top-%d", n), "echo > $out", top, nil)
		b.StartTimer()
		t0 := time.Now()
		res, err := bl.Build(ctx, []Target{{Drv: drv}}, opts, nil)
		if err != nil || res[0].Status != Built {
			b.Fatalf("%v %v", err, res[0].Err)
		}
		per = append(per, float64(time.Since(t0).Microseconds())/1000/(layers*width+1))
	}
	slices.Sort(per)
	b.ReportMetric(per[len(per)/2], "build-ms")
}
