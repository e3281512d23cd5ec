//go:build linux

package sandbox_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cairn/internal/sandbox"
)

// TestHostCommand: a command run on the host through init has exactly its
// environment, no_new_privs and the seccomp filter: it cannot make setuid
// or setgid files.
func TestHostCommand(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	if err := os.WriteFile(f, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	script := `env; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status
chmod 4755 ` + f + ` && echo setuid ok; chmod 2755 ` + f + ` && echo setgid ok; chmod 0700 ` + f + ` && echo plain ok`
	cmd, err := sandbox.HostCommand(context.Background(), sandbox.Command{
		Path: "/bin/busybox", Args: []string{"sh", "-c", script}, Env: []string{"PATH=/path-not-set", "X=1"}})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	got := out.String()
	for _, want := range []string{"PATH=/path-not-set\n", "X=1\n", "NoNewPrivs:\t1\n", "Seccomp:\t2\n", "plain ok\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	for _, bad := range []string{"CAIRN_SANDBOX", "setuid ok", "setgid ok", "GOGC"} {
		if strings.Contains(got, bad) {
			t.Errorf("output has %q:\n%s", bad, got)
		}
	}
	if fi, err := os.Stat(f); err != nil || fi.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 || fi.Mode().Perm() != 0o700 {
		t.Errorf("file mode %v, %v", fi.Mode(), err)
	}
}
