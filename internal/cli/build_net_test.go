package cli

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"cairn/internal/derivation"
	"cairn/internal/nixhash"
	"cairn/internal/sandbox"
	"cairn/internal/storepath"
	"cairn/internal/testutil/testuser"
)

// TestBuildFixedOutputRootless runs `cairn build` (no daemon) on a
// fixed-output derivation that downloads from an HTTP server on the host's
// loopback, as an unprivileged user when the test runs as root, with each
// installed network stack.
func TestBuildFixedOutputRootless(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	var stacks []string
	for _, tool := range []string{sandbox.NetPasta, sandbox.NetSlirp4netns} {
		if _, err := sandbox.LookNet(tool, true); err == nil {
			stacks = append(stacks, tool)
		}
	}
	if len(stacks) == 0 {
		if os.Getenv("CAIRN_REQUIRE_NIX") == "1" {
			t.Fatal("neither pasta nor slirp4netns is installed")
		}
		t.Skip("neither pasta nor slirp4netns is installed")
	}
	const content = "fetched by cairn build\n"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, content) }))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())

	tmp := t.TempDir()
	os.Chmod(tmp, 0o755)
	os.Chmod(filepath.Dir(tmp), 0o755) // t.TempDir's parent is 0700
	bin := cairnBinary(t, tmp)
	home := filepath.Join(tmp, "home")
	if err := os.Mkdir(home, 0o755); err != nil {
		t.Fatal(err)
	}
	var cred *syscall.Credential
	if os.Getuid() == 0 {
		uid, gid := exampleUser(t)
		if err := os.Chown(home, uid, gid); err != nil {
			t.Fatal(err)
		}
		if err := testuser.EnsureTun(); err != nil {
			t.Fatal(err)
		}
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}

	for _, stack := range stacks {
		t.Run(stack, func(t *testing.T) {
			// A derivation per stack: each is built, not found valid.
			name := "fetched-with-" + stack
			d := &derivation.Derivation{
				Name:     name,
				Outputs:  map[string]derivation.Output{"out": derivation.FixedOutput(storepath.StorePath{}, nixhash.ContentAddress{Method: nixhash.Flat, Hash: nixhash.Sum(nixhash.SHA256, []byte(content))})},
				Platform: "x86_64-linux", Builder: "/bin/sh",
				Args: []string{"-c", "set -e; grep -q 'nameserver " + sandbox.NetDNS + "' /etc/resolv.conf; grep -q " + sandbox.NetInterface +
					": /proc/net/dev; wget -q -O $out http://" + sandbox.NetGateway + ":" + port + "/" + stack},
				Env: map[string]string{"name": name, "builder": "/bin/sh", "system": "x86_64-linux", "out": ""},
			}
			if err := d.FillOutputs(storepath.DefaultStoreDir, nil, nil); err != nil {
				t.Fatal(err)
			}
			drvPath, err := d.StorePath(storepath.DefaultStoreDir)
			if err != nil {
				t.Fatal(err)
			}
			var js bytes.Buffer
			if err := derivation.WriteJSON(&js, map[storepath.StorePath]*derivation.Derivation{drvPath: d}); err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(tmp, name+".json")
			if err := os.WriteFile(file, js.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(bin, "build", "--store", "local?root="+filepath.Join(home, "store"),
				"--option", "sandbox-paths", "/bin/sh=/bin/busybox", "--option", "fixed-output-network", stack, file)
			cmd.Env = []string{"HOME=" + home, "PATH=/usr/bin:/bin", "NIX_CONF_DIR=" + home}
			cmd.Dir = tmp
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				if strings.Contains(stderr.String(), "setting up the build environment") && !strings.Contains(stderr.String(), "network") {
					t.Skipf("the kernel refuses the sandbox: %s", &stderr)
				}
				t.Fatalf("cairn build: %v\n%s", err, &stderr)
			}
			out := strings.TrimSpace(stdout.String())
			if out != d.Outputs["out"].Path.String() {
				t.Fatalf("cairn build printed %q, want %s", out, d.Outputs["out"].Path)
			}
			if got, err := os.ReadFile(filepath.Join(home, "store", out)); err != nil || string(got) != content {
				t.Errorf("output %q %v", got, err)
			}
		})
	}
}
