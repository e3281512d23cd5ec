package daemon

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"cairn/internal/store/storetest"
	"cairn/internal/testutil/nixtest"
)

// matrixNix complements buildNix (build_test.go): timeouts, the log limit,
// each reference constraint, a non-deterministic derivation for --check,
// and a small graph for QueryMissing. Builders use shell builtins only, so
// that Nix's own sandbox and Cairn's run them alike.
const matrixNix = `
let
  sh = "/bin/sh";
  mk = name: attrs: derivation ({ inherit name; system = builtins.currentSystem; builder = sh; } // attrs);
  dep = mk "dep" { args = [ "-c" "echo dep > $out" ]; };
  mid = mk "mid" { args = [ "-c" "echo ${dep} > $out" ]; };
  refDep = name: attrs: mk name ({ args = [ "-c" "echo ${mid} > $out" ]; } // attrs);
in {
  inherit dep mid;
  silent = mk "silent" { args = [ "-c" "echo before; sleep 30; echo > $out" ]; };
  busy = mk "busy" { args = [ "-c" "i=0; while [ $i -lt 60 ]; do echo tick $i; sleep 1; i=$((i+1)); done; echo > $out" ]; };
  chatty = mk "chatty" { args = [ "-c" "i=0; while [ $i -lt 500 ]; do echo line $i; i=$((i+1)); done; echo > $out" ]; };
  allowedRefs = refDep "allowed-refs" { allowedReferences = [ ]; };
  allowedReqs = refDep "allowed-reqs" { allowedRequisites = [ mid ]; };
  disallowedRefs = refDep "disallowed-refs" { disallowedReferences = [ mid ]; };
  disallowedReqs = refDep "disallowed-reqs" { disallowedRequisites = [ dep ]; };
  det = mk "det" { args = [ "-c" "echo same > $out" ]; };
  rand = mk "rand" { args = [ "-c" "read u < /proc/sys/kernel/random/uuid; echo $u > $out" ]; };
  top = mk "top" { args = [ "-c" "echo ${mid} > $out" ]; };
  randRepeat = mk "rand-repeat" { args = [ "-c" "read u < /proc/sys/kernel/random/uuid; echo $u > $out" ]; };
  randLax = mk "rand-lax" { args = [ "-c" "read u < /proc/sys/kernel/random/uuid; echo $u > $out" ]; };
}
`

// nixRun is one run of a Nix client: its stdout, stderr and exit code.
type nixRun struct {
	stdout, stderr string
	code           int
}

// errorText is what follows the first "error:" of a client's stderr, with
// colours removed and the store's root named ROOT.
func (r nixRun) errorText(root string) string {
	s := stripANSI(r.stderr)
	i := strings.Index(s, "error:")
	if i < 0 {
		return ""
	}
	return strings.TrimSpace(strings.ReplaceAll(s[i:], root, "ROOT"))
}

func runNix(env []string, name string, args ...string) nixRun {
	cmd := exec.Command(name, args...)
	cmd.Env = append(nixtest.Env(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
	}
	return nixRun{strings.TrimSpace(stdout.String()), stderr.String(), code}
}

// TestNixBuildMatrix runs Nix 2.8's clients through cairn daemon and
// through nix-daemon 2.8 (in Nix's sandbox), and compares exit codes and
// error messages.
func TestNixBuildMatrix(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix-build", "nix-instantiate")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	td := newTestDaemon(t, [2]string{"sandbox-paths", "/bin/sh=/bin/busybox"})
	file := filepath.Join(t.TempDir(), "matrix.nix")
	if err := os.WriteFile(file, []byte(matrixNix), 0o644); err != nil {
		t.Fatal(err)
	}
	ref := storetest.StartDaemonWith(t, []string{"nix-daemon"}, []string{"--option", "sandbox", "true",
		"--option", "sandbox-paths", "/bin/sh=/bin/busybox"})
	refEnv := nixDaemonClientEnv(ref)
	ours := func(name string, args ...string) nixRun { return runNix(td.nixEnv(), name, args...) }
	theirs := func(name string, args ...string) nixRun { return runNix(refEnv, name, args...) }
	if r := ours("nix-build", "--no-out-link", file, "-A", "dep"); r.code != 0 {
		if strings.Contains(r.stderr, "setting up the build environment") {
			t.Skipf("the kernel refuses the sandbox: %s", r.stderr)
		}
		t.Fatalf("nix-build dep: %d\n%s", r.code, r.stderr)
	}
	if r := theirs("nix-build", "--no-out-link", file, "-A", "dep"); r.code != 0 {
		t.Skipf("Nix's own sandbox does not work here: %s", r.stderr)
	}

	// Failures: the exit code and the error, as Nix 2.8 gives them.
	for _, tt := range []struct {
		name string
		args []string
	}{
		{"silent timeout", []string{"-A", "silent", "--option", "max-silent-time", "1"}},
		{"timeout", []string{"-A", "busy", "--timeout", "1"}},
		{"max-build-log-size", []string{"-A", "chatty", "--option", "max-build-log-size", "100"}},
		{"allowedReferences", []string{"-A", "allowedRefs"}},
		{"allowedRequisites", []string{"-A", "allowedReqs"}},
		{"disallowedReferences", []string{"-A", "disallowedRefs"}},
		{"disallowedRequisites", []string{"-A", "disallowedReqs"}},
		{"repeat", []string{"-A", "randRepeat", "--repeat", "1"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"--no-out-link", file}, tt.args...)
			got, want := ours("nix-build", args...), theirs("nix-build", args...)
			if got.code != want.code || got.errorText(td.cfg.Root) != want.errorText(ref.Root) || want.code == 0 {
				t.Errorf("cairn: exit %d\n%s\nNix 2.8: exit %d\n%s", got.code, got.errorText(td.cfg.Root), want.code, want.errorText(ref.Root))
			}
		})
	}

	// --check: a deterministic derivation passes; a non-deterministic one
	// fails (status 104 in Nix's worker; a 2.8 client through a daemon exits
	// 1), and with -K leaves OUT.check.
	t.Run("check", func(t *testing.T) {
		for _, attr := range []string{"det", "rand"} {
			ours("nix-build", "--no-out-link", file, "-A", attr)
			theirs("nix-build", "--no-out-link", file, "-A", attr)
		}
		got := ours("nix-build", "--no-out-link", file, "-A", "det", "--check")
		if got.code != 0 || !strings.Contains(got.stderr, "checking outputs of '") {
			t.Errorf("check det: exit %d\n%s", got.code, got.stderr)
		}
		for _, keep := range [][]string{nil, {"-K"}} {
			args := append([]string{"--no-out-link", file, "-A", "rand", "--check"}, keep...)
			got, want := ours("nix-build", args...), theirs("nix-build", args...)
			// Nix keeps the build dir in /tmp; the note differs.
			norm := func(s string) string {
				if i := strings.Index(s, "error: derivation"); i >= 0 {
					return s[i:]
				}
				return s
			}
			if got.code != 1 || got.code != want.code || norm(got.errorText(td.cfg.Root)) != norm(want.errorText(ref.Root)) {
				t.Errorf("check rand %v: exit %d\n%s\nNix 2.8: exit %d\n%s", keep, got.code, got.errorText(td.cfg.Root), want.code, want.errorText(ref.Root))
			}
		}
		out := ours("nix-build", "--no-out-link", file, "-A", "rand").stdout
		if _, err := os.Stat(filepath.Join(td.cfg.Root, out+".check")); err != nil {
			t.Errorf("-K left no .check: %v", err)
		}
	})

	// --repair through the daemon (the test client is trusted): a modified
	// output is rebuilt and swapped into place; so through --verify.
	t.Run("repair", func(t *testing.T) {
		out := ours("nix-build", "--no-out-link", file, "-A", "det").stdout
		real := filepath.Join(td.cfg.Root, out)
		corrupt := func() {
			os.Chmod(real, 0o644)
			if err := os.WriteFile(real, []byte("corrupt\n"), 0o444); err != nil {
				t.Fatal(err)
			}
		}
		corrupt()
		drv := ours("nix-instantiate", file, "-A", "det").stdout
		if r := ours("nix-store", "-r", "--repair", drv); r.code != 0 || !strings.Contains(r.stderr, "repairing outputs of") {
			t.Errorf("nix-store -r --repair: exit %d\n%s", r.code, r.stderr)
		}
		if b, _ := os.ReadFile(real); string(b) != "same\n" {
			t.Errorf("after --repair: %q", b)
		}
		corrupt()
		if r := ours("nix-store", "--verify", "--check-contents", "--repair"); r.code != 0 {
			t.Errorf("nix-store --verify --check-contents --repair: exit %d\n%s", r.code, r.stderr)
		}
		if b, _ := os.ReadFile(real); string(b) != "same\n" {
			t.Errorf("after --verify --repair: %q", b)
		}
		if r := ours("nix-store", "--verify", "--check-contents"); r.code != 0 {
			t.Errorf("the store is not clean after the repair:\n%s", r.stderr)
		}
	})

	// repeat without enforce-determinism: the difference is logged, the
	// build succeeds.
	t.Run("repeat lax", func(t *testing.T) {
		args := []string{"--no-out-link", file, "-A", "randLax", "--repeat", "2", "--option", "enforce-determinism", "false"}
		got, want := ours("nix-build", args...), theirs("nix-build", args...)
		line := func(s string) string {
			for _, l := range strings.Split(stripANSI(s), "\n") {
				if strings.Contains(l, "differs from previous round") {
					return l
				}
			}
			return ""
		}
		if got.code != 0 || want.code != 0 || line(got.stderr) == "" || line(got.stderr) != line(want.stderr) ||
			!strings.Contains(got.stderr, "(round 2/3)") {
			t.Errorf("cairn: exit %d\n%s\nNix 2.8: exit %d\n%s", got.code, got.stderr, want.code, want.stderr)
		}
	})

	// QueryMissing: nix-store -r --dry-run prints what Nix's own store says.
	t.Run("dry-run", func(t *testing.T) {
		bogus := "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-unknown"
		for _, build := range []string{"", "mid"} {
			if build != "" {
				ours("nix-build", "--no-out-link", file, "-A", build)
				theirs("nix-build", "--no-out-link", file, "-A", build)
			}
			drv := ours("nix-instantiate", file, "-A", "top").stdout
			if want := theirs("nix-instantiate", file, "-A", "top").stdout; drv != want {
				t.Fatalf("nix-instantiate: %s, Nix: %s", drv, want)
			}
			got := ours("nix-store", "-r", "--dry-run", drv, bogus)
			want := theirs("nix-store", "-r", "--dry-run", drv, bogus)
			if got.stderr != want.stderr || got.code != want.code || !strings.Contains(got.stderr, "will be built") {
				t.Errorf("after building %q: cairn:\n%s\nNix 2.8:\n%s", build, got.stderr, want.stderr)
			}
		}
	})

	// Logs are bzip2-compressed, and Nix 2.8 reads them.
	t.Run("compressed log", func(t *testing.T) {
		drv := ours("nix-instantiate", file, "-A", "dep").stdout
		base := filepath.Base(drv)
		if _, err := os.Stat(filepath.Join(td.cfg.LogDir, "drvs", base[:2], base[2:]+".bz2")); err != nil {
			t.Errorf("no compressed log: %v", err)
		}
		if r := ours("nix-store", "-l", drv); r.code != 0 || r.stdout != "" {
			t.Errorf("nix-store -l: exit %d %q\n%s", r.code, r.stdout, r.stderr)
		}
		chatty := ours("nix-instantiate", file, "-A", "chatty").stdout
		ours("nix-build", "--no-out-link", file, "-A", "chatty")
		if r := ours("nix-store", "-l", chatty); r.code != 0 || !strings.HasSuffix(r.stdout, "line 499") {
			t.Errorf("nix-store -l chatty: exit %d, %d bytes\n%s", r.code, len(r.stdout), r.stderr)
		}
		if r := ours("nix", "log", chatty); r.code != 0 || !strings.HasPrefix(r.stdout, "line 0\nline 1\n") {
			t.Errorf("nix log chatty: exit %d, %d bytes\n%s", r.code, len(r.stdout), r.stderr)
		}
	})
}
