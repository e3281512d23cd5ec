package config

import (
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"cairn/internal/testutil/nixtest"
)

func TestKnown(t *testing.T) {
	for _, name := range []string{
		"sandbox", "build-use-sandbox", "extra-sandbox-paths", "extra-extra-sandbox-paths"[6:],
		"experimental-features", "flake-registry", "extra-experimental-features", "trusted-users",
		"build-max-jobs", "use-case-hack", "ssh-auth-sock", "extra-substituters", "extra-trusted-public-keys",
	} {
		if !Known(name) {
			t.Errorf("Known(%q) = false", name)
		}
	}
	for _, name := range []string{"no-such-setting", "extra-", "extra-no-such", "sandboxx", ""} {
		if Known(name) {
			t.Errorf("Known(%q) = true", name)
		}
	}
	if got := Canonical("build-max-jobs"); got != "max-jobs" {
		t.Errorf("Canonical(build-max-jobs) = %q", got)
	}
}

func TestSet(t *testing.T) {
	s := New()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.Set("build-max-jobs", "4"))
	if s.Int("max-jobs") != 4 {
		t.Errorf("max-jobs = %q after setting its alias", s.Get("max-jobs"))
	}
	must(s.Set("sandbox-paths", "/bin/sh=/bin/busybox"))
	must(s.Set("extra-substituters", "file:///cache"))
	if got := s.Strings("substituters"); len(got) != 2 || got[1] != "file:///cache" {
		t.Errorf("substituters = %q", got)
	}
	// extra-sandbox-paths is a setting of its own in Nix (the builder merges the two),
	// so it does not append to sandbox-paths.
	must(s.Set("build-extra-chroot-dirs", "/etc/x?"))
	if got := s.Strings("sandbox-paths"); len(got) != 1 || s.Get("extra-sandbox-paths") != "/etc/x?" {
		t.Errorf("sandbox-paths = %q, extra-sandbox-paths = %q", got, s.Get("extra-sandbox-paths"))
	}
	must(s.Set("sandbox", "relaxed"))
	must(s.Set("keep-failed", "yes"))
	if !s.Bool("keep-failed") {
		t.Error("keep-failed = yes is not true")
	}
	must(s.Set("min-free", "1G"))
	if s.Int("min-free") != 1<<30 {
		t.Errorf("min-free = %d", s.Int("min-free"))
	}
	for _, bad := range [][2]string{{"keep-failed", "maybe"}, {"max-jobs", "lots"}, {"sandbox", "sometimes"}, {"cores", "x"}} {
		if err := s.Set(bad[0], bad[1]); err == nil || errors.Is(err, ErrUnknown) {
			t.Errorf("Set(%q, %q) = %v, want a value error", bad[0], bad[1], err)
		}
	}
	if err := s.Set("no-such-setting", "1"); !errors.Is(err, ErrUnknown) {
		t.Errorf("unknown setting: %v", err)
	}
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// confText exercises comments, spacing, includes, extra- and aliases.
const confText = `# a comment
trusted-users = root   alice  # trailing comment
build-max-silent-time = 30
extra-trusted-users = @wheel
experimental-features = nix-command flakes
include sub/more.conf
!include missing.conf
substituters =
`

func TestApplyFile(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "nix.conf"), confText+"no-such-setting = 1\n")
	writeFile(t, filepath.Join(dir, "sub", "more.conf"), "max-jobs = auto\nextra-system-features = uid-range\n")
	var warnings []string
	s := New()
	if err := s.ApplyFile(filepath.Join(dir, "nix.conf"), func(w string) { warnings = append(warnings, w) }); err != nil {
		t.Fatal(err)
	}
	checks := map[string]string{
		"trusted-users":   "root alice @wheel",
		"max-silent-time": "30",
		"max-jobs":        "auto",
		"system-features": "benchmark big-parallel kvm nixos-test uid-range",
		"substituters":    "",
	}
	for name, want := range checks {
		if got := s.Get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	if len(warnings) != 1 || warnings[0] != "unknown setting 'no-such-setting'" {
		t.Errorf("warnings = %q", warnings)
	}
}

func TestApplyFileErrors(t *testing.T) {
	for name, text := range map[string]string{
		"no equals":       "trusted-users root\n",
		"lone word":       "trusted-users\n",
		"missing include": "include nowhere.conf\n",
		"bad bool":        "keep-going = perhaps\n",
		"include cycle":   "include nix.conf\n",
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, filepath.Join(dir, "nix.conf"), text)
			if err := New().ApplyFile(filepath.Join(dir, "nix.conf"), nil); err == nil {
				t.Errorf("no error for %q", text)
			} else if !strings.Contains(err.Error(), "nix.conf") {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
}

func TestLoadOrder(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "etc", "nix.conf"), "max-jobs = 2\ncores = 3\ntimeout = 9\n")
	writeFile(t, filepath.Join(dir, "user1.conf"), "cores = 5\n")
	writeFile(t, filepath.Join(dir, "user2.conf"), "cores = 4\ntimeout = 8\n")
	env := map[string]string{
		"NIX_CONF_DIR":        filepath.Join(dir, "etc"),
		"NIX_USER_CONF_FILES": filepath.Join(dir, "user1.conf") + ":" + filepath.Join(dir, "user2.conf"),
		"NIX_CONFIG":          "max-jobs = 7",
	}
	s, err := Load(func(k string) string { return env[k] }, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Earlier user files win over later ones; NIX_CONFIG wins over all files.
	for name, want := range map[string]string{"max-jobs": "7", "cores": "5", "timeout": "8"} {
		if got := s.Get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
}

// TestAgainstNix loads the same configuration into Nix 2.8 and compares the values
// it reports, and checks that every setting Nix 2.8 shows is known.
func TestAgainstNix(t *testing.T) {
	nixtest.Require(t, "nix")
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "nix.conf"), confText)
	writeFile(t, filepath.Join(dir, "sub", "more.conf"), "max-jobs = 3\nextra-system-features = uid-range\n")
	s := New()
	if err := s.ApplyFile(filepath.Join(dir, "nix.conf"), nil); err != nil {
		t.Fatal(err)
	}
	out, err := nixtest.OutputEnv([]string{"NIX_CONF_DIR=" + dir, "NIX_USER_CONF_FILES=/nonexistent", "NIX_CONFIG="},
		"nix", "--extra-experimental-features", "nix-command", "show-config")
	if err != nil {
		t.Fatal(err)
	}
	shown := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		name, value, _ := strings.Cut(line, " = ")
		shown[name] = value
		if !Known(name) {
			t.Errorf("Nix 2.8 knows %q, Cairn does not", name)
		}
	}
	names := []string{"trusted-users", "max-silent-time", "max-jobs", "system-features", "substituters", "system"}
	// The defaults Cairn keeps, but those of the machine it runs on.
	for name := range defaults {
		// (netrc-file and builders follow NIX_CONF_DIR: Load sets them.)
		if name != "netrc-file" && name != "builders" && Known(name) && shown[name] != "" {
			names = append(names, name)
		}
	}
	// extra-platforms: Nix 2.8 asks libcpuid for the CPU's features, and
	// Debian's libcpuid 0.6 misses AVX-512 on AMD CPUs, so Nix may stop a
	// level short of Cairn (which reads /proc/cpuinfo); below it they agree.
	if n, c := shown["extra-platforms"], s.Get("extra-platforms"); n != c && !strings.HasPrefix(c, n+" x86_64-v4-linux") {
		t.Errorf("extra-platforms: Nix %q, Cairn %q", n, c)
	}
	// Nix 2.8's default for root is nixbld, group or no group; Cairn's only
	// when the group exists (see rootBuildUsers).
	if _, err := user.LookupGroup(rootBuildUsersGroup); err == nil || os.Geteuid() != 0 {
		names = append(names, "build-users-group")
	}
	for _, name := range names {
		if shown[name] != s.Get(name) {
			t.Errorf("%s: Nix %q, Cairn %q", name, shown[name], s.Get(name))
		}
	}
}

// TestLineSyntaxAgainstNix gives Nix 2.8 and Cairn the same odd
// configuration lines (through NIX_CONFIG for Nix) and checks that both
// refuse the same ones and read the same value from the others.
func TestLineSyntaxAgainstNix(t *testing.T) {
	nixtest.Require(t, "nix")
	lines := []string{
		"cores = 3", "cores\t=\t5", "cores = 3\r", "  cores   =   7  # a comment",
		"cores\v= 3", "cores =\f3", "cores\u00a0= 3", "cores = \u00a03", "cores=3", "cores =",
		"cores = 3 4", "# only a comment", "cores", "= 3",
	}
	for _, line := range lines {
		out, err := nixtest.OutputEnv([]string{"NIX_CONF_DIR=/nonexistent", "NIX_USER_CONF_FILES=/nonexistent", "NIX_CONFIG=" + line},
			"nix", "--extra-experimental-features", "nix-command", "show-config")
		nixValue, nixErr := "", err != nil
		for _, l := range strings.Split(string(out), "\n") {
			if v, ok := strings.CutPrefix(l, "cores = "); ok {
				nixValue = v
			}
		}
		s := New()
		cerr := s.ApplyText(line, "NIX_CONFIG", nil)
		if (cerr != nil) != nixErr {
			t.Errorf("%q: Cairn error %v, Nix error %v", line, cerr, err)
			continue
		}
		if !nixErr && s.Get("cores") != nixValue {
			t.Errorf("%q: Cairn cores %q, Nix %q", line, s.Get("cores"), nixValue)
		}
	}
}

func TestX86Levels(t *testing.T) {
	v1 := "fpu cx8 cmov mmx fxsr sse sse2"
	v2 := v1 + " pni ssse3 cx16 sse4_1 sse4_2 popcnt lahf_lm"
	v3 := v2 + " avx f16c fma abm movbe avx2"
	for flags, want := range map[string]string{
		"":               "",
		"fpu cx8":        "",
		v1:               "x86_64-v1",
		v2:               "x86_64-v1 x86_64-v2",
		v2 + " avx avx2": "x86_64-v1 x86_64-v2",
		v3:               "x86_64-v1 x86_64-v2 x86_64-v3",
		v3 + " avx512f":  "x86_64-v1 x86_64-v2 x86_64-v3",
		v3 + " avx512f avx512bw avx512cd avx512dq avx512vl": "x86_64-v1 x86_64-v2 x86_64-v3 x86_64-v4",
	} {
		cpuinfo := "processor\t: 0\nflags\t\t: " + flags + "\nbugs\t\t: x\n\nprocessor\t: 1\nflags\t\t: avx512f\n"
		if got := strings.Join(x86Levels(cpuFlags(cpuinfo)), " "); got != want {
			t.Errorf("%q: %q, want %q", flags, got, want)
		}
	}
}
