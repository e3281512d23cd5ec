package storetest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
	buildOut  []byte
)

// BuildCairn builds cmd/cairn from this module once per test binary and
// returns the binary's path.
func BuildCairn(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "cairn-bin-")
		if buildErr != nil {
			return
		}
		root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
		if err != nil {
			buildErr = err
			return
		}
		cmd := exec.Command("go", "build", "-o", filepath.Join(buildDir, "cairn"), "./cmd/cairn")
		cmd.Dir = strings.TrimSpace(string(root))
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("build cairn: %v\n%s", buildErr, buildOut)
	}
	return filepath.Join(buildDir, "cairn")
}
