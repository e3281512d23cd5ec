package daemon

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"cairn/internal/testutil/nixtest"
)

// buildNix is a small graph: a multi-output derivation, one that depends on
// it, and a failing one.
const buildNix = `
let
  sh = "/bin/sh";
  multi = derivation {
    name = "multi"; system = builtins.currentSystem; builder = sh;
    outputs = [ "out" "dev" ];
    args = [ "-c" "echo building multi; mkdir $out; echo $dev > $out/dev; echo dev of multi > $dev" ];
  };
  top = derivation {
    name = "top"; system = builtins.currentSystem; builder = sh;
    args = [ "-c" "echo building top; read d < ${multi}/dev; echo \"top of $d\" > $out; echo ${multi.dev} >> $out" ];
  };
  bad = derivation {
    name = "bad"; system = builtins.currentSystem; builder = sh;
    args = [ "-c" "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo bad line $i; done; exit 3" ];
  };
  slow = derivation {
    name = "slow"; system = builtins.currentSystem; builder = sh;
    args = [ "-c" "sleep 1; echo token-$$-$RANDOM; echo slow > $out" ];
  };
  envdump = derivation {
    name = "envdump"; system = builtins.currentSystem; builder = sh;
    passAsFile = [ "big" ]; big = "passed as a file";
    args = [ "-c" "export -p > $out; cat $bigPath >> $out; ls -a /etc /build / >> $out; id >> $out; cat /etc/passwd /etc/group /etc/hosts >> $out; echo $0 >> $out" ];
  };
  structured = derivation {
    name = "structured"; system = builtins.currentSystem; builder = sh;
    __structuredAttrs = true;
    outputs = [ "out" "doc" ];
    str = "it's \"quoted\""; num = 42; flt = 1.5; yes = true; no = false; nul = null;
    list = [ "a" "b c" 3 ]; nested = [ [ 1 ] ]; attrs = { x = "y"; n = 1; }; deep = { a = { b = 1; }; };
    "bad-name" = 1;
    args = [ "-c" "cat .attrs.json > ${placeholder "out"}; echo >> ${placeholder "out"}; cat .attrs.sh >> ${placeholder "out"}; echo > ${placeholder "doc"}" ];
  };
  fixedBad = derivation {
    name = "fixed-bad"; system = builtins.currentSystem; builder = sh;
    outputHashMode = "flat"; outputHashAlgo = "sha256";
    outputHash = "0000000000000000000000000000000000000000000000000000";
    args = [ "-c" "echo hello > $out" ];
  };
  graph = derivation {
    name = "graph"; system = builtins.currentSystem; builder = sh;
    exportReferencesGraph = [ "closure" top "multiDev" multi.dev ];
    args = [ "-c" "read x < closure; while read line; do echo \"$line\" >> $out; done < closure; while read line; do echo \"$line\" >> $out; done < multiDev" ];
  };
in { inherit multi top bad slow envdump structured fixedBad graph; }
`

// nixOut runs a Nix client against the daemon, returning stdout and stderr.
func (td *testDaemon) nixOut(name string, args ...string) (string, string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(nixtest.Env(), td.nixEnv()...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return strings.TrimSpace(stdout.String()), stderr.String(), err
}

// TestNixBuild builds through cairn daemon with Nix 2.8's nix-build and
// nix-store -r, and compares the outputs with what Nix 2.8 builds itself.
func TestNixBuild(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix-build", "nix-instantiate")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	td := newTestDaemon(t, [2]string{"sandbox-paths", "/bin/sh=/bin/busybox"})
	file := filepath.Join(t.TempDir(), "build.nix")
	if err := os.WriteFile(file, []byte(buildNix), 0o644); err != nil {
		t.Fatal(err)
	}

	stdout, stderr, err := td.nixOut("nix-build", "--no-out-link", file, "-A", "top")
	if err != nil {
		if strings.Contains(stderr, "setting up the build environment") {
			t.Skipf("the kernel refuses the sandbox: %s", stderr)
		}
		t.Fatalf("nix-build: %v\n%s", err, stderr)
	}
	if !strings.Contains(stderr, "building top") || !strings.Contains(stderr, "building multi") {
		t.Errorf("nix-build's stderr lacks the build logs:\n%s", stderr)
	}
	top := stdout

	// The same with Nix itself.
	ref := nixtest.NewStore(t)
	refTop := ref.Run(t, nil, "nix-build", "--option", "build-users-group", "", "--option", "sandbox-paths", "/bin/sh=/bin/busybox",
		"--no-out-link", file, "-A", "top")
	if refTop != top {
		t.Fatalf("output path %s, Nix built %s", top, refTop)
	}
	for _, q := range [][]string{{"--hash", top}, {"--references", top}, {"--deriver", top}, {"--requisites", top}} {
		got, _, err := td.nixOut("nix-store", append([]string{"-q"}, q...)...)
		if err != nil {
			t.Fatalf("nix-store -q %v: %v", q, err)
		}
		if want := ref.Run(t, nil, "nix-store", append([]string{"-q"}, q...)...); got != want {
			t.Errorf("nix-store -q %v: %q, Nix: %q", q, got, want)
		}
	}
	// The builder's environment and sandbox, as Nix 2.8 gives them.
	env, stderr, err := td.nixOut("nix-build", "--no-out-link", file, "-A", "envdump")
	if err != nil {
		t.Fatalf("nix-build envdump: %v\n%s", err, stderr)
	}
	refEnv := ref.Run(t, nil, "nix-build", "--option", "build-users-group", "", "--option", "sandbox-paths", "/bin/sh=/bin/busybox",
		"--no-out-link", file, "-A", "envdump")
	got, _ := os.ReadFile(filepath.Join(td.cfg.Root, env))
	want, _ := os.ReadFile(filepath.Join(ref.Root, refEnv))
	if string(got) != string(want) {
		t.Errorf("builder environment differs from Nix 2.8's:\n--- cairn\n%s\n--- nix\n%s", got, want)
	}

	// Structured attributes: .attrs.json and .attrs.sh as Nix 2.8 writes them.
	sa, stderr, err := td.nixOut("nix-build", "--no-out-link", file, "-A", "structured")
	if err != nil {
		t.Fatalf("nix-build structured: %v\n%s", err, stderr)
	}
	refSA := ref.Run(t, nil, "nix-build", "--option", "build-users-group", "", "--option", "sandbox-paths", "/bin/sh=/bin/busybox",
		"--no-out-link", file, "-A", "structured")
	outOf := func(paths string) string {
		for _, p := range strings.Fields(paths) {
			if strings.HasSuffix(p, "-structured") {
				return p
			}
		}
		return "missing"
	}
	got, _ = os.ReadFile(filepath.Join(td.cfg.Root, outOf(sa)))
	want, _ = os.ReadFile(filepath.Join(ref.Root, outOf(refSA)))
	if !strings.Contains(string(got), `"outputs":{`) || string(got) != string(want) {
		t.Errorf("structured attrs differ from Nix 2.8's:\n--- cairn\n%s\n--- nix\n%s", got, want)
	}

	// exportReferencesGraph: the registration files Nix 2.8 writes.
	gr, stderr, err := td.nixOut("nix-build", "--no-out-link", file, "-A", "graph")
	if err != nil {
		t.Fatalf("nix-build graph: %v\n%s", err, stderr)
	}
	refGr := ref.Run(t, nil, "nix-build", "--option", "build-users-group", "", "--option", "sandbox-paths", "/bin/sh=/bin/busybox",
		"--no-out-link", file, "-A", "graph")
	got, _ = os.ReadFile(filepath.Join(td.cfg.Root, gr))
	want, _ = os.ReadFile(filepath.Join(ref.Root, refGr))
	if len(got) == 0 || string(got) != string(want) {
		t.Errorf("exportReferencesGraph differs from Nix 2.8's:\n--- cairn\n%s\n--- nix\n%s", got, want)
	}

	// A fixed-output hash mismatch: Nix 2.8's words.
	_, stderr, err = td.nixOut("nix-build", "--no-out-link", file, "-A", "fixedBad")
	refCmd := exec.Command("nix-build", "--store", ref.URL(), "--option", "build-users-group", "", "--option", "sandbox-paths", "/bin/sh=/bin/busybox",
		"--no-out-link", file, "-A", "fixedBad")
	refCmd.Env = nixtest.Env()
	refErr, _ := refCmd.CombinedOutput()
	mismatch := regexp.MustCompile(`hash mismatch in fixed-output derivation.*\n.*specified: +\S+\n.*got: +\S+`)
	gotMsg, wantMsg := mismatch.FindString(stripANSI(stderr)), mismatch.FindString(stripANSI(string(refErr)))
	if err == nil || gotMsg == "" || gotMsg != wantMsg {
		t.Errorf("fixed-output mismatch: %v\n%q\nNix 2.8 says:\n%q", err, gotMsg, wantMsg)
	}

	// nix-store -r of the multi-output derivation (already built): both paths.
	drv, _, err := td.nixOut("nix-instantiate", file, "-A", "multi")
	if err != nil {
		t.Fatal(err)
	}
	outs, stderr, err := td.nixOut("nix-store", "-r", drv)
	if err != nil || len(strings.Fields(outs)) != 2 {
		t.Errorf("nix-store -r %s: %q %v\n%s", drv, outs, err, stderr)
	}
	// nix log through the daemon's store reads our log.
	if log, _, err := td.nixOut("nix-store", "-l", drv); err != nil || !strings.Contains(log, "building multi") {
		t.Errorf("nix-store -l: %q %v", log, err)
	}

	// A failing builder: status 100, the tail of its log.
	_, stderr, err = td.nixOut("nix-build", "--no-out-link", file, "-A", "bad")
	var ee *exec.ExitError
	if err == nil || !errorAs(err, &ee) || ee.ExitCode() != 1 && ee.ExitCode() != 100 {
		t.Errorf("bad build: %v", err)
	}
	if !strings.Contains(stderr, "failed with exit code 3") || !strings.Contains(stderr, "last 10 log lines") || !strings.Contains(stderr, "> bad line 12") {
		t.Errorf("bad build's stderr:\n%s", stderr)
	}

	// Two clients at once: one build.
	var wg sync.WaitGroup
	errs := make([]string, 2)
	for i := range errs {
		wg.Go(func() {
			_, e, err := td.nixOut("nix-build", "--no-out-link", file, "-A", "slow")
			if err != nil {
				t.Errorf("client %d: %v\n%s", i, err, e)
			}
			errs[i] = e
		})
	}
	wg.Wait()
	tokens := map[string]bool{}
	for _, e := range errs {
		for _, m := range regexp.MustCompile(`token-[0-9]+-[0-9]+`).FindAllString(e, -1) {
			tokens[m] = true
		}
	}
	if len(tokens) != 1 {
		t.Errorf("builds seen by two clients: %v\n%s\n%s", tokens, errs[0], errs[1])
	}
}

func errorAs(err error, target **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	if ok {
		*target = e
	}
	return ok
}

var ansiRE = regexp.MustCompile("\x1b\\[[0-9;]*m")

func stripANSI(s string) string { return ansiRE.ReplaceAllString(s, "") }
