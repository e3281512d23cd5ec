package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cairn/internal/store/storetest"
	"cairn/internal/testutil/nixtest"
)

// TestNixSubstituteFailures: Nix 2.8's nix-store -r through cairn daemon and
// nix-daemon 2.8 against a cache whose narinfos are unsigned (require-sigs
// refuses them) and one whose NARs are damaged: both fail, nothing becomes
// valid, and with the damaged cache a derivation is built only with
// --fallback.
func TestNixSubstituteFailures(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix", "nix-instantiate", "nix-daemon")
	sc := makeSubstCache(t)
	// Unsigned: the narinfos without their Sig lines.
	unsigned := filepath.Join(t.TempDir(), "unsigned")
	if out, err := nixtest.Output(nil, "cp", "-a", sc.dir, unsigned); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	damaged := filepath.Join(t.TempDir(), "damaged")
	if out, err := nixtest.Output(nil, "cp", "-a", sc.dir, damaged); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	ents, _ := os.ReadDir(unsigned)
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".narinfo") {
			continue
		}
		name := filepath.Join(unsigned, e.Name())
		data, _ := os.ReadFile(name)
		var keep []string
		for _, l := range strings.Split(string(data), "\n") {
			if !strings.HasPrefix(l, "Sig: ") {
				keep = append(keep, l)
			}
		}
		os.Chmod(name, 0o644)
		os.WriteFile(name, []byte(strings.Join(keep, "\n")), 0o644)
	}
	nars, _ := filepath.Glob(filepath.Join(damaged, "nar", "*"))
	for _, n := range nars {
		data, _ := os.ReadFile(n)
		os.Chmod(n, 0o644)
		os.WriteFile(n, data[:len(data)/2], 0o644)
	}
	for _, tc := range []struct{ name, cache string }{{"unsigned", unsigned}, {"damaged", damaged}} {
		t.Run(tc.name, func(t *testing.T) {
			cache := "file://" + tc.cache
			td := newTestDaemon(t, [2]string{"substituters", cache}, [2]string{"trusted-public-keys", sc.pub},
				[2]string{"sandbox-paths", "/bin/sh=/bin/busybox"})
			ref := storetest.StartDaemonWith(t, []string{"nix-daemon"}, []string{"--option", "substituters", cache,
				"--option", "trusted-public-keys", sc.pub})
			clientConf := "NIX_CONFIG=experimental-features = nix-command\nsandbox = false\nsubstituters = " + cache + "\n"
			refEnv := nixDaemonClientEnv(ref, clientConf)
			ourEnv := append(td.nixEnv(), clientConf)
			for _, args := range [][]string{{"-r", sc.top}} {
				o, n := runNix(ourEnv, "nix-store", args...), runNix(refEnv, "nix-store", args...)
				t.Logf("nix-store %v:\ncairn %d\n%s\nnix-daemon %d\n%s", args, o.code, o.stderr, n.code, n.stderr)
				if o.code == 0 || n.code == 0 || o.code != n.code {
					t.Errorf("exit codes: cairn %d, nix-daemon %d", o.code, n.code)
				}
				if lastLine(o.stderr) != lastLine(n.stderr) {
					t.Errorf("last line: cairn %q, nix-daemon %q", lastLine(o.stderr), lastLine(n.stderr))
				}
			}
			// A derivation whose output the cache has: its substitution
			// fails, and only --fallback builds it (its builder fails).
			drv := runNix(ourEnv, "nix-instantiate", "--expr", sc.drvExpr)
			if drvN := runNix(refEnv, "nix-instantiate", "--expr", sc.drvExpr); drv.code != 0 || drv.stdout != drvN.stdout {
				t.Fatalf("nix-instantiate: %+v %+v", drv, drvN)
			}
			o, n := runNix(ourEnv, "nix-store", "-r", drv.stdout), runNix(refEnv, "nix-store", "-r", drv.stdout)
			t.Logf("nix-store -r drv:\ncairn %d\n%s\nnix-daemon %d\n%s", o.code, o.stderr, n.code, n.stderr)
			switch tc.name {
			case "unsigned": // as if the cache did not have it: built (the builder fails)
				built := "builder for '" + drv.stdout + "' failed"
				if o.code != n.code || !strings.Contains(o.stderr, built) || !strings.Contains(n.stderr, built) {
					t.Errorf("derivation: cairn %d, nix-daemon %d, want both %q", o.code, n.code, built)
				}
			default:
				if o.code != n.code || lastLine(o.stderr) != lastLine(n.stderr) {
					t.Errorf("derivation: cairn %d %q, nix-daemon %d %q", o.code, lastLine(o.stderr), n.code, lastLine(n.stderr))
				}
			}
			if tc.name == "damaged" {
				if !strings.Contains(o.stderr, "try '--fallback'") || strings.Contains(o.stderr, "building '") {
					t.Errorf("without --fallback:\n%s", o.stderr)
				}
				o := runNix(ourEnv, "nix-store", "-r", "--fallback", drv.stdout)
				if o.code == 0 || !strings.Contains(o.stderr, "building '"+drv.stdout+"'") {
					t.Errorf("with --fallback: %d\n%s", o.code, o.stderr)
				}
			}
			if out, err := nixtest.Output(nil, "nix-store", "--store", "local?root="+td.cfg.Root, "--check-validity", sc.top); err == nil {
				t.Errorf("%s valid after a failed substitution: %s", sc.top, out)
			}
		})
	}
}
