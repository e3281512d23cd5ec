package build

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"cairn/internal/derivation"
	"cairn/internal/nar"
	"cairn/internal/nixhash"
	"cairn/internal/sandbox"
	"cairn/internal/storepath"
	"cairn/internal/testutil/escape"
)

// fetched is what the test's HTTP server serves.
const fetched = "fetched by a fixed-output build\n"

// hostServer serves fetched at /file on the host's loopback and records the
// paths asked for.
type hostServer struct {
	*httptest.Server
	mu  sync.Mutex
	got []string
}

func newHostServer(t *testing.T) *hostServer {
	h := &hostServer{}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.got = append(h.got, r.URL.Path)
		h.mu.Unlock()
		fmt.Fprint(w, fetched)
	}))
	t.Cleanup(h.Close)
	return h
}

func (h *hostServer) port() string {
	_, port, _ := net.SplitHostPort(h.Listener.Addr().String())
	return port
}

func (h *hostServer) requests() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.got)
}

// netStacks are the installed network stacks, by name.
func netStacks(t *testing.T) []string {
	var out []string
	for _, tool := range []string{sandbox.NetPasta, sandbox.NetSlirp4netns} {
		if _, err := sandbox.LookNet(tool, true); err == nil {
			out = append(out, tool)
		}
	}
	if len(out) == 0 {
		if os.Getenv("CAIRN_REQUIRE_NIX") == "1" {
			t.Fatal("neither pasta nor slirp4netns is installed (CI installs passt and slirp4netns)")
		}
		t.Skip("neither pasta nor slirp4netns is installed")
	}
	return out
}

// narHash is the sha256 of the NAR of a directory holding file with
// content.
func narHash(t *testing.T, file, content string) nixhash.Hash {
	dir := filepath.Join(t.TempDir(), "out")
	os.Mkdir(dir, 0o755)
	if err := os.WriteFile(filepath.Join(dir, file), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	h := nixhash.NewHasher(nixhash.SHA256)
	if err := nar.Dump(h, dir, nar.DumpOptions{}); err != nil {
		t.Fatal(err)
	}
	return h.Sum()
}

// TestFixedOutputNetwork fetches fixed outputs from a server on the host's
// loopback behind each installed stack, and checks what a fixed-output build
// sees, what other builds cannot reach, and that the host's abstract Unix
// sockets stay out of reach.
func TestFixedOutputNetwork(t *testing.T) {
	requireSandbox(t)
	stacks := netStacks(t)
	ctx := context.Background()
	srv := newHostServer(t)
	esc := escape.Listen(t)
	escBin := escape.Binary(t)
	port := srv.port()
	gateway := "http://" + sandbox.NetGateway + ":" + port

	for _, stack := range stacks {
		t.Run(stack, func(t *testing.T) {
			st := testStore(t)
			b := newBuilder(t, st)
			opts := testOptions()
			opts.Network = stack
			opts.SandboxPaths = append(opts.SandboxPaths, "/escape="+escBin)
			seq := 0
			fixed := func(method nixhash.Method, h nixhash.Hash, builder string, args ...string) storepath.StorePath {
				t.Helper()
				seq++
				name := fmt.Sprintf("fixed-%d", seq)
				d := &derivation.Derivation{
					Name:     name,
					Outputs:  map[string]derivation.Output{"out": derivation.FixedOutput(storepath.StorePath{}, nixhash.ContentAddress{Method: method, Hash: h})},
					Platform: "x86_64-linux", Builder: builder, Args: args,
					Env: map[string]string{"name": name, "out": ""},
				}
				p, err := AddDerivation(ctx, st, d)
				if err != nil {
					t.Fatal(err)
				}
				return p
			}
			build := func(drv storepath.StorePath) (Result, *testLog) {
				t.Helper()
				log := &testLog{}
				res, err := b.Build(ctx, []Target{{Drv: drv}}, opts, log)
				if err != nil {
					t.Fatal(err)
				}
				return res[0], log
			}
			flatHash := nixhash.Sum(nixhash.SHA256, []byte(fetched))
			// What the builder checks before it fetches.
			checks := "set -e; grep -q '" + sandbox.NetInterface + ":' /proc/net/dev; grep -q '^nameserver " + sandbox.NetDNS +
				"$' /etc/resolv.conf; test -s /etc/services; grep -q '^hosts: files dns' /etc/nsswitch.conf; "

			urls := []string{gateway}
			if stack == sandbox.NetPasta {
				urls = append(urls, "http://localhost:"+port, "http://127.0.0.1:"+port)
			}
			for _, u := range urls {
				before := len(srv.requests())
				r, log := build(fixed(nixhash.Flat, flatHash, "/bin/sh", "-c", checks+"wget -q -O $out "+u+"/flat"))
				if r.Status != Built {
					t.Fatalf("flat from %s: %d %v\n%s", u, r.Status, r.Err, strings.Join(log.lines, "\n"))
				}
				if got := readOut(t, st, r.Outputs["out"]); got != fetched {
					t.Errorf("flat from %s: %q", u, got)
				}
				if got := srv.requests()[before:]; !slices.Equal(got, []string{"/flat"}) {
					t.Errorf("flat from %s: the server saw %v", u, got)
				}
			}

			r, log := build(fixed(nixhash.Recursive, narHash(t, "file", fetched), "/bin/sh", "-c", checks+"mkdir $out; wget -q -O $out/file "+gateway+"/recursive"))
			if r.Status != Built {
				t.Fatalf("recursive: %d %v\n%s", r.Status, r.Err, strings.Join(log.lines, "\n"))
			}
			if info, err := st.QueryPathInfo(ctx, r.Outputs["out"]); err != nil || info.CA.Method != nixhash.Recursive {
				t.Errorf("recursive: %+v %v", info, err)
			}

			// A hash mismatch: Nix 2.8's words, both hashes.
			wrong := nixhash.Sum(nixhash.SHA256, []byte("something else\n"))
			r, _ = build(fixed(nixhash.Flat, wrong, "/bin/sh", "-c", "wget -q -O $out "+gateway+"/mismatch"))
			wantMsg := fmt.Sprintf("hash mismatch in fixed-output derivation '\x1b[35;1m%s\x1b[0m':\n  specified: \x1b[35;1m%s\x1b[0m\n     got:    \x1b[35;1m%s\x1b[0m",
				r.Target.Drv, wrong.SRI(), flatHash.SRI())
			if r.Status != OutputRejected || r.Err == nil || r.Err.Error() != wantMsg {
				t.Errorf("mismatch: %d %q\nwant %q", r.Status, r.Err, wantMsg)
			}

			// The abstract socket escape: the builder cannot connect.
			r, log = build(fixed(nixhash.Flat, nixhash.Sum(nixhash.SHA256, []byte(escape.Output)), "/escape", esc.Name))
			if r.Status != Built {
				t.Errorf("escape: %d %v\n%s", r.Status, r.Err, strings.Join(log.lines, "\n"))
			}
			t.Logf("escape builder: %q", log.lines)
			if !slices.ContainsFunc(log.lines, func(l string) bool { return strings.HasSuffix(l, "connection refused") }) {
				t.Errorf("escape: the builder said %q", log.lines)
			}

			// The host's loopback isolated: the same fetch fails (with pasta,
			// the gateway is then an address like any other, which may not
			// answer at all: hence the timeouts).
			opts.IsolateLoopback = true
			r, _ = build(fixed(nixhash.Flat, flatHash, "/bin/sh", "-c", "timeout 5 wget -q -O $out "+gateway+"/isolated"+" || timeout 5 wget -q -O $out http://127.0.0.1:"+port+"/isolated"))
			if r.Status != PermanentFailure || slices.Contains(srv.requests(), "/isolated") {
				t.Errorf("isolated: %d %v; the server saw %v", r.Status, r.Err, srv.requests())
			}
			opts.IsolateLoopback = false
		})
	}

	st := testStore(t)
	b := newBuilder(t, st)
	opts := testOptions()
	// A build that is not fixed-output has only its loopback, and reaches
	// nothing.
	before := len(srv.requests())
	p := addDrv(t, st, "offline", "set -e; test \"$(grep -c : /proc/net/dev)\" = 1; grep -q 'lo:' /proc/net/dev; test ! -e /etc/resolv.conf; "+
		"for u in "+gateway+" http://127.0.0.1:"+port+"; do if wget -q -O /tmp/x $u/offline; then echo reached $u; exit 1; fi; done; echo > $out", nil, nil)
	res, err := b.Build(ctx, []Target{{Drv: p}}, opts, nil)
	if err != nil || res[0].Status != Built {
		t.Errorf("offline build: %v %+v", err, res)
	}
	if got := srv.requests()[before:]; len(got) > 0 {
		t.Errorf("a build that is not fixed-output reached the host: %v", got)
	}

	// No stack: a clear error, or with "none" a build without network.
	fixedNone := func(name string) storepath.StorePath {
		d := &derivation.Derivation{
			Name:     name,
			Outputs:  map[string]derivation.Output{"out": derivation.FixedOutput(storepath.StorePath{}, nixhash.ContentAddress{Method: nixhash.Flat, Hash: nixhash.Sum(nixhash.SHA256, []byte(fetched))})},
			Platform: "x86_64-linux", Builder: "/bin/sh",
			Args: []string{"-c", "if wget -q -O $out " + gateway + "/none; then exit 0; fi; printf '" + strings.TrimSpace(fetched) + "\\n' > $out"},
			Env:  map[string]string{"name": name, "out": ""},
		}
		p, err := AddDerivation(ctx, st, d)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	opts.Network = "/nonexistent/pasta"
	res, _ = b.Build(ctx, []Target{{Drv: fixedNone("nostack")}}, opts, nil)
	if res[0].Status != MiscFailure || !strings.Contains(res[0].Err.Error(), "needs network access (setting fixed-output-network)") {
		t.Errorf("missing stack: %d %v", res[0].Status, res[0].Err)
	}
	opts.Network = "none"
	before = len(srv.requests())
	res, _ = b.Build(ctx, []Target{{Drv: fixedNone("nonet")}}, opts, nil)
	if res[0].Status != Built || len(srv.requests()) != before {
		t.Errorf("network none: %d %v, server saw %v", res[0].Status, res[0].Err, srv.requests()[before:])
	}

	if got := esc.Connections(); !slices.Equal(got, []string{"control"}) {
		t.Errorf("the abstract socket got %q, want only the control connection", got)
	}
}
