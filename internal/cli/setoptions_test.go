package cli

import (
	"net"
	"path/filepath"
	"reflect"
	"sync"
	"testing"

	"cairn/internal/protocol"
	"cairn/internal/testutil/nixtest"
	"cairn/internal/wire"
)

// optionsRecorder is a daemon that only answers the handshake and
// SetOptions, and records the client options of each connection; it hangs
// up at the next request.
type optionsRecorder struct {
	sock string
	mu   sync.Mutex
	got  []protocol.ClientOptions
}

func newOptionsRecorder(t *testing.T) *optionsRecorder {
	t.Helper()
	rec := &optionsRecorder{sock: filepath.Join(t.TempDir(), "socket")}
	ln, err := net.Listen("unix", rec.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go rec.serve(c)
		}
	}()
	return rec
}

func (rec *optionsRecorder) serve(c net.Conn) {
	defer c.Close()
	r, w := wire.NewReader(c), wire.NewWriter(c)
	ci, err := protocol.ServerHandshake(r, w, protocol.ServerInfo{Version: protocol.Latest, NixVersion: "2.8.0"})
	if err != nil {
		return
	}
	log := protocol.NewLogger(w, ci.Params)
	if log.Last() != nil || w.Flush() != nil {
		return
	}
	if protocol.Op(r.Uint64()) != protocol.OpSetOptions {
		return
	}
	var o protocol.ClientOptions
	o.Read(r, ci.Params)
	if r.Err() != nil {
		return
	}
	rec.mu.Lock()
	rec.got = append(rec.got, o)
	rec.mu.Unlock()
	log.Last()
	w.Flush()
	r.Uint64() // the next request: hang up
}

// last returns the options of the last connection, and forgets them all.
func (rec *optionsRecorder) last(t *testing.T) protocol.ClientOptions {
	t.Helper()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.got) == 0 {
		t.Fatal("no SetOptions recorded")
	}
	o := rec.got[len(rec.got)-1]
	rec.got = nil
	return o
}

// TestSetOptionsAgainstNix: a store verb on a daemon store sends the
// daemon what nix-store 2.8 sends it with the same nix.conf and --option
// settings: the fixed fields, and as overrides the store settings given in
// either place.
func TestSetOptionsAgainstNix(t *testing.T) {
	nixtest.Require(t, "nix-store")
	rec := newOptionsRecorder(t)
	url := "unix://" + rec.sock
	path := "/nix/store/00000000000000000000000000000000-x"
	for _, c := range []struct {
		name, conf string
		options    []string
	}{
		{"defaults", "", nil},
		{"nix.conf", "keep-outputs = true\nmax-jobs = 3\ncores = 2\nsubstituters =\nwarn-dirty = false\nsandbox-paths = /bin/sh=/bin/busybox\n", nil},
		{"options", "substituters =", []string{"--option", "keep-failed", "true", "--option", "fsync-metadata", "false",
			"--option", "extra-sandbox-paths", "/x", "--option", "fallback", "true", "--option", "max-silent-time", "7",
			"--option", "experimental-features", "nix-command"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("NIX_CONFIG", c.conf)
			t.Setenv("NIX_CONF_DIR", t.TempDir())
			t.Setenv("NIX_USER_CONF_FILES", "/nonexistent")
			nixtest.OutputEnv([]string{"NIX_CONFIG=" + c.conf, "NIX_CONF_DIR=/nonexistent", "NIX_USER_CONF_FILES=/nonexistent"},
				"nix-store", append(append([]string{"--store", url}, c.options...), "-q", "--hash", path)...)
			nix := rec.last(t)
			runMain(t, append(append([]string{"--store", url}, c.options...), "store", "query", "--hash", path)...)
			ours := rec.last(t)
			if !reflect.DeepEqual(ours, nix) {
				t.Errorf("SetOptions\n got %+v\nwant %+v (nix-store)", ours, nix)
			}
		})
	}
}
