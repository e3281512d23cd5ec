package daemon

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"cairn/internal/protocol"
	"cairn/internal/testutil/nixtest"
)

const remoteBuildNix = `
let mk = name: script: deps: derivation { inherit name deps; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; };
  dep = mk "daemon-remote-dep" "echo dep > $out" [];
in {
  top = mk "daemon-remote-top" "echo top $deps > $out" [ dep ];
  fails = mk "daemon-remote-fails" "echo going to fail; exit 3" [];
  again = mk "daemon-remote-again" "echo again $deps > $out" [ dep ];
}
`

// TestNixRemoteBuild: a daemon with remote builders (max-jobs 0, so that
// nothing builds here) builds a dependent graph on the machine and fails
// a failing builder there, through cairn daemon as through nix-daemon 2.8:
// the same outputs, and the same stderr (where each build runs, what is
// copied, the builder's log, the failure) but for the machine's store.
func TestNixRemoteBuild(t *testing.T) {
	nixtest.Require(t, "nix-build", "nix-daemon", "nix-store")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "remote.nix")
	os.WriteFile(file, []byte(remoteBuildNix), 0o644)
	// The machines' nix-store --serve, with the sandbox settings.
	serve := serveProgram(t, dir)
	machine := func(name string) string {
		return "ssh://localhost?remote-program=" + serve + "&remote-store=local?root=" + filepath.Join(dir, name) + " x86_64-linux"
	}
	td := newTestDaemon(t, [2]string{"sandbox-paths", "/bin/sh=/bin/busybox"}, [2]string{"max-jobs", "0"},
		[2]string{"builders", machine("ours")})
	ref, refEnv := sandboxedRef(t, "--option", "max-jobs", "0", "--option", "builders", machine("theirs"))
	// The same, but for the machine's name.
	norm := func(s, name string) string { return strings.ReplaceAll(s, filepath.Join(dir, name), "MACHINE") }
	a, b := runNix(td.nixEnv(), "nix-build", "--no-out-link", file, "-A", "top"), runNix(refEnv, "nix-build", "--no-out-link", file, "-A", "top")
	if a.code != 0 || b.code != 0 || a.stdout != b.stdout || norm(a.stderr, "ours") != norm(b.stderr, "theirs") {
		t.Fatalf("nix-build of a graph: exit %d, %q\n%s\nwith nix-daemon: exit %d, %q\n%s", a.code, a.stdout, a.stderr, b.code, b.stdout, b.stderr)
	}
	out := strings.TrimSpace(a.stdout)
	got, _ := os.ReadFile(filepath.Join(td.cfg.Root, out))
	want, _ := os.ReadFile(filepath.Join(ref.Root, out))
	if string(got) != string(want) || !strings.HasPrefix(string(got), "top /nix/store/") {
		t.Errorf("%s holds %q, with nix-daemon %q", out, got, want)
	}
	for _, name := range []string{"ours", "theirs"} {
		if _, err := os.Stat(filepath.Join(dir, name, out)); err != nil {
			t.Errorf("not built on the machine %s: %v", name, err)
		}
	}
	// In the log's JSON, the copies are Nix's CopyPaths activities (the
	// input is on the machine already: "copying 0 paths" there, then the
	// output back).
	copies := func(stderr string) []string {
		var acts []string
		for _, line := range strings.Split(stderr, "\n") {
			var m struct {
				Action string `json:"action"`
				Type   int    `json:"type"`
				Level  int    `json:"level"`
				Text   string `json:"text"`
			}
			if j, ok := strings.CutPrefix(line, "@nix "); ok && json.Unmarshal([]byte(j), &m) == nil && m.Action == "start" && m.Type == int(protocol.ActCopyPaths) && m.Text != "" {
				acts = append(acts, fmt.Sprintf("%d %s", m.Level, m.Text))
			}
		}
		return acts
	}
	a, b = runNix(td.nixEnv(), "nix-build", "--log-format", "internal-json", "--no-out-link", file, "-A", "again"),
		runNix(refEnv, "nix-build", "--log-format", "internal-json", "--no-out-link", file, "-A", "again")
	if x, y := copies(a.stderr), copies(b.stderr); a.code != 0 || b.code != 0 || !slices.Equal(x, y) || len(x) != 2 {
		t.Errorf("CopyPaths activities %q, with nix-daemon %q (exit %d, %d)", x, y, a.code, b.code)
	}
	ours, theirs := runNix(td.nixEnv(), "nix-build", "--no-out-link", file, "-A", "fails"), runNix(refEnv, "nix-build", "--no-out-link", file, "-A", "fails")
	x, y := norm(ours.stderr, "ours"), norm(theirs.stderr, "theirs")
	if ours.code != theirs.code || ours.code == 0 || x != y || !strings.Contains(x, "failed: builder for '") {
		t.Errorf("a failing builder: exit %d, with nix-daemon %d\n%s\nwith nix-daemon:\n%s", ours.code, theirs.code, x, y)
	}

	// The client's own builders (a trusted user's --builders and
	// --max-jobs), the daemon having none.
	plain := newTestDaemon(t, [2]string{"sandbox-paths", "/bin/sh=/bin/busybox"})
	c := runNix(plain.nixEnv(), "nix-build", "--no-out-link", "--max-jobs", "0", "--builders", machine("client"), file, "-A", "top")
	if c.code != 0 || strings.TrimSpace(c.stdout) != out || !strings.Contains(c.stderr, "' on 'ssh://localhost?remote-program=") {
		t.Errorf("nix-build --builders through cairn daemon: exit %d, %q\n%s", c.code, c.stdout, c.stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "client", out)); err != nil {
		t.Errorf("not built on the client's machine: %v", err)
	}
}

// TestRemoteBuildSlots: three clients building at once (max-jobs 0) on a
// machine with one slot: the builds take turns there, the waiting ones say
// so, and each starts as soon as the slot is free.
func TestRemoteBuildSlots(t *testing.T) {
	nixtest.Require(t, "nix-build", "nix-store")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "slots.nix")
	os.WriteFile(file, []byte(`{ n }: derivation { name = "slot-${n}"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "sleep 1; echo ${n} > $out" ]; }`), 0o644)
	serve := serveProgram(t, dir)
	machine := filepath.Join(dir, "machine")
	// Made before the builds: two nix-store processes making a fresh
	// chroot store at once can fail.
	if r := runNix(nil, "nix-store", "--store", "local?root="+machine, "--verify"); r.code != 0 {
		t.Fatalf("nix-store --verify: %+v", r)
	}
	td := newTestDaemon(t, [2]string{"sandbox-paths", "/bin/sh=/bin/busybox"},
		[2]string{"builders", "ssh://localhost?remote-program=" + serve + "&remote-store=local?root=" + machine + " x86_64-linux - 1"})
	start := time.Now()
	results := make(chan nixRun, 3)
	for _, n := range []string{"a", "b", "c"} {
		go func() {
			results <- runNix(td.nixEnv(), "nix-build", "--max-jobs", "0", "--no-out-link", file, "--argstr", "n", n)
		}()
	}
	waited := 0
	for range 3 {
		r := <-results
		if r.code != 0 || !strings.Contains(r.stderr, "' on 'ssh://localhost?remote-program=") {
			t.Errorf("nix-build: exit %d\n%s", r.code, r.stderr)
		}
		if strings.Contains(r.stderr, "waiting for a machine to build '") {
			waited++
		}
	}
	// One at a time: at least three seconds; woken as the slot frees, not
	// after a poll interval.
	if d := time.Since(start); d < 3*time.Second || d > 10*time.Second || waited < 2 {
		t.Errorf("three 1 s builds on one slot took %v; %d waited for the machine", d, waited)
	}
}

// serveProgram writes a machine's remote program into dir: Nix 2.8's
// nix-store (--serve) with the sandbox settings of the tests (the daemons'
// own reach no machine).
func serveProgram(t *testing.T, dir string) string {
	t.Helper()
	serve := filepath.Join(dir, "serve")
	err := os.WriteFile(serve, []byte("#!/bin/sh\nexport NIX_CONFIG='sandbox = true\nsandbox-paths = /bin/sh=/bin/busybox\n"+
		"build-users-group =\nsubstituters ='\nexec nix-store \"$@\"\n"), 0o755)
	if err != nil {
		t.Fatal(err)
	}
	return serve
}
