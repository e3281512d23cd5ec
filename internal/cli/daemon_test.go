package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runDaemonCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := NewRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func TestDaemonVersion(t *testing.T) {
	out, err := runDaemonCLI(t, "daemon", "--version")
	if err != nil {
		t.Fatal(err)
	}
	// Scripts take field 3 of nix-daemon --version as the Nix version.
	f := strings.Fields(out)
	if len(f) < 3 || f[0] != "nix-daemon" || f[1] != "(Nix)" || f[2] != "2.8.0" || !strings.Contains(out, "Cairn") {
		t.Fatalf("version %q", out)
	}
}

func TestDaemonArgs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // error substring; "" for none
	}{
		{[]string{"--store", "local", "--option", "sandbox", "false", "--stdio", "--force-untrusted"}, ""},
		{[]string{"--store=local", "--daemon"}, ""},
		{[]string{"--option", "sandbox"}, "requires 2 argument"},
		{[]string{"--bogus"}, "unrecognised flag '--bogus'"},
		{[]string{"--force-trusted", "--force-untrusted"}, "mutually exclusive"},
		{[]string{"--metrics-listen", "127.0.0.1:0"}, ""},
		{[]string{"--metrics-listen"}, "requires 1 argument"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, err := parseDaemonArgs(tc.args)
			if (err != nil) != (tc.want != "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
	a, _ := parseDaemonArgs([]string{"--option", "a", "b", "--option", "c", "d"})
	if len(a.options) != 2 || a.options[1] != [2]string{"c", "d"} {
		t.Fatalf("options %v", a.options)
	}
}

func TestDaemonErrors(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("NIX_CONF_DIR", dir)
	t.Setenv("NIX_CONFIG", "")
	t.Setenv("LISTEN_FDS", "")
	if _, err := runDaemonCLI(t, "daemon", "--store", "local?root="+dir+"/root", "--option", "no-such-setting", "1"); err == nil ||
		!strings.Contains(err.Error(), "unknown setting 'no-such-setting'") {
		t.Fatalf("unknown option: %v", err)
	}
	// A socket whose directory cannot be made.
	blocker := filepath.Join(dir, "file")
	os.WriteFile(blocker, nil, 0o644)
	t.Setenv("NIX_DAEMON_SOCKET_PATH", filepath.Join(blocker, "sub", "socket"))
	if _, err := runDaemonCLI(t, "daemon", "--store", "local?root="+dir+"/root"); err == nil ||
		!strings.Contains(err.Error(), "cannot create the daemon socket") {
		t.Fatalf("bad socket: %v", err)
	}
	// An unknown nix.conf setting is only a warning: with systemd variables
	// that are not ours the daemon stops before serving.
	os.WriteFile(filepath.Join(dir, "nix.conf"), []byte("no-such-setting = 1\n"), 0o644)
	t.Setenv("LISTEN_FDS", "1")
	t.Setenv("LISTEN_PID", "1")
	out, err := runDaemonCLI(t, "daemon", "--store", "local?root="+dir+"/root")
	if err == nil || !strings.Contains(err.Error(), "unexpected systemd environment variables") {
		t.Fatalf("systemd: %v", err)
	}
	if !strings.Contains(out, "no-such-setting") {
		t.Errorf("no warning for an unknown nix.conf setting: %q", out)
	}
}
