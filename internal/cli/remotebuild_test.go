package cli

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

const remoteNix = `
let mk = name: script: deps: derivation { inherit name deps; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; };
  dep = mk "remote-dep" "echo dep > $out" [];
in {
  top = mk "remote-top" "echo top $deps > $out" [ dep ];
  fails = mk "remote-fails" "echo going to fail; exit 3" [];
  feat = derivation { name = "remote-feat"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo x > $out" ]; requiredSystemFeatures = [ "big" ]; };
  here = derivation { name = "remote-here"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo here > $out" ]; preferLocalBuild = true; };
}
`

// TestRemoteBuildAgainstNix: cairn build with remote builders against
// nix-build with the same builders, each on its own chroot store, the
// machines being Nix's own nix-store --serve on localhost (which both run
// without ssh) and nix-daemon --stdio for ssh-ng://, then Cairn's own as
// the machines' programs (cairn store serve, cairn daemon --stdio): the
// same outputs and metadata here and there, the same slot lock files, the
// same stderr, byte for byte but for the machine's store, for a graph built
// there, a failing build, a derivation no machine can take and a machine
// that cannot be reached, and a local build for a derivation that prefers
// one.
func TestRemoteBuildAgainstNix(t *testing.T) {
	dir, bin, file, cmds := againstNix(t, "remote.nix", remoteNix, "", "nix", "nix-store", "nix-build", "nix-instantiate")
	run, must := cmds.run, cmds.must
	type side struct{ name, local, remote string }
	sides := []*side{{name: "nix"}, {name: "cairn"}}
	for _, s := range sides {
		s.local = "local?root=" + filepath.Join(dir, s.name+"-local")
		s.remote = filepath.Join(dir, s.name+"-remote")
	}
	builder := func(s *side, extra string) string {
		return "ssh://localhost?remote-store=local?root=" + s.remote + " x86_64-linux" + extra
	}
	// build runs either tool's build of attr with max-jobs and builders.
	build := func(s *side, attr, maxJobs, builders string) (string, string, int) {
		if s.name == "nix" {
			return run("nix-build", "--store", s.local, "--max-jobs", maxJobs, "--builders", builders, "--no-out-link", file, "-A", attr)
		}
		drv := must("nix-instantiate", "--store", s.local, file, "-A", attr)
		return run(bin, "--store", s.local, "build", "--option", "max-jobs", maxJobs, "--option", "builders", builders, drv)
	}
	regTime := regexp.MustCompile(`"registrationTime":[0-9]+`)
	both := func(what string, check func(s *side) string) {
		t.Helper()
		a, b := check(sides[0]), check(sides[1])
		if a, b = regTime.ReplaceAllString(a, ""), regTime.ReplaceAllString(b, ""); a != b || a == "" {
			t.Errorf("%s:\nnix-build:\n%s\ncairn build:\n%s", what, a, b)
		}
	}
	both("a dependent graph built remotely", func(s *side) string {
		out, errOut, code := build(s, "top", "0", builder(s, ""))
		log := strings.ReplaceAll(errOut, s.remote, "REMOTE")
		if code != 0 || !strings.Contains(errOut, "' on 'ssh://localhost?remote-store=local?root="+s.remote+"'") {
			t.Errorf("%s: exit %d, no build on the machine:\n%s", s.name, code, errOut)
		}
		here := must("nix", "path-info", "--store", s.local, "--json", "-r", out)
		there := must("nix", "path-info", "--store", "local?root="+s.remote, "--json", "-r", out)
		contents := must("nix", "store", "cat", "--store", s.local, out)
		load, _ := os.ReadDir(filepath.Join(strings.TrimPrefix(s.local, "local?root="), "nix/var/nix/current-load"))
		var names []string
		for _, e := range load {
			names = append(names, strings.ReplaceAll(e.Name(), strings.ReplaceAll(s.remote, "/", "_"), "REMOTE"))
		}
		slices.Sort(names)
		return strings.Join([]string{out, contents, here, there, strings.Join(names, " "), log}, "\n")
	})
	both("a builder that fails there", func(s *side) string {
		_, errOut, code := build(s, "fails", "0", builder(s, ""))
		if !strings.Contains(errOut, "going to fail") {
			t.Errorf("%s: no builder output:\n%s", s.name, errOut)
		}
		return strings.ReplaceAll(errOut, s.remote, "REMOTE") + "\nexit " + string(rune('0'+code))
	})
	both("no machine with the features", func(s *side) string {
		// Also a parse of three machines, as Nix prints them.
		b := builder(s, ",i686-linux - 2 3 kvm,foo,kvm bar ; localhost2 - - 0")
		_, errOut, code := build(s, "feat", "0", b)
		return strings.ReplaceAll(errOut, s.remote, "REMOTE") + "\nexit " + string(rune('0'+code))
	})
	both("a machine that cannot be reached", func(s *side) string {
		_, errOut, code := build(s, "fails", "0", "ssh://localhost?remote-program=/nonexistent/prog x86_64-linux")
		return errOut + "\nexit " + string(rune('0'+code))
	})
	both("the graph on an ssh-ng:// machine (nix-daemon --stdio)", func(s *side) string {
		ng := strings.Replace(builder(s, ""), "ssh://", "ssh-ng://", 1)
		ng = strings.Replace(ng, s.remote, s.remote+"-ng", 1)
		l := s.local
		s.local += "-ng"
		defer func() { s.local = l }()
		out, errOut, code := build(s, "top", "0", ng)
		if code != 0 || !strings.Contains(errOut, "' on 'ssh-ng://localhost?remote-store=") {
			t.Errorf("%s: exit %d, no build on the ssh-ng machine:\n%s", s.name, code, errOut)
		}
		return strings.Join([]string{out, must("nix", "path-info", "--store", s.local, "--json", "-r", out),
			must("nix", "path-info", "--store", "local?root="+s.remote+"-ng", "--json", "-r", out)}, "\n")
	})
	// Cairn at both ends: cairn store serve (ssh://) and cairn daemon
	// --stdio (ssh-ng://) as the machines' programs.
	for _, scheme := range []string{"ssh", "ssh-ng"} {
		both("the graph on a "+scheme+":// machine running Cairn", func(s *side) string {
			program := bin + " store serve"
			if scheme == "ssh-ng" {
				program = bin + " daemon"
			}
			machine := filepath.Join(dir, s.name+"-cairn-"+scheme)
			b := scheme + "://localhost?remote-program=" + strings.ReplaceAll(program, " ", "%20") +
				"&remote-store=local?root=" + machine + " x86_64-linux"
			l := s.local
			s.local += "-to-cairn-" + scheme
			defer func() { s.local = l }()
			out, errOut, code := build(s, "top", "0", b)
			if code != 0 || !strings.Contains(errOut, "' on '"+scheme+"://localhost?remote-program=") {
				t.Errorf("%s: exit %d, no build on the machine:\n%s", s.name, code, errOut)
			}
			return strings.Join([]string{out, must("nix", "path-info", "--store", s.local, "--json", "-r", out),
				must("nix", "path-info", "--store", "local?root="+machine, "--json", "-r", out)}, "\n")
		})
	}
	both("a derivation that prefers a local build", func(s *side) string {
		out, errOut, code := build(s, "here", "1", builder(s, ""))
		if code != 0 || strings.Contains(errOut, " on 'ssh://") {
			t.Errorf("%s: exit %d, built remotely or not at all:\n%s", s.name, code, errOut)
		}
		return must("nix", "path-info", "--store", s.local, "--json", out)
	})
}

// TestLocalFailureAgainstNix: a builder failing here reads as nix-build's
// failure: what will be built, its log as it came, then the error without
// a quoted tail, and the same exit status.
func TestLocalFailureAgainstNix(t *testing.T) {
	dir, bin, file, cmds := againstNix(t, "remote.nix", remoteNix, "", "nix-build", "nix-instantiate")
	_, nixErr, nixCode := cmds.run("nix-build", "--store", "local?root="+filepath.Join(dir, "nix"), "--no-out-link", file, "-A", "fails")
	drv := cmds.must("nix-instantiate", "--store", "local?root="+filepath.Join(dir, "cairn-store"), file, "-A", "fails")
	_, cairnErr, cairnCode := cmds.run(bin, "--store", "local?root="+filepath.Join(dir, "cairn-store"), "build", drv)
	if nixCode != cairnCode || nixErr != cairnErr || !strings.Contains(cairnErr, "going to fail") {
		t.Errorf("nix-build: exit %d\n%s\ncairn build: exit %d\n%s", nixCode, nixErr, cairnCode, cairnErr)
	}
}

// TestRemoteBuildCancel: interrupting cairn build while its derivation
// builds on a machine stops the build there too (nix-store --serve is
// asked to stop, and stops its builder), and frees the machine's slot.
func TestRemoteBuildCancel(t *testing.T) {
	// A marker no other builder runs, not even this test's in another
	// checkout.
	marker := fmt.Sprintf("sleep %d", 3000+os.Getpid()%1000)
	dir, bin, file, cmds := againstNix(t, "sleeper.nix", `derivation { name = "remote-sleeper"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo sleeping; `+marker+`; echo > $out" ]; }`, "", "nix-store", "nix-instantiate")
	env := cmds.env
	local, machine := "local?root="+filepath.Join(dir, "local"), "local?root="+filepath.Join(dir, "machine")
	drv := cmds.must("nix-instantiate", "--store", local, file)
	builders := "ssh://localhost?remote-store=" + machine + " x86_64-linux"
	cmd := exec.Command(bin, "--store", local, "build", "--option", "max-jobs", "0", "--option", "builders", builders, drv)
	cmd.Env = env
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	var seen []string
	for sc.Scan() {
		if seen = append(seen, sc.Text()); sc.Text() == "sleeping" {
			break
		}
	}
	running := func() bool {
		out, _ := exec.Command("pgrep", "-f", marker).Output()
		return len(strings.TrimSpace(string(out))) > 0
	}
	if !running() {
		cmd.Process.Kill()
		t.Fatalf("the builder does not run on the machine:\n%s", strings.Join(seen, "\n"))
	}
	cmd.Process.Signal(os.Interrupt)
	go io.Copy(io.Discard, stderr)
	if err := cmd.Wait(); err == nil {
		t.Error("an interrupted build succeeded")
	}
	deadline := time.Now().Add(10 * time.Second)
	for running() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if running() {
		exec.Command("pkill", "-f", marker).Run()
		t.Fatal("the builder still runs on the machine after the interrupt")
	}
	// The slot is free again: the next build gets it at once.
	os.WriteFile(file, []byte(`derivation { name = "remote-quick"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo > $out" ]; }`), 0o644)
	quick := cmds.must("nix-instantiate", "--store", local, file)
	if _, errOut, code := cmds.run(bin, "--store", local, "build", "--option", "max-jobs", "0", "--option", "builders", builders, quick); code != 0 {
		t.Errorf("a build after the interrupt: exit %d\n%s", code, errOut)
	}
}
