// Package nixtest helps differential tests that run the reference Nix (2.8) binaries.
package nixtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Require skips t unless every tool is on PATH. With CAIRN_REQUIRE_NIX=1 (as in CI)
// a missing tool fails the test instead, so a broken install cannot pass silently.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CAIRN_REQUIRE_NIX") == "1" {
				t.Fatalf("reference tool %s not found: %v", tool, err)
			}
			t.Skipf("reference tool %s not found", tool)
		}
	}
}

// Store is a throwaway chroot store for the reference Nix: a root directory whose
// files live under Root/nix/store while the logical store dir stays /nix/store.
type Store struct {
	Root string
}

// NewStore makes an empty chroot store under t.TempDir().
func NewStore(t testing.TB) *Store {
	t.Helper()
	return &Store{Root: filepath.Join(t.TempDir(), "root")}
}

// URL is the --store argument for this store.
func (s *Store) URL() string { return "local?root=" + s.Root }

// Run runs a Nix command against the store with --store and returns trimmed stdout.
// The command fails the test on a non-zero exit.
func (s *Store) Run(t testing.TB, stdin []byte, name string, args ...string) string {
	t.Helper()
	full := append([]string{"--store", s.URL()}, args...)
	return Run(t, stdin, name, full...)
}

// Run runs a reference tool in a clean environment and returns trimmed stdout.
func Run(t testing.TB, stdin []byte, name string, args ...string) string {
	t.Helper()
	out, err := Output(stdin, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out))
}

// Output runs a reference tool and returns its stdout; a non-zero exit becomes an
// error that carries stderr.
func Output(stdin []byte, name string, args ...string) ([]byte, error) {
	return output(stdin, nil, name, args...)
}

// OutputEnv is Output with extra environment entries, which win over Env's.
func OutputEnv(extraEnv []string, name string, args ...string) ([]byte, error) {
	return output(nil, extraEnv, name, args...)
}

func output(stdin []byte, extraEnv []string, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(Env(), extraEnv...)
	if stdin != nil {
		cmd.Stdin = strings.NewReader(string(stdin))
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Env is the environment for reference tools: the caller's, minus anything that
// would point Nix at a real store or daemon, with a private HOME-less config.
func Env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "NIX_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"NIX_CONFIG=experimental-features = nix-command\nsandbox = false\nsubstituters =\n",
		"NIX_CONF_DIR=/nonexistent",
	)
}
