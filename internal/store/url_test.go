package store

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
)

func TestParseURL(t *testing.T) {
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }
	tests := []struct {
		name, url                        string
		env                              map[string]string
		storeDir, real, state, log, root string
		wantErr                          error
	}{
		{name: "local", url: "local", storeDir: "/nix/store", real: "/nix/store", state: "/nix/var/nix", log: "/nix/var/log/nix"},
		{name: "empty", url: "", storeDir: "/nix/store", real: "/nix/store", state: "/nix/var/nix", log: "/nix/var/log/nix"},
		{name: "auto", url: "auto", storeDir: "/nix/store", real: "/nix/store", state: "/nix/var/nix", log: "/nix/var/log/nix"},
		{name: "root", url: "local?root=/tmp/x", storeDir: "/nix/store", real: "/tmp/x/nix/store",
			state: "/tmp/x/nix/var/nix", log: "/tmp/x/nix/var/log/nix", root: "/tmp/x"},
		{name: "bare path", url: "/tmp/y/", storeDir: "/nix/store", real: "/tmp/y/nix/store",
			state: "/tmp/y/nix/var/nix", log: "/tmp/y/nix/var/log/nix", root: "/tmp/y"},
		{name: "explicit dirs", url: "local?store=/s&state=/st&log=/l", storeDir: "/s", real: "/s", state: "/st", log: "/l"},
		{name: "real", url: "local?store=/nix/store&real=/data/store", storeDir: "/nix/store", real: "/data/store",
			state: "/nix/var/nix", log: "/nix/var/log/nix"},
		{name: "root and state", url: "local?root=/r&state=/st", storeDir: "/nix/store", real: "/r/nix/store",
			state: "/st", log: "/r/nix/var/log/nix", root: "/r"},
		{name: "percent", url: "local?root=/tmp/a%20b", storeDir: "/nix/store", real: "/tmp/a b/nix/store",
			state: "/tmp/a b/nix/var/nix", log: "/tmp/a b/nix/var/log/nix", root: "/tmp/a b"},
		{name: "env", url: "local", env: map[string]string{"NIX_STORE_DIR": "/e/store", "NIX_STATE_DIR": "/e/state", "NIX_LOG_DIR": "/e/log"},
			storeDir: "/e/store", real: "/e/store", state: "/e/state", log: "/e/log"},
		{name: "NIX_STORE", url: "local", env: map[string]string{"NIX_STORE": "/e2/store"},
			storeDir: "/e2/store", real: "/e2/store", state: "/nix/var/nix", log: "/nix/var/log/nix"},
		{name: "env under root", url: "local?root=/r", env: map[string]string{"NIX_STATE_DIR": "/e/state"},
			storeDir: "/nix/store", real: "/r/nix/store", state: "/r/nix/var/nix", log: "/r/nix/var/log/nix", root: "/r"},
		{name: "https", url: "https://cache.nixos.org", wantErr: ErrUnsupported},
		{name: "word", url: "bogus", wantErr: ErrUnsupported},
		{name: "relative root", url: "local?root=rel", wantErr: ErrInvalid},
		{name: "relative store", url: "local?store=rel", wantErr: ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env = tt.env
			c, err := ParseURL(tt.url, getenv)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("ParseURL(%q) error = %v, want %v", tt.url, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseURL(%q): %v", tt.url, err)
			}
			got := [5]string{string(c.StoreDir), c.RealStoreDir, c.StateDir, c.LogDir, c.Root}
			want := [5]string{tt.storeDir, tt.real, tt.state, tt.log, tt.root}
			if got != want {
				t.Errorf("ParseURL(%q) = %q, want %q", tt.url, got, want)
			}
			// String must parse back to the same directories.
			c2, err := ParseURL(c.String(), getenv)
			if err != nil {
				t.Fatalf("ParseURL(%q) of String: %v", c.String(), err)
			}
			if got2 := [5]string{string(c2.StoreDir), c2.RealStoreDir, c2.StateDir, c2.LogDir, c2.Root}; got2 != got {
				t.Errorf("round trip through %q = %q, want %q", c.String(), got2, got)
			}
		})
	}
}

func TestParseURLDaemon(t *testing.T) {
	tests := []struct {
		name, url, socket, storeDir string
		env                         map[string]string
		wantErr                     error
	}{
		{name: "daemon", url: "daemon", socket: "/nix/var/nix/daemon-socket/socket", storeDir: "/nix/store"},
		{name: "daemon state env", url: "daemon", env: map[string]string{"NIX_STATE_DIR": "/st"},
			socket: "/st/daemon-socket/socket", storeDir: "/nix/store"},
		{name: "daemon socket env", url: "daemon", env: map[string]string{"NIX_DAEMON_SOCKET_PATH": "/run/s", "NIX_STORE_DIR": "/s"},
			socket: "/run/s", storeDir: "/s"},
		{name: "unix", url: "unix:///run/nix.sock", env: map[string]string{"NIX_DAEMON_SOCKET_PATH": "/run/s"},
			socket: "/run/nix.sock", storeDir: "/nix/store"},
		{name: "unix empty", url: "unix://", socket: "/nix/var/nix/daemon-socket/socket", storeDir: "/nix/store"},
		{name: "unix store param", url: "unix:///run/nix.sock?store=/x/store", socket: "/run/nix.sock", storeDir: "/x/store"},
		{name: "unix relative", url: "unix://run/nix.sock", wantErr: ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseURL(tt.url, func(k string) string { return tt.env[k] })
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("ParseURL(%q) error = %v, want %v", tt.url, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseURL(%q): %v", tt.url, err)
			}
			if c.Scheme != SchemeDaemon || c.Socket != tt.socket || string(c.StoreDir) != tt.storeDir {
				t.Errorf("ParseURL(%q) = scheme %q socket %q store %q, want daemon %q %q", tt.url, c.Scheme, c.Socket, c.StoreDir, tt.socket, tt.storeDir)
			}
			c2, err := ParseURL(c.String(), func(k string) string { return tt.env[k] })
			if err != nil || c2.Socket != c.Socket || c2.StoreDir != c.StoreDir {
				t.Errorf("round trip through %q = %+v, %v", c.String(), c2, err)
			}
		})
	}
}

func TestDefaultURL(t *testing.T) {
	writable := func(dir string) bool { return dir == "/w/store" }
	sock := filepath.Join(t.TempDir(), "socket")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	notSock := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notSock, nil, 0o644)
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"NIX_REMOTE", map[string]string{"NIX_REMOTE": "local?root=/x"}, "local?root=/x"},
		{"writable store dir", map[string]string{"NIX_STORE_DIR": "/w/store"}, "local"},
		{"unwritable store: XDG", map[string]string{"NIX_STORE_DIR": "/ro/store", "XDG_DATA_HOME": "/data"}, "local?root=/data/cairn"},
		{"unwritable store: HOME", map[string]string{"NIX_STORE_DIR": "/ro/store", "HOME": "/home/u"}, "local?root=/home/u/.local/share/cairn"},
		{"unwritable store, a daemon's socket", map[string]string{"NIX_STORE_DIR": "/ro/store", "HOME": "/home/u", "NIX_DAEMON_SOCKET_PATH": sock}, "daemon"},
		{"unwritable store, not a socket", map[string]string{"NIX_STORE_DIR": "/ro/store", "HOME": "/home/u", "NIX_DAEMON_SOCKET_PATH": notSock}, "local?root=/home/u/.local/share/cairn"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := defaultURL(func(k string) string { return tt.env[k] }, writable, true)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("DefaultURL = %q, want %q", got, tt.want)
			}
			if local, _ := defaultURL(func(k string) string { return tt.env[k] }, writable, false); (local == "daemon") || (tt.want != "daemon" && local != tt.want) {
				t.Errorf("DefaultLocalURL = %q", local)
			}
		})
	}
}
