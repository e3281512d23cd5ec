package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cairn/internal/store/storetest"
	"cairn/internal/testutil/nixtest"
)

// TestLogThroughDaemon: nix-daemon 2.8 builds a derivation (writing its
// log compressed, as compress-build-log says); cairn log, through the
// daemon and on the store directly, prints what nix-store -l prints, for
// the .drv and for its output.
func TestLogThroughDaemon(t *testing.T) {
	nixtest.Require(t, "nix-daemon", "nix-build", "nix-store")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	d := storetest.StartDaemonWith(t, []string{"nix-daemon"}, []string{"--option", "sandbox", "true",
		"--option", "sandbox-paths", "/bin/sh=/bin/busybox"})
	remote := "unix://" + d.Socket + "?root=" + d.Root
	file := filepath.Join(t.TempDir(), "log.nix")
	os.WriteFile(file, []byte(`derivation { name = "logged"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "i=0; while [ $i -lt 300 ]; do echo log line $i; i=$((i+1)); done; echo > $out" ]; }`), 0o644)
	env := []string{"NIX_REMOTE=" + remote, "HOME=" + t.TempDir()}
	out, err := nixtest.OutputEnv(env, "nix-build", "--no-out-link", file)
	if err != nil {
		t.Fatal(err)
	}
	outPath := strings.TrimSpace(string(out))
	drv, err := nixtest.OutputEnv(env, "nix-instantiate", file)
	if err != nil {
		t.Fatal(err)
	}
	drvPath := strings.TrimSpace(string(drv))
	base := filepath.Base(drvPath)
	if _, err := os.Stat(filepath.Join(d.Root, "nix/var/log/nix/drvs", base[:2], base[2:]+".bz2")); err != nil {
		t.Fatalf("nix-daemon wrote no compressed log: %v", err)
	}
	want, err := nixtest.OutputEnv(env, "nix-store", "-l", drvPath)
	if err != nil || !bytes.Contains(want, []byte("log line 299\n")) {
		t.Fatalf("nix-store -l: %q %v", want, err)
	}
	for _, url := range []string{remote, "local?root=" + d.Root} {
		for _, arg := range []string{drvPath, outPath} {
			root := NewRoot()
			var stdout, stderr bytes.Buffer
			root.SetOut(&stdout)
			root.SetErr(&stderr)
			root.SetArgs([]string{"--store", url, "log", arg})
			if err := root.ExecuteContext(context.Background()); err != nil || stdout.String() != string(want) {
				t.Errorf("cairn --store %s log %s: %v %s\n%d bytes, want %d", url, arg, err, stderr.String(), stdout.Len(), len(want))
			}
		}
	}
}
