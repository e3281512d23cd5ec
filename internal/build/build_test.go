package build

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"cairn/internal/derivation"
	"cairn/internal/nixhash"
	"cairn/internal/sandbox"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
)

// The test binary is also the sandbox's init.
func TestMain(m *testing.M) {
	if sandbox.IsInit() {
		err := sandbox.Init()
		fmt.Fprintln(os.Stderr, err)
		os.Exit(125)
	}
	if os.Getenv(denyNamespacesEnv) != "" {
		if err := denyNamespaces(); err != nil {
			fmt.Fprintln(os.Stderr, "deny namespaces:", err)
			os.Exit(2)
		}
	}
	os.Exit(m.Run())
}

// testStore opens a chroot store in a temp dir.
func testStore(t testing.TB) *local.Store {
	t.Helper()
	root := t.TempDir()
	removable(t, root)
	cfg, err := store.ParseURL("local?root="+root, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	st, err := local.Open(context.Background(), cfg, local.Options{NoFsync: true, ReservedSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func testOptions() Options {
	return Options{MaxJobs: 4, Cores: 1, Sandbox: true, SandboxPaths: []string{"/bin/sh=/bin/busybox"}, CompressLog: true}
}

// addDrv adds a derivation running script with /bin/sh.
func addDrv(t testing.TB, st *local.Store, name, script string, inputs map[storepath.StorePath][]string, env map[string]string, outputs ...string) storepath.StorePath {
	t.Helper()
	if len(outputs) == 0 {
		outputs = []string{"out"}
	}
	d := &derivation.Derivation{
		Name:      name,
		Outputs:   map[string]derivation.Output{},
		InputDrvs: map[storepath.StorePath][]string{},
		Platform:  "x86_64-linux",
		Builder:   "/bin/sh",
		Args:      []string{"-c", script},
		Env:       map[string]string{"name": name, "builder": "/bin/sh", "system": "x86_64-linux"},
	}
	for k, v := range env {
		d.Env[k] = v
	}
	for _, o := range outputs {
		d.Outputs[o] = derivation.DeferredOutput()
	}
	if len(outputs) > 1 {
		d.Env["outputs"] = strings.Join(outputs, " ")
	}
	for p, outs := range inputs {
		d.InputDrvs[p] = outs
	}
	p, err := AddDerivation(context.Background(), st, d)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func outPath(t testing.TB, st *local.Store, drv storepath.StorePath, name string) storepath.StorePath {
	t.Helper()
	d, err := ReadDerivation(st, drv)
	if err != nil {
		t.Fatal(err)
	}
	return d.Outputs[name].Path
}

// skipIfNoSandbox builds a trivial derivation and skips when the kernel
// refuses the namespaces.
func newBuilder(t testing.TB, st *local.Store) *Builder {
	t.Helper()
	b, err := New(st, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

func requireSandbox(t testing.TB) {
	t.Helper()
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	st := testStore(t)
	b := newBuilder(t, st)
	p := addDrv(t, st, "probe", "echo > $out", nil, nil)
	res, err := b.Build(context.Background(), []Target{{Drv: p}}, testOptions(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Err != nil && strings.Contains(res[0].Err.Error(), "setting up the build environment") {
		t.Skipf("the kernel refuses the sandbox: %v", res[0].Err)
	}
}

type testLog struct {
	mu      sync.Mutex
	lines   []string
	started []storepath.StorePath
	errors  []string
}

func (l *testLog) BuildStarted(drv storepath.StorePath) BuildLog {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.started = append(l.started, drv)
	return l
}
func (l *testLog) Progress(done, expected, running, failed int) {}
func (l *testLog) Error(msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.errors = append(l.errors, msg)
}
func (l *testLog) Line(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, s)
}
func (l *testLog) Message(s string) { l.Line("@nix " + s) }
func (l *testLog) Done()            {}

func readOut(t testing.TB, st *local.Store, p storepath.StorePath) string {
	t.Helper()
	data, err := os.ReadFile(st.RealPath(p))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestBuildGraph(t *testing.T) {
	requireSandbox(t)
	ctx := context.Background()
	st := testStore(t)
	b := newBuilder(t, st)

	a := addDrv(t, st, "a", "echo hello from a; echo a-content > $out", nil, nil)
	multi := addDrv(t, st, "multi", "mkdir $out; echo $dev > $out/dev-path; echo $dev/self > $dev", nil, nil, "out", "dev")
	c := addDrv(t, st, "c", "read x < $a; echo \"c got $x\" > $out; cat $m/dev-path >> $out",
		map[storepath.StorePath][]string{a: {"out"}}, map[string]string{"a": outPath(t, st, a, "out").String(), "m": outPath(t, st, multi, "out").String()})
	// c refers to multi's out path without depending on it: declare it.
	_ = c
	c2 := addDrv(t, st, "c2", "read x < $a; echo \"c got $x\" > $out; cat $m/dev-path >> $out",
		map[storepath.StorePath][]string{a: {"out"}, multi: {"out"}}, map[string]string{"a": outPath(t, st, a, "out").String(), "m": outPath(t, st, multi, "out").String()})

	log := &testLog{}
	res, err := b.Build(ctx, []Target{{Drv: c2}}, testOptions(), log)
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Err != nil || res[0].Status != Built {
		t.Fatalf("status %d: %v", res[0].Status, res[0].Err)
	}
	out := res[0].Outputs["out"]
	mdev := outPath(t, st, multi, "dev")
	if got, want := readOut(t, st, out), "c got a-content\n"+mdev.String()+"\n"; got != want {
		t.Errorf("c2 output = %q, want %q", got, want)
	}
	if !slices.Contains(log.lines, "hello from a") {
		t.Errorf("log lines %q lack a's line", log.lines)
	}
	if len(log.started) != 3 {
		t.Errorf("started %v, want 3 builds", log.started)
	}
	// References: c2 → a, multi (dev-path names multi's dev, not out).
	info, err := st.QueryPathInfo(ctx, out)
	if err != nil {
		t.Fatal(err)
	}
	if want := []storepath.StorePath{mdev}; !slices.Equal(info.References, want) {
		// c2's output contains the dev path only.
		t.Errorf("c2 references %v, want %v", info.References, want)
	}
	if info.Deriver != c2 {
		t.Errorf("deriver %v, want %v", info.Deriver, c2)
	}
	// multi: out refers to dev, dev to itself.
	mi, err := st.QueryPathInfo(ctx, outPath(t, st, multi, "out"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(mi.References, []storepath.StorePath{mdev}) {
		t.Errorf("multi out references %v", mi.References)
	}
	if di, err := st.QueryPathInfo(ctx, mdev); err != nil || !slices.Equal(di.References, []storepath.StorePath{mdev}) {
		t.Errorf("multi dev references %v, %v", di, err)
	}
	// Outputs referring to each other: rejected as by Nix 2.8.
	cycle := addDrv(t, st, "cycle", "echo $dev > $out; echo $out > $dev", nil, nil, "out", "dev")
	res, _ = b.Build(ctx, []Target{{Drv: cycle}}, testOptions(), nil)
	if res[0].Status != OutputRejected || res[0].Err == nil ||
		!strings.Contains(res[0].Err.Error(), "in the references of output '\x1b[35;1mdev\x1b[0m' from output '\x1b[35;1mout\x1b[0m'") {
		t.Errorf("cycle: %d %v", res[0].Status, res[0].Err)
	}
	// The log is in LOGDIR/drvs/XX/REST.bz2.
	base := a.Base()
	data, err := readBz2(filepath.Join(st.LogDir(), "drvs", base[:2], base[2:]+".bz2"))
	if err != nil || string(data) != "hello from a\n" {
		t.Errorf("log file: %q, %v", data, err)
	}
	// Again: already valid.
	res, err = b.Build(ctx, []Target{{Drv: c2}}, testOptions(), nil)
	if err != nil || res[0].Status != AlreadyValid {
		t.Errorf("second build: %v %v", res[0].Status, err)
	}
}

func TestBuildFailures(t *testing.T) {
	requireSandbox(t)
	ctx := context.Background()
	st := testStore(t)
	b := newBuilder(t, st)

	bad := addDrv(t, st, "bad", "for i in $(seq 1 15); do echo line $i; done; exit 3", nil, nil)
	dep := addDrv(t, st, "dep", "echo > $out", map[storepath.StorePath][]string{bad: {"out"}}, nil)
	log := &testLog{}
	res, err := b.Build(ctx, []Target{{Drv: dep}}, testOptions(), log)
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Status != DependencyFailed {
		t.Fatalf("status %d, want DependencyFailed: %v", res[0].Status, res[0].Err)
	}
	if !strings.Contains(res[0].Err.Error(), "dependencies of derivation") {
		t.Errorf("error %q", res[0].Err)
	}
	if len(log.errors) != 1 || !strings.Contains(log.errors[0], "failed with exit code 3;\nlast 10 log lines:\n> line 6\n") ||
		!strings.Contains(log.errors[0], "> line 15\nFor full logs, run '\x1b[1mnix log "+bad.String()) {
		t.Errorf("dependency error %q", log.errors)
	}

	res, _ = b.Build(ctx, []Target{{Drv: bad}}, testOptions(), nil)
	if res[0].Status != PermanentFailure {
		t.Errorf("status %d, want PermanentFailure", res[0].Status)
	}

	noOut := addDrv(t, st, "noout", "true", nil, nil)
	res, _ = b.Build(ctx, []Target{{Drv: noOut}}, testOptions(), nil)
	if res[0].Status != OutputRejected || !strings.Contains(res[0].Err.Error(), "failed to produce output path for output") {
		t.Errorf("no output: %d %v", res[0].Status, res[0].Err)
	}

	opts := testOptions()
	opts.MaxJobs = 0
	res, _ = b.Build(ctx, []Target{{Drv: noOut}}, opts, nil)
	if res[0].Status != MiscFailure || !strings.Contains(res[0].Err.Error(), "unable to start any build") {
		t.Errorf("max-jobs 0: %d %v", res[0].Status, res[0].Err)
	}
}

func TestFixedOutput(t *testing.T) {
	requireSandbox(t)
	ctx := context.Background()
	st := testStore(t)
	b := newBuilder(t, st)
	mk := func(name, content string, method nixhash.Method, want string) storepath.StorePath {
		h := nixhash.Sum(nixhash.SHA256, []byte(want))
		d := &derivation.Derivation{
			Name:     name,
			Outputs:  map[string]derivation.Output{"out": derivation.FixedOutput(storepath.StorePath{}, nixhash.ContentAddress{Method: method, Hash: h})},
			Platform: "x86_64-linux", Builder: "/bin/sh",
			Args: []string{"-c", "test \"$NIX_OUTPUT_CHECKED\" = 1 && printf " + content + " > $out"},
			Env:  map[string]string{"name": name, "out": ""},
		}
		p, err := AddDerivation(ctx, st, d)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := mk("good", "hello", nixhash.Flat, "hello")
	res, _ := b.Build(ctx, []Target{{Drv: good}}, testOptions(), nil)
	if res[0].Status != Built {
		t.Fatalf("good: %d %v", res[0].Status, res[0].Err)
	}
	info, err := st.QueryPathInfo(ctx, res[0].Outputs["out"])
	if err != nil || info.CA.IsZero() {
		t.Errorf("fixed output info %+v %v", info, err)
	}
	bad := mk("bad", "hellO", nixhash.Flat, "hello")
	res, _ = b.Build(ctx, []Target{{Drv: bad}}, testOptions(), nil)
	if res[0].Status != OutputRejected || !strings.Contains(res[0].Err.Error(), "hash mismatch in fixed-output derivation '\x1b[35;1m"+bad.String()) {
		t.Errorf("bad: %d %v", res[0].Status, res[0].Err)
	}
}

func TestSharedGoal(t *testing.T) {
	requireSandbox(t)
	ctx := context.Background()
	st := testStore(t)
	b := newBuilder(t, st)
	p := addDrv(t, st, "slow", "sleep 0.3; echo $RANDOM > $out", nil, nil)
	var wg sync.WaitGroup
	results := make([][]Result, 3)
	for i := range results {
		wg.Go(func() {
			res, err := b.Build(ctx, []Target{{Drv: p}}, testOptions(), nil)
			if err != nil {
				t.Error(err)
			}
			results[i] = res
		})
	}
	wg.Wait()
	built := 0
	for _, res := range results {
		switch res[0].Status {
		case Built:
			built++
			if res[0].Start != results[0][0].Start && results[0][0].Status == Built {
				t.Errorf("two different builds")
			}
		case AlreadyValid:
		default:
			t.Errorf("status %d: %v", res[0].Status, res[0].Err)
		}
	}
	if built == 0 {
		t.Errorf("nothing built")
	}
}

func TestOutputChecks(t *testing.T) {
	requireSandbox(t)
	ctx := context.Background()
	st := testStore(t)
	b := newBuilder(t, st)
	dep := addDrv(t, st, "dep", "echo dep > $out", nil, nil)
	depOut := outPath(t, st, dep, "out").String()
	inputs := map[storepath.StorePath][]string{dep: {"out"}}
	script := "echo " + depOut + " > $out"
	tests := []struct {
		name string
		env  map[string]string
		err  string
	}{
		{"allowed", map[string]string{"allowedReferences": depOut}, ""},
		{"allowed-out", map[string]string{"allowedReferences": "out"}, "is not allowed to refer to the following paths:\x1b[35;1m\n  " + depOut},
		{"disallowed", map[string]string{"disallowedReferences": depOut}, "is not allowed to refer to the following paths"},
		{"disallowed-req", map[string]string{"disallowedRequisites": depOut}, "is not allowed to refer"},
		{"allowed-req", map[string]string{"allowedRequisites": depOut}, ""},
		{"bad-spec", map[string]string{"allowedReferences": "nope"}, "illegal reference specifier '\x1b[35;1mnope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{"dep": depOut}
			for k, v := range tt.env {
				env[k] = v
			}
			p := addDrv(t, st, "checks-"+tt.name, script, inputs, env)
			res, err := b.Build(ctx, []Target{{Drv: p}}, testOptions(), nil)
			if err != nil {
				t.Fatal(err)
			}
			if tt.err == "" {
				if res[0].Status != Built {
					t.Fatalf("status %d: %v", res[0].Status, res[0].Err)
				}
				return
			}
			if res[0].Status != OutputRejected || res[0].Err == nil || !strings.Contains(res[0].Err.Error(), tt.err) {
				t.Fatalf("status %d: %v, want %q", res[0].Status, res[0].Err, tt.err)
			}
		})
	}
}

func TestTimeouts(t *testing.T) {
	requireSandbox(t)
	ctx := context.Background()
	st := testStore(t)
	b := newBuilder(t, st)
	p := addDrv(t, st, "sleepy", "echo start; sleep 10 & sleep 10; echo > $out", nil, nil)
	for _, tt := range []struct {
		name string
		set  func(*Options)
		msg  string
	}{
		{"silence", func(o *Options) { o.MaxSilentTime = 1e9 }, "timed out after \x1b[35;1m1\x1b[0m seconds of silence"},
		{"timeout", func(o *Options) { o.Timeout = 1e9 }, "timed out after \x1b[35;1m1\x1b[0m seconds"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			opts := testOptions()
			tt.set(&opts)
			res, err := b.Build(ctx, []Target{{Drv: p}}, opts, nil)
			if err != nil {
				t.Fatal(err)
			}
			if res[0].Status != TimedOut || !strings.Contains(res[0].Err.Error(), tt.msg) ||
				!strings.Contains(res[0].Err.Error(), "\x1b[35;1mbuilding of '"+p.String()+"!*' from .drv file\x1b[0m") {
				t.Fatalf("status %d: %v", res[0].Status, res[0].Err)
			}
			if d := res[0].Stop.Sub(res[0].Start); d > 5e9 {
				t.Errorf("took %v: the build was not killed", d)
			}
		})
	}
}

// TestStoreView: every build sees exactly its input closure in the store
// dir, also when it reuses an earlier build's dirs.
func TestStoreView(t *testing.T) {
	requireSandbox(t)
	ctx := context.Background()
	st := testStore(t)
	b := newBuilder(t, st)
	a := addDrv(t, st, "a", "echo a > $out", nil, nil)
	c := addDrv(t, st, "c", "mkdir $out; echo c > $out/f", nil, nil)
	both := addDrv(t, st, "both", "ls /nix/store > $out", map[storepath.StorePath][]string{a: {"out"}, c: {"out"}}, nil)
	res, _ := b.Build(ctx, []Target{{Drv: both}}, testOptions(), nil)
	if res[0].Status != Built {
		t.Fatalf("both: %v", res[0].Err)
	}
	want := []string{outPath(t, st, a, "out").Base(), outPath(t, st, c, "out").Base(), outPath(t, st, both, "out").Base()}
	slices.Sort(want)
	if got := strings.Fields(readOut(t, st, res[0].Outputs["out"])); !slices.Equal(got, want) {
		t.Errorf("store view %v, want %v", got, want)
	}
	for i := range 3 {
		one := addDrv(t, st, fmt.Sprintf("one-%d", i), "ls -a /nix/store > $out; touch /nix/store/junk", map[storepath.StorePath][]string{c: {"out"}}, nil)
		res, _ = b.Build(ctx, []Target{{Drv: one}}, testOptions(), nil)
		if res[0].Status != Built {
			t.Fatalf("one: %v", res[0].Err)
		}
		want := []string{".", "..", outPath(t, st, c, "out").Base(), outPath(t, st, one, "out").Base()}
		slices.Sort(want)
		got := strings.Fields(readOut(t, st, res[0].Outputs["out"]))
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("store view of build %d: %v, want %v", i, got, want)
		}
	}
}

func TestKeepFailed(t *testing.T) {
	requireSandbox(t)
	ctx := context.Background()
	st := testStore(t)
	b := newBuilder(t, st)
	p := addDrv(t, st, "fails", "echo kept > $TMPDIR/file; exit 1", nil, nil)
	opts := testOptions()
	opts.KeepFailed = true
	log := &testLog{}
	res, _ := b.Build(ctx, []Target{{Drv: p}}, opts, log)
	if res[0].Status != PermanentFailure {
		t.Fatalf("status %d", res[0].Status)
	}
	var dir string
	for _, e := range log.errors {
		if rest, ok := strings.CutPrefix(e, "note: keeping build directory '"); ok {
			dir = strings.TrimSuffix(rest, "'")
		}
	}
	if data, err := os.ReadFile(filepath.Join(dir, "file")); err != nil || string(data) != "kept\n" {
		t.Errorf("kept build dir %q: %q %v (log %q)", dir, data, err, log.errors)
	}
}

// TestNoSandbox: sandbox = false runs the builder on the host, with the
// same environment, writing straight into the store dir.
func TestNoSandbox(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	cfg, err := store.ParseURL("local?store="+dir+"/store&state="+dir+"/state&log="+dir+"/log", func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	st, err := local.Open(ctx, cfg, local.Options{NoFsync: true, ReservedSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	b := newBuilder(t, st)
	dep := addDrv(t, st, "dep", "echo dep > $out", nil, nil)
	p := addDrv(t, st, "host", `echo "$HOME $PATH $NIX_BUILD_TOP" > $out; test "$PWD" = "$NIX_BUILD_TOP" && test -d "$TMPDIR" && read x < $dep && echo $x >> $out && echo $dep >> $out`,
		map[storepath.StorePath][]string{dep: {"out"}}, map[string]string{"dep": outPath(t, st, dep, "out").String()})
	opts := testOptions()
	opts.Sandbox = false
	res, err := b.Build(ctx, []Target{{Drv: p}}, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Status != Built {
		t.Fatalf("status %d: %v", res[0].Status, res[0].Err)
	}
	got := readOut(t, st, res[0].Outputs["out"])
	if !strings.HasPrefix(got, "/homeless-shelter /path-not-set "+filepath.Join(st.StateDir(), "builds")) || !strings.Contains(got, "\ndep\n") {
		t.Errorf("output %q", got)
	}
	info, err := st.QueryPathInfo(ctx, res[0].Outputs["out"])
	if err != nil || len(info.References) != 1 {
		t.Errorf("references %v %v", info, err)
	}
}

func TestKeepGoing(t *testing.T) {
	requireSandbox(t)
	ctx := context.Background()
	for _, keepGoing := range []bool{false, true} {
		t.Run(fmt.Sprint(keepGoing), func(t *testing.T) {
			st := testStore(t)
			b := newBuilder(t, st)
			bad := addDrv(t, st, "bad", "exit 1", nil, nil)
			slow := addDrv(t, st, "slow", "sleep 1; echo > $out", nil, nil)
			opts := testOptions()
			opts.KeepGoing = keepGoing
			res, err := b.Build(ctx, []Target{{Drv: bad}, {Drv: slow}}, opts, nil)
			if err != nil {
				t.Fatal(err)
			}
			if res[0].Status != PermanentFailure {
				t.Errorf("bad: %d %v", res[0].Status, res[0].Err)
			}
			want := Built
			if !keepGoing {
				want = MiscFailure
			}
			if res[1].Status != want {
				t.Errorf("slow: %d %v, want %d", res[1].Status, res[1].Err, want)
			}
		})
	}
}
