package build

import (
	"compress/bzip2"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"cairn/internal/fsnar"
	"cairn/internal/nixhash"
	"cairn/internal/storepath"
)

// modeLog is a testLog that is also a ModeLogger.
type modeLog struct {
	testLog
	modes  []Mode
	rounds []string
	prints []string
}

func (l *modeLog) BuildStartedMode(drv storepath.StorePath, m Mode, round, rounds int) BuildLog {
	l.mu.Lock()
	l.modes = append(l.modes, m)
	l.rounds = append(l.rounds, fmt.Sprintf("%d/%d", round, rounds))
	l.mu.Unlock()
	return l.BuildStarted(drv)
}

func (l *modeLog) Print(msg string, info bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.prints = append(l.prints, msg)
}

// narHashOnDisk hashes p's files as they are now.
func narHashOnDisk(t *testing.T, path string) nixhash.Hash {
	t.Helper()
	h := nixhash.NewHasher(nixhash.SHA256)
	if err := fsnar.Dump(context.Background(), h, path); err != nil {
		t.Fatal(err)
	}
	return h.Sum()
}

func TestCheck(t *testing.T) {
	requireSandbox(t)
	ctx := context.Background()
	st := testStore(t)
	b := newBuilder(t, st)
	det := addDrv(t, st, "det", "echo same > $out", nil, nil)
	rnd := addDrv(t, st, "rnd", "echo $RANDOM$RANDOM$RANDOM > $out", nil, nil)
	never := addDrv(t, st, "never", "echo > $out", nil, nil)

	opts := testOptions()
	opts.Mode = Check
	opts.KeepGoing = true
	if _, err := b.Build(ctx, []Target{{Drv: never}}, opts, nil); err == nil || !strings.Contains(err.Error(), "are not valid, so checking is not possible") {
		t.Errorf("check of an unbuilt derivation: %v", err)
	}
	res, err := b.Build(ctx, []Target{{Drv: det}, {Drv: rnd}}, testOptions(), nil)
	if err != nil || !res[0].Status.Success() || !res[1].Status.Success() {
		t.Fatalf("build: %v %+v", err, res)
	}
	rndOut := res[1].Outputs["out"]
	before, _ := st.QueryPathInfo(ctx, rndOut)

	for _, keep := range []bool{false, true} {
		opts.KeepFailed = keep
		log := &modeLog{}
		res, err = b.Build(ctx, []Target{{Drv: det}, {Drv: rnd}}, opts, log)
		if err != nil {
			t.Fatal(err)
		}
		if res[0].Status != Built || res[0].TimesBuilt != 1 {
			t.Errorf("check of a deterministic derivation: %d %v", res[0].Status, res[0].Err)
		}
		real := st.RealPath(rndOut)
		want := "derivation '\x1b[35;1m" + rnd.String() + "\x1b[0m' may not be deterministic: output '\x1b[35;1m" + real + "\x1b[0m' differs"
		if keep {
			want += " from '\x1b[35;1m" + real + ".check\x1b[0m'"
		}
		if res[1].Status != NotDeterministic || res[1].Err == nil || res[1].Err.Error() != want {
			t.Errorf("keep-failed %v: status %d, %q\nwant %q", keep, res[1].Status, res[1].Err, want)
		}
		if len(log.modes) != 2 || log.modes[0] != Check {
			t.Errorf("build modes logged: %v", log.modes)
		}
		_, err := os.Lstat(real + ".check")
		if keep != (err == nil) {
			t.Errorf("keep-failed %v: %s.check: %v", keep, real, err)
		}
		after, _ := st.QueryPathInfo(ctx, rndOut)
		if after.NarHash != before.NarHash || narHashOnDisk(t, real) != before.NarHash {
			t.Errorf("the check changed the valid output")
		}
	}
}

func TestRepair(t *testing.T) {
	requireSandbox(t)
	ctx := context.Background()
	st := testStore(t)
	b := newBuilder(t, st)
	dep := addDrv(t, st, "dep", "mkdir $out; echo dep > $out/file", nil, nil)
	d := outPath(t, st, dep, "out").String()
	top := addDrv(t, st, "top", "echo $RANDOM > $out; echo "+d+" >> $out; cat "+d+"/file >> $out", map[storepath.StorePath][]string{dep: {"out"}}, nil)
	res, err := b.Build(ctx, []Target{{Drv: top}}, testOptions(), nil)
	if err != nil || res[0].Status != Built {
		t.Fatalf("build: %v %+v", err, res)
	}
	depOut, topOut := outPath(t, st, dep, "out"), outPath(t, st, top, "out")
	corrupt := func(p storepath.StorePath) {
		real := st.RealPath(p)
		if fi, _ := os.Lstat(real); fi.IsDir() {
			os.Chmod(real, 0o755)
			real = filepath.Join(real, "file")
		}
		os.Chmod(real, 0o644)
		if err := os.WriteFile(real, []byte("corrupt\n"), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	good := func(p storepath.StorePath) {
		t.Helper()
		info, err := st.QueryPathInfo(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if got := narHashOnDisk(t, st.RealPath(p)); got != info.NarHash {
			t.Errorf("%s: on disk %s, registered %s", p, got, info.NarHash)
		}
	}
	opts := testOptions()
	opts.Mode = Repair

	for _, tt := range []struct {
		name   string
		break_ func()
		status Status
		prints []string
	}{
		{"all good", func() {}, AlreadyValid, nil},
		{"corrupt output", func() { corrupt(topOut) }, Built, []string{"path '" + topOut.String() + "' is corrupted or missing!"}},
		{"missing output", func() { removeAll(st.RealPath(topOut)) }, Built, []string{"path '" + topOut.String() + "' is corrupted or missing!"}},
		{"corrupt in the closure", func() { corrupt(depOut) }, AlreadyValid, []string{
			"path '" + depOut.String() + "' is corrupted or missing!",
			"found corrupted or missing path '" + depOut.String() + "' in the output closure of '" + top.String() + "'",
		}},
		{"corrupt input and output", func() { corrupt(depOut); corrupt(topOut) }, Built, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.break_()
			log := &modeLog{}
			res, err := b.Build(ctx, []Target{{Drv: top}}, opts, log)
			if err != nil {
				t.Fatal(err)
			}
			if res[0].Status != tt.status {
				t.Errorf("status %d, want %d: %v", res[0].Status, tt.status, res[0].Err)
			}
			for _, want := range tt.prints {
				if !strings.Contains(strings.Join(log.prints, "\n"), want) {
					t.Errorf("log lacks %q:\n%s", want, strings.Join(log.prints, "\n"))
				}
			}
			good(topOut)
			good(depOut)
			if got := readOut(t, st, topOut); !strings.HasSuffix(got, "\ndep\n") {
				t.Errorf("top: %q", got)
			}
		})
	}
}

func TestBuildLogFile(t *testing.T) {
	requireSandbox(t)
	ctx := context.Background()
	st := testStore(t)
	b := newBuilder(t, st)
	p := addDrv(t, st, "chatty", "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done; echo > $out", nil, nil)
	base := p.Base()
	plain := filepath.Join(st.LogDir(), "drvs", base[:2], base[2:])
	var want strings.Builder
	for i := range 2000 {
		want.WriteString("line " + strconv.Itoa(i) + "\n")
	}
	for _, compress := range []bool{true, false} {
		opts := testOptions()
		opts.CompressLog = compress
		if compress {
			opts.Mode = Normal
		} else {
			opts.Mode = Check // build again
		}
		res, err := b.Build(ctx, []Target{{Drv: p}}, opts, nil)
		if err != nil || !res[0].Status.Success() {
			t.Fatalf("build: %v %+v", err, res)
		}
		name, other := plain, plain+".bz2"
		if compress {
			name, other = other, name
		}
		f, err := os.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		var r io.Reader = f
		if compress {
			r = bzip2.NewReader(f)
		}
		got, err := io.ReadAll(r)
		f.Close()
		if err != nil || string(got) != want.String() {
			t.Errorf("compress %v: log %d bytes, %v", compress, len(got), err)
		}
		if _, err := os.Lstat(other); err == nil {
			t.Errorf("compress %v: %s is still there", compress, other)
		}
	}

	// max-build-log-size kills the build.
	opts := testOptions()
	opts.MaxLogSize = 100
	p2 := addDrv(t, st, "chatty2", "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done; echo > $out", nil, nil)
	res, err := b.Build(ctx, []Target{{Drv: p2}}, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	want2 := "\x1b[35;1mbuilding of '" + p2.String() + "!*' from .drv file\x1b[0m killed after writing more than \x1b[35;1m100\x1b[0m bytes of log output"
	if res[0].Status != LogLimitExceeded || res[0].Err == nil || res[0].Err.Error() != want2 {
		t.Errorf("status %d: %v", res[0].Status, res[0].Err)
	}
}

// readBz2 reads a bzip2-compressed file.
func readBz2(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(bzip2.NewReader(f))
}

func TestRepeat(t *testing.T) {
	requireSandbox(t)
	ctx := context.Background()
	st := testStore(t)
	b := newBuilder(t, st)
	for _, tt := range []struct {
		name             string
		script           string
		enforce, keep    bool
		status           Status
		nonDet           bool
		timesBuilt       int
		msg              string
		checkLeft, valid bool
	}{
		{name: "same", script: "echo same > $out", enforce: true, status: Built, timesBuilt: 3, valid: true},
		{name: "differs", script: "echo $RANDOM$RANDOM > $out", enforce: true, status: NotDeterministic, nonDet: true, timesBuilt: 2, msg: "differs from previous round"},
		{name: "differs kept", script: "echo $RANDOM$RANDOM > $out", enforce: true, keep: true, status: NotDeterministic, nonDet: true, timesBuilt: 2, msg: ".check\x1b[0m' from previous round", checkLeft: true},
		{name: "differs not enforced", script: "echo $RANDOM$RANDOM > $out", status: Built, nonDet: true, timesBuilt: 2, valid: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := addDrv(t, st, "repeat-"+strings.ReplaceAll(tt.name, " ", "-"), tt.script, nil, nil)
			out := outPath(t, st, p, "out")
			opts := testOptions()
			opts.Repeat, opts.EnforceDeterminism, opts.KeepFailed = 2, tt.enforce, tt.keep
			log := &modeLog{}
			res, err := b.Build(ctx, []Target{{Drv: p}}, opts, log)
			if err != nil {
				t.Fatal(err)
			}
			r := res[0]
			if r.Status != tt.status || r.NonDeterministic != tt.nonDet || r.TimesBuilt != tt.timesBuilt {
				t.Errorf("status %d nondeterministic %v built %d times: %v", r.Status, r.NonDeterministic, r.TimesBuilt, r.Err)
			}
			if tt.msg != "" && (r.Err == nil || !strings.Contains(r.Err.Error(), tt.msg)) {
				t.Errorf("error %v, want %q", r.Err, tt.msg)
			}
			if _, err := os.Lstat(st.RealPath(out) + ".check"); (err == nil) != tt.checkLeft {
				t.Errorf(".check left: %v", err == nil)
			}
			if ok, _ := st.IsValidPath(ctx, out); ok != tt.valid {
				t.Errorf("valid: %v", ok)
			}
			if tt.name == "same" && strings.Join(log.rounds, " ") != "1/3 2/3 3/3" {
				t.Errorf("rounds logged: %v", log.rounds)
			}
		})
	}
}
