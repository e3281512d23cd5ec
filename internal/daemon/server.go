package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"cairn/internal/config"
	"cairn/internal/gc"
	"cairn/internal/gcroots"
	"cairn/internal/metrics"
	"cairn/internal/protocol"
	"cairn/internal/store"
)

// Versions the daemon states about itself.
const (
	// CairnVersion is Cairn's own version.
	CairnVersion = "0.1.0"
	// NixVersion is the Nix release whose daemon Cairn's reproduces (field 3 of
	// `cairn daemon --version`, which scripts parse as nix-daemon's).
	NixVersion = "2.8.0"
	// HandshakeVersion is the version string sent in the handshake (≥1.33);
	// clients only print it (`nix store ping`).
	HandshakeVersion = NixVersion + " (Cairn " + CairnVersion + ")"
)

// ProtocolVersion is the worker protocol version the daemon announces, and
// Features the 1.38 features it offers (both only change encodings it
// has codecs for). disable-set-options is not offered: the daemon wants the
// client's verbosity and settings.
var (
	ProtocolVersion = protocol.Latest
	Features        = protocol.LatestFeatures
)

// Server serves the worker protocol for one store. Its fields are set before
// Serve and not changed afterwards.
type Server struct {
	// Store is served through the capability interfaces it implements;
	// operations it lacks answer "not supported".
	Store store.Store
	// Settings are the daemon's settings (nix.conf, --option). They are only
	// read; each connection keeps the client's own on top.
	Settings *config.Settings
	// Auth decides who may connect over a socket and who is trusted.
	Auth AuthHook
	// Roots keeps GC roots; nil means the root operations are not supported.
	Roots *gcroots.Roots
	// LogDir is where build logs go (AddBuildLog); "" means not supported.
	LogDir string
	// ErrorLog receives the daemon's own messages (accepted connections,
	// errors that could not reach a client); nil discards them.
	ErrorLog func(string)
	// SpinWait is how long a socket connection polls for the client's next
	// operation after a reply while the daemon is otherwise idle (wait.go);
	// 0 never polls.
	SpinWait time.Duration
	// AutoGC collects garbage when free space runs low (min-free); nil
	// never does.
	AutoGC *gc.Auto
	// Metrics counts connections, operations and builds; nil counts
	// nothing.
	Metrics *metrics.Daemon

	nextID  atomic.Uint64
	wg      sync.WaitGroup
	busy    atomic.Int32 // connections in an operation
	polling atomic.Int32 // connections polling for their next operation (at most 1)
}

func (s *Server) logf(format string, args ...any) {
	if s.ErrorLog != nil {
		s.ErrorLog(fmt.Sprintf(format, args...))
	}
}

// Serve accepts connections on ln and serves each on its own goroutine with
// its own context, until ctx is done or ln fails. It then closes ln, cancels
// every connection and waits for them.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		s.wg.Wait()
		s.closeBuilder()
	}()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.ServeConn(ctx, c); err != nil {
				s.logf("error processing connection: %v", err)
			}
		}()
	}
}

// ServeConn serves one socket connection: the peer's credentials go through
// the AuthHook, then the protocol runs until the client hangs up. It closes c.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) error {
	defer c.Close()
	var peer Peer
	if uc, ok := c.(*net.UnixConn); ok {
		p, err := PeerCred(uc)
		if err != nil {
			return err
		}
		peer = p
	}
	var d Decision
	var err error
	if s.Auth == nil {
		err = errors.New("authorize: no auth hook")
	} else {
		d, err = s.Auth(ctx, peer)
	}
	if err != nil {
		d = Decision{Refusal: err.Error()}
	}
	if d.Allowed {
		pid := "<unknown>"
		if peer.Known {
			pid = strconv.Itoa(int(peer.PID))
		}
		trusted := ""
		if d.Trusted {
			trusted = " (trusted)"
		}
		s.logf("accepted connection from pid %s, user %s%s", pid, d.User, trusted)
	} else {
		s.logf("refused connection from uid %d: %s", peer.UID, d.Refusal)
	}
	var r io.Reader = c
	var sr *spinReader
	if uc, ok := c.(*net.UnixConn); ok {
		if sr = newSpinReader(s, uc); sr != nil {
			r = sr
		}
	}
	return s.serve(ctx, r, c, d, peer, sr)
}

// ServeStream serves one connection on r and w (--stdio) with a decision made
// by the caller: nobody can be asked who is on the other end.
func (s *Server) ServeStream(ctx context.Context, r io.Reader, w io.Writer, d Decision) error {
	return s.serve(ctx, r, w, d, Peer{}, nil)
}

func (s *Server) serve(ctx context.Context, r io.Reader, w io.Writer, d Decision, peer Peer, sr *spinReader) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cl := &Client{Decision: d, Peer: peer, ID: s.nextID.Add(1)}
	ctx = WithClient(ctx, cl)
	c := newConn(ctx, s, r, w)
	c.spin = sr
	defer c.close()
	s.Metrics.ConnOpened()
	defer s.Metrics.ConnClosed()
	return c.run()
}

// SocketPath is where the daemon's socket is by default:
// $NIX_DAEMON_SOCKET_PATH, else $NIX_STATE_DIR/daemon-socket/socket (state
// dir /nix/var/nix by default).
func SocketPath(getenv func(string) string) string {
	if p := getenv("NIX_DAEMON_SOCKET_PATH"); p != "" {
		return p
	}
	state := getenv("NIX_STATE_DIR")
	if state == "" {
		state = store.DefaultStateDir
	}
	return filepath.Join(state, "daemon-socket", "socket")
}

// Listen creates the daemon's socket at path: its directory is made (0755)
// if missing, a stale socket file is replaced, and the socket is made
// mode 0666 so every user can connect (the AuthHook decides who may).
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(path, 0o666); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	return ln, nil
}

// listenFD is the first descriptor systemd passes (SD_LISTEN_FDS_START).
const listenFD = 3

// SystemdListener returns the socket systemd passed (LISTEN_FDS=1 and
// LISTEN_PID our pid: descriptor 3), or nil when there is none. Other values
// of those variables are an error, as in nix-daemon.
func SystemdListener(getenv func(string) string) (net.Listener, error) {
	fds := getenv("LISTEN_FDS")
	if fds == "" {
		return nil, nil
	}
	if getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) || fds != "1" {
		return nil, errors.New("unexpected systemd environment variables")
	}
	f := os.NewFile(listenFD, "systemd socket")
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("systemd socket: %w", err)
	}
	return ln, nil
}
