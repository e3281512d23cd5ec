package daemon

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"cairn/internal/nar"
	"cairn/internal/nixhash"
	"cairn/internal/sandbox"
	"cairn/internal/testutil/escape"
	"cairn/internal/testutil/nixtest"
)

// fodNix fetches with busybox wget from the test's HTTP server on the host's
// loopback, reached as the sandbox's gateway; each builder first checks the
// network it sees.
const fodNix = `
{ url, flatHash, narHash, wrongHash, escapeName, escapeHash, checks }:
let
  sh = "/bin/sh";
  fixed = name: mode: hash: args: derivation {
    inherit name args; system = builtins.currentSystem; builder = sh;
    outputHashMode = mode; outputHashAlgo = "sha256"; outputHash = hash;
  };
in {
  flat = fixed "fetched-flat" "flat" flatHash [ "-c" "${checks} wget -q -O $out ${url}/flat" ];
  recursive = fixed "fetched-recursive" "recursive" narHash [ "-c" "${checks} mkdir $out; wget -q -O $out/file ${url}/recursive" ];
  mismatch = fixed "fetched-mismatch" "flat" wrongHash [ "-c" "wget -q -O $out ${url}/mismatch" ];
  escape = derivation {
    name = "escape"; system = builtins.currentSystem; builder = "/escape"; args = [ escapeName ];
    outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = escapeHash;
  };
  offline = derivation {
    name = "offline"; system = builtins.currentSystem; builder = sh;
    args = [ "-c" "set -e; test $(grep -c : /proc/net/dev) = 1; test ! -e /etc/resolv.conf; if wget -q -O /tmp/x ${url}/offline; then echo reached the host; exit 1; fi; echo offline > $out" ];
  };
}
`

// TestNixFixedOutputNetwork builds fixed-output derivations that download
// from the host's loopback with Nix 2.8's nix-build through the daemon:
// flat and recursive, a hash mismatch, an attempt to pass a descriptor out
// through an abstract Unix socket, and a derivation that is not fixed-output
// and must reach nothing.
func TestNixFixedOutputNetwork(t *testing.T) {
	nixtest.Require(t, "nix-build")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	if _, err := sandbox.LookNet("auto", true); err != nil {
		if os.Getenv("CAIRN_REQUIRE_NIX") == "1" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	const content = "fetched through cairn daemon\n"
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.URL.Path)
		mu.Unlock()
		fmt.Fprint(w, content)
	}))
	defer srv.Close()
	requests := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	esc := escape.Listen(t)
	bin := escape.Binary(t)

	td := newTestDaemon(t, [2]string{"sandbox-paths", "/bin/sh=/bin/busybox /escape=" + bin})
	file := filepath.Join(t.TempDir(), "fod.nix")
	if err := os.WriteFile(file, []byte(fodNix), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "tree")
	os.Mkdir(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "file"), []byte(content), 0o644)
	nh := nixhash.NewHasher(nixhash.SHA256)
	if err := nar.Dump(nh, dir, nar.DumpOptions{}); err != nil {
		t.Fatal(err)
	}
	flat := nixhash.Sum(nixhash.SHA256, []byte(content))
	wrong := nixhash.Sum(nixhash.SHA256, []byte("not what the server sends\n"))
	checks := "set -e; grep -q " + sandbox.NetInterface + ": /proc/net/dev; grep -q 'nameserver " + sandbox.NetDNS + "' /etc/resolv.conf; test -s /etc/services;"
	build := func(attr string) (string, string, error) {
		return td.nixOut("nix-build", "--no-out-link", file, "-A", attr,
			"--argstr", "url", "http://"+sandbox.NetGateway+":"+port,
			"--argstr", "flatHash", flat.SRI(), "--argstr", "narHash", nh.Sum().SRI(), "--argstr", "wrongHash", wrong.SRI(),
			"--argstr", "escapeName", esc.Name, "--argstr", "escapeHash", nixhash.Sum(nixhash.SHA256, []byte(escape.Output)).SRI(),
			"--argstr", "checks", checks)
	}

	for _, attr := range []string{"flat", "recursive"} {
		out, stderr, err := build(attr)
		if err != nil {
			if strings.Contains(stderr, "setting up the build environment") {
				t.Skipf("the kernel refuses the sandbox: %s", stderr)
			}
			t.Fatalf("nix-build %s: %v\n%s", attr, err, stderr)
		}
		p := filepath.Join(td.cfg.Root, out)
		if attr == "recursive" {
			p = filepath.Join(p, "file")
		}
		if got, err := os.ReadFile(p); err != nil || string(got) != content {
			t.Errorf("%s: %q %v", attr, got, err)
		}
		if got := td.nix(t, "nix-store", "-q", "--hash", out); got != mustNarHash(t, filepath.Join(td.cfg.Root, out)) {
			t.Errorf("%s: registered NAR hash %s", attr, got)
		}
	}
	if got := requests(); !slices.Equal(got, []string{"/flat", "/recursive"}) {
		t.Errorf("the server saw %v", got)
	}

	_, stderr, err := build("mismatch")
	want := regexp.MustCompile(`hash mismatch in fixed-output derivation '[^']*-fetched-mismatch.drv':\n\s*specified: ` +
		regexp.QuoteMeta(wrong.SRI()) + `\n\s*got: +` + regexp.QuoteMeta(flat.SRI()) + `\n`)
	if err == nil || !want.MatchString(stripANSI(stderr)) {
		t.Errorf("mismatch: %v\n%s\nwant %s", err, stderr, want)
	}

	if _, stderr, err := build("escape"); err != nil || !strings.Contains(stderr, "connection refused") {
		t.Errorf("escape: %v\n%s", err, stderr)
	}
	if got := esc.Connections(); !slices.Equal(got, []string{"control"}) {
		t.Errorf("the abstract socket got %q, want only the control connection", got)
	}

	before := len(requests())
	if _, stderr, err := build("offline"); err != nil {
		t.Errorf("offline: %v\n%s", err, stderr)
	}
	if got := requests()[before:]; len(got) > 0 {
		t.Errorf("a derivation that is not fixed-output reached the host: %v", got)
	}
}

// mustNarHash is the NAR hash of path as nix-store -q --hash prints it.
func mustNarHash(t *testing.T, path string) string {
	t.Helper()
	h := nixhash.NewHasher(nixhash.SHA256)
	if err := nar.Dump(h, path, nar.DumpOptions{}); err != nil {
		t.Fatal(err)
	}
	return h.Sum().String()
}
