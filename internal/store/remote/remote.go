package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/storepath"
)

// DefaultMaxConns is how many connections a Store opens at most unless
// Options says otherwise.
const DefaultMaxConns = 16

// ClientVersion is the protocol version the client offers.
const ClientVersion = protocol.Latest

// Options adjust a Store.
type Options struct {
	// MaxConns bounds the open connections, and so the ops in flight
	// (DefaultMaxConns when 0). Callers beyond it wait for a connection.
	MaxConns int
	// Log receives the daemon's stderr messages other than LAST and ERROR:
	// log lines (STDERR_NEXT), activities and results. It may be called from
	// several goroutines at once, one per connection. Nil discards them.
	Log func(*protocol.Message)
	// ClientOptions are sent with SetOptions on every new connection; nil
	// means DefaultClientOptions.
	ClientOptions *protocol.ClientOptions
	// NoSetOptions skips SetOptions after the handshake, as a Nix 2.8 client
	// does over ssh-ng.
	NoSetOptions bool
}

// DefaultClientOptions are the SetOptions a Store sends unless told otherwise:
// quiet (errors only), substitutes allowed, one build job.
func DefaultClientOptions() *protocol.ClientOptions {
	return &protocol.ClientOptions{
		Verbosity:      protocol.LvlError,
		MaxBuildJobs:   1,
		UseBuildHook:   true,
		BuildVerbosity: protocol.LvlVomit,
		UseSubstitutes: true,
	}
}

// A Dialer opens the byte stream of one new connection.
type Dialer func(ctx context.Context) (io.ReadWriteCloser, error)

// Store is a store behind a daemon. It is safe for concurrent use; each op
// runs on a connection of its own from the pool.
type Store struct {
	dir  storepath.StoreDir
	dial Dialer
	opts Options
	sem  chan struct{} // one token per connection that may be in use

	mu     sync.Mutex
	idle   []*conn
	closed bool
}

// Open connects to the daemon socket cfg names (Scheme SchemeDaemon) and
// returns a Store for it. It dials one connection at once, so a missing or
// refusing daemon is an error here rather than at the first op.
func Open(ctx context.Context, cfg *store.Config, opts Options) (*Store, error) {
	if cfg.Scheme != store.SchemeDaemon || cfg.Socket == "" {
		return nil, fmt.Errorf("open remote store %s: %w: not a daemon URL", cfg.URL, store.ErrUnsupported)
	}
	s := New(cfg.StoreDir, SocketDialer(cfg.Socket), opts)
	if err := s.Ping(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open remote store %s: %w", cfg.URL, err)
	}
	return s, nil
}

// SocketDialer dials the Unix socket at path. A full listen backlog (EAGAIN:
// nix-daemon listens with a backlog of 5 and forks per connection) is retried
// with backoff until ctx ends, as a blocking connect would wait.
func SocketDialer(path string) Dialer {
	return func(ctx context.Context) (io.ReadWriteCloser, error) {
		var d net.Dialer
		wait := time.Millisecond
		for {
			c, err := d.DialContext(ctx, "unix", path)
			if err == nil {
				return c, nil
			}
			if !errors.Is(err, syscall.EAGAIN) {
				return nil, err
			}
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				return nil, err
			}
			wait = min(2*wait, 100*time.Millisecond)
		}
	}
}

// New returns a Store over connections from dial, for paths in dir. It dials
// nothing until the first op.
func New(dir storepath.StoreDir, dial Dialer, opts Options) *Store {
	if opts.MaxConns <= 0 {
		opts.MaxConns = DefaultMaxConns
	}
	if opts.ClientOptions == nil {
		opts.ClientOptions = DefaultClientOptions()
	}
	return &Store{dir: dir, dial: dial, opts: opts, sem: make(chan struct{}, opts.MaxConns)}
}

// NewConn returns a Store over the single connection rwc, such as the pipes of
// `nix-daemon --stdio`. Once rwc breaks, every op fails; Close closes rwc.
func NewConn(dir storepath.StoreDir, rwc io.ReadWriteCloser, opts Options) *Store {
	var once sync.Once
	dial := func(ctx context.Context) (io.ReadWriteCloser, error) {
		var out io.ReadWriteCloser
		once.Do(func() { out = rwc })
		if out == nil {
			return nil, errors.New("connection lost")
		}
		return out, nil
	}
	opts.MaxConns = 1
	return New(dir, dial, opts)
}

// StoreDir is the store directory the daemon's paths are in.
func (s *Store) StoreDir() storepath.StoreDir { return s.dir }

// Close closes the idle connections and, as they come back, the busy ones.
// Ops after Close fail.
func (s *Store) Close() error {
	s.mu.Lock()
	idle := s.idle
	s.idle, s.closed = nil, true
	s.mu.Unlock()
	var first error
	for _, c := range idle {
		if err := c.close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

var errClosed = errors.New("store closed")

// get takes a connection from the pool, dialing one if none is idle. fresh
// forces a new one.
func (s *Store) get(ctx context.Context, fresh bool) (*conn, error) {
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		<-s.sem
		return nil, errClosed
	}
	var c *conn
	if n := len(s.idle); n > 0 && !fresh {
		c = s.idle[n-1]
		s.idle = s.idle[:n-1]
	}
	s.mu.Unlock()
	if c != nil {
		c.reused = true
		return c, nil
	}
	c, err := s.connect(ctx)
	if err != nil {
		<-s.sem
		return nil, err
	}
	return c, nil
}

// put gives c back to the pool, or closes it if it is broken.
func (s *Store) put(c *conn) {
	s.mu.Lock()
	if c.broken || s.closed {
		s.mu.Unlock()
		c.close()
	} else {
		s.idle = append(s.idle, c)
		s.mu.Unlock()
	}
	<-s.sem
}

// connect dials and runs the handshake and SetOptions.
func (s *Store) connect(ctx context.Context) (*conn, error) {
	rwc, err := s.dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	c := newConn(rwc, s.dir, s.opts.Log)
	stop := context.AfterFunc(ctx, func() { rwc.Close() })
	err = c.handshake(s.opts)
	if !stop() {
		err = ctx.Err()
	}
	if err != nil {
		rwc.Close()
		return nil, fmt.Errorf("connect: %w", err)
	}
	return c, nil
}

// Info returns what the daemon said about itself in the handshake of one of
// the pool's connections.
func (s *Store) Info(ctx context.Context) (*protocol.DaemonInfo, error) {
	c, err := s.get(ctx, false)
	if err != nil {
		return nil, err
	}
	defer s.put(c)
	info := *c.info
	return &info, nil
}

// Ping makes sure a connection to the daemon can be made (reusing an idle one
// if there is one).
func (s *Store) Ping(ctx context.Context) error {
	_, err := s.Info(ctx)
	return err
}

// do runs one op on a pooled connection: req, then (if send is not nil) a
// payload written by send while the stderr channel is read, then the reply
// read by reply (which may be nil). An *Error from the daemon leaves the
// connection in the pool.
func (s *Store) do(ctx context.Context, req protocol.Request, send func(c *conn) error, reply func(c *conn) error) error {
	c, err := s.get(ctx, false)
	if err != nil {
		return err
	}
	err = s.run(ctx, c, req, send, reply)
	if err != nil && c.reused && send == nil && errors.Is(err, errHungUp) {
		// The daemon closed this idle connection (after an earlier error, or
		// a restart): try once more on a new one.
		c.broken = true
		s.put(c)
		if c, err = s.get(ctx, true); err != nil {
			return err
		}
		err = s.run(ctx, c, req, send, reply)
	}
	s.put(c)
	return err
}

func (s *Store) run(ctx context.Context, c *conn, req protocol.Request, send func(c *conn) error, reply func(c *conn) error) error {
	stop := context.AfterFunc(ctx, func() { c.rwc.Close() })
	err := c.call(req, send, reply)
	if !stop() {
		c.broken = true
		return ctx.Err()
	}
	return err
}
