package store

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"cairn/internal/storepath"
)

// Nix's default directories, used when neither the URL nor the environment sets them.
const (
	DefaultStateDir = "/nix/var/nix"
	DefaultLogDir   = "/nix/var/log/nix"
)

// Kinds of store a URL names.
const (
	SchemeLocal  = "local"
	SchemeDaemon = "daemon" // "daemon" and "unix://PATH": a daemon's socket (package remote)
	// SchemeSSHNG is "ssh-ng://[USER@]HOST": nix-daemon --stdio (or
	// remote-program) run through ssh, for "localhost" without it.
	SchemeSSHNG = "ssh-ng"
	// SchemeSSH is "ssh://[USER@]HOST": nix-store --serve (the serve
	// protocol; package remotebuild), which only copying uses.
	SchemeSSH = "ssh"
)

// Config is a parsed store URL: which kind of store and where its parts live.
type Config struct {
	// URL is the URL as given.
	URL string
	// Scheme is SchemeLocal, SchemeDaemon, SchemeSSHNG or SchemeSSH.
	Scheme string
	// Socket is the daemon's Unix socket (SchemeDaemon only): the PATH of
	// "unix://PATH", else NIX_DAEMON_SOCKET_PATH, else STATE/daemon-socket/socket.
	Socket string
	// StoreDir is the logical store directory paths are named by.
	StoreDir storepath.StoreDir
	// RealStoreDir is where the store's files are on disk: StoreDir, or
	// ROOT/nix/store for a chroot store, or the real= parameter.
	RealStoreDir string
	// StateDir holds the database, GC roots, profiles and locks.
	StateDir string
	// LogDir holds build logs.
	LogDir string
	// Root is the chroot store's root directory, "" for none.
	Root string
	// Params holds every query parameter, including the ones above; a store
	// reads the settings it knows (Nix warns about the rest).
	Params map[string]string
}

// Getenv looks up an environment variable; os.Getenv is one.
type Getenv func(string) string

// ParseURL parses a store URL as Nix 2.8 does for the local store, taking the
// defaults of the store, state and log directories from NIX_STORE_DIR (or
// NIX_STORE), NIX_STATE_DIR and NIX_LOG_DIR through getenv (nil means os.Getenv).
// "" and "auto" mean local. "daemon" and "unix://PATH" name a daemon's socket
// (Scheme SchemeDaemon, Socket set; see Config.Socket).
func ParseURL(s string, getenv Getenv) (*Config, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	c, err := parseURL(s, getenv)
	if err != nil {
		return nil, fmt.Errorf("parse store URL %q: %w", s, err)
	}
	return c, nil
}

func parseURL(s string, getenv Getenv) (*Config, error) {
	base, query, _ := strings.Cut(s, "?")
	params, err := parseQuery(query)
	if err != nil {
		return nil, err
	}
	scheme, socket := SchemeLocal, ""
	switch {
	case base == "daemon" || strings.HasPrefix(base, "unix://"):
		scheme, socket = SchemeDaemon, strings.TrimPrefix(strings.TrimPrefix(base, "daemon"), "unix://")
		if socket != "" && !filepath.IsAbs(socket) {
			return nil, fmt.Errorf("%w: socket %q is not an absolute path", ErrInvalid, socket)
		}
	case strings.HasPrefix(base, "ssh-ng://"):
		if base == "ssh-ng://" {
			return nil, fmt.Errorf("%w: no host", ErrInvalid)
		}
		scheme = SchemeSSHNG
	case strings.HasPrefix(base, "ssh://"):
		if base == "ssh://" {
			return nil, fmt.Errorf("%w: no host", ErrInvalid)
		}
		scheme = SchemeSSH
	case strings.Contains(base, "://"):
		return nil, fmt.Errorf("%w: don't know how to open this kind of Nix store", ErrUnsupported)
	case base == "" || base == "auto" || base == "local":
	case strings.Contains(base, "/"):
		// A bare path is a chroot store rooted there.
		abs, err := filepath.Abs(base)
		if err != nil {
			return nil, err
		}
		params["root"] = abs
	default:
		return nil, fmt.Errorf("%w: don't know how to open Nix store %q", ErrUnsupported, base)
	}

	env := func(names ...string) string {
		for _, n := range names {
			if v := getenv(n); v != "" {
				return v
			}
		}
		return ""
	}
	c := &Config{URL: s, Scheme: scheme, Params: params}
	pathParam := func(key, def string) (string, error) {
		v, ok := params[key]
		if !ok || v == "" {
			v = def
		}
		if !filepath.IsAbs(v) {
			return "", fmt.Errorf("%w: %s %q is not an absolute path", ErrInvalid, key, v)
		}
		return filepath.Clean(v), nil
	}
	if root := params["root"]; root != "" {
		if !filepath.IsAbs(root) {
			return nil, fmt.Errorf("%w: root %q is not an absolute path", ErrInvalid, root)
		}
		c.Root = filepath.Clean(root)
	}
	storeDefault := env("NIX_STORE_DIR", "NIX_STORE")
	if storeDefault == "" {
		storeDefault = string(storepath.DefaultStoreDir)
	}
	stateDefault, logDefault := env("NIX_STATE_DIR"), env("NIX_LOG_DIR")
	if stateDefault == "" {
		stateDefault = DefaultStateDir
	}
	if logDefault == "" {
		logDefault = DefaultLogDir
	}
	if c.Root != "" {
		stateDefault = filepath.Join(c.Root, "nix/var/nix")
		logDefault = filepath.Join(c.Root, "nix/var/log/nix")
	}
	storeDir, err := pathParam("store", storeDefault)
	if err != nil {
		return nil, err
	}
	if c.StoreDir, err = storepath.ParseStoreDir(storeDir); err != nil {
		return nil, err
	}
	realDefault := storeDir
	if c.Root != "" {
		realDefault = filepath.Join(c.Root, "nix/store")
	}
	if c.RealStoreDir, err = pathParam("real", realDefault); err != nil {
		return nil, err
	}
	if c.StateDir, err = pathParam("state", stateDefault); err != nil {
		return nil, err
	}
	if c.LogDir, err = pathParam("log", logDefault); err != nil {
		return nil, err
	}
	if scheme == SchemeDaemon {
		switch {
		case socket != "":
			c.Socket = filepath.Clean(socket)
		case env("NIX_DAEMON_SOCKET_PATH") != "":
			c.Socket = env("NIX_DAEMON_SOCKET_PATH")
		default:
			c.Socket = filepath.Join(c.StateDir, "daemon-socket/socket")
		}
	}
	return c, nil
}

// knownParams are the store settings some Nix version reads from a local or
// daemon store's URL; Nix warns about any other parameter.
var knownParams = map[string]bool{
	// every store
	"store": true, "path-info-cache-size": true, "trusted": true, "priority": true,
	"want-mass-query": true, "system-features": true,
	// local file system stores, the daemon's socket included
	"root": true, "state": true, "log": true, "real": true,
	// the local store
	"require-sigs": true, "read-only": true, "build-dir": true,
	"ignore-gc-delete-failure": true, "use-roots-daemon": true,
	// remote stores
	"max-connections": true, "max-connection-age": true,
	// ssh stores
	"ssh-key": true, "base64-ssh-public-host-key": true, "compress": true, "remote-program": true,
	"remote-store": true,
}

// UnknownParams lists, sorted, the URL's parameters no Nix store reads.
func (c *Config) UnknownParams() []string {
	var unknown []string
	for k := range c.Params {
		if !knownParams[k] {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	return unknown
}

// parseQuery splits "a=b&c=d", percent-decoding keys and values (no "+" for space,
// as Nix).
func parseQuery(q string) (map[string]string, error) {
	params := map[string]string{}
	if q == "" {
		return params, nil
	}
	for _, kv := range strings.Split(q, "&") {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		dk, err := url.PathUnescape(k)
		if err != nil {
			return nil, fmt.Errorf("%w: parameter %q: %v", ErrInvalid, k, err)
		}
		dv, err := url.PathUnescape(v)
		if err != nil {
			return nil, fmt.Errorf("%w: parameter %q: %v", ErrInvalid, k, err)
		}
		params[dk] = dv
	}
	return params, nil
}

// String prints c as a URL that parses back to the same directories.
func (c *Config) String() string {
	base := "local"
	if c.Scheme == SchemeDaemon {
		base = "unix://" + c.Socket
	}
	if c.Scheme != SchemeDaemon && c.Root != "" && c.StoreDir == storepath.DefaultStoreDir &&
		c.RealStoreDir == filepath.Join(c.Root, "nix/store") &&
		c.StateDir == filepath.Join(c.Root, "nix/var/nix") && c.LogDir == filepath.Join(c.Root, "nix/var/log/nix") {
		return "local?root=" + escapeParam(c.Root)
	}
	var keys []string
	for k := range c.Params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if len(keys) == 0 {
		return base
	}
	var b strings.Builder
	b.WriteString(base)
	for i, k := range keys {
		if i == 0 {
			b.WriteByte('?')
		} else {
			b.WriteByte('&')
		}
		b.WriteString(escapeParam(k) + "=" + escapeParam(c.Params[k]))
	}
	return b.String()
}

func escapeParam(s string) string {
	return strings.NewReplacer("%", "%25", "&", "%26", "=", "%3D", "?", "%3F", " ", "%20").Replace(s)
}

// DefaultURL chooses the store when none is given: NIX_REMOTE if set; else
// "local" if the user may write the local store (the store dir, or the nearest
// existing directory above it, is writable, as /nix is for root or after a Nix
// install); else "daemon" if a daemon's socket is there (NIX_DAEMON_SOCKET_PATH,
// else STATE/daemon-socket/socket), as Nix's "auto" chooses; else a chroot store
// under $XDG_DATA_HOME/cairn (by default ~/.local/share/cairn), which needs no
// setup.
func DefaultURL(getenv Getenv) (string, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	return defaultURL(getenv, writable, true)
}

// DefaultLocalURL is DefaultURL for what needs a local store: it never
// chooses the daemon.
func DefaultLocalURL(getenv Getenv) (string, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	return defaultURL(getenv, writable, false)
}

func defaultURL(getenv Getenv, writable func(string) bool, daemon bool) (string, error) {
	if r := getenv("NIX_REMOTE"); r != "" {
		return r, nil
	}
	local, err := ParseURL("local", getenv)
	if err != nil {
		return "", err
	}
	if writable(local.RealStoreDir) {
		return "local", nil
	}
	// A daemon serves the store: talk to it, as Nix's "auto" does.
	socket := getenv("NIX_DAEMON_SOCKET_PATH")
	if socket == "" {
		socket = filepath.Join(local.StateDir, "daemon-socket/socket")
	}
	if fi, err := os.Stat(socket); daemon && err == nil && fi.Mode()&os.ModeSocket != 0 {
		return "daemon", nil
	}
	data := getenv("XDG_DATA_HOME")
	if data == "" {
		home := getenv("HOME")
		if home == "" {
			h, err := os.UserHomeDir()
			if err != nil {
				return "", fmt.Errorf("choose default store: %w", err)
			}
			home = h
		}
		data = filepath.Join(home, ".local/share")
	}
	return "local?root=" + escapeParam(filepath.Join(data, "cairn")), nil
}

// writable reports whether dir, or the nearest existing directory above it, is
// writable by this process.
func writable(dir string) bool {
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			return accessW(d)
		} else if !errors.Is(err, os.ErrNotExist) {
			return false
		}
		if d == "/" {
			return false
		}
	}
}
