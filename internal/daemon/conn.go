package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"cairn/internal/build"
	"cairn/internal/gcroots"
	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/wire"
)

// conn is one client connection: its stream, negotiated parameters, stderr
// channel and settings. One goroutine runs it.
type conn struct {
	ctx      context.Context
	s        *Server
	r        *wire.Reader
	w        *wire.Writer
	p        protocol.Params
	log      *connLogger
	settings connSettings
	options  protocol.ClientOptions
	tempMu   sync.Mutex
	temp     *gcroots.TempRoots // made on the first temporary root
	spin     *spinReader        // the socket, polled after replies; nil for streams
	// rec is set on a recursive-nix build's connections (recursive.go),
	// whose store is restricted.
	rec        *build.Recursion
	restricted *restrictedStore
}

func newConn(ctx context.Context, s *Server, r io.Reader, w io.Writer) *conn {
	c := &conn{ctx: ctx, s: s, r: wire.NewReader(r), w: wire.NewWriter(w)}
	if s.Roots != nil {
		// What this connection adds stays until it closes (Nix's
		// addTempRoot in every add), also while a collector runs.
		c.ctx = store.WithTempRooter(ctx, c)
	}
	c.settings.global = s.Settings
	if rec, ok := ctx.Value(recursionKey{}).(*build.Recursion); ok {
		if st, ok := s.Store.(*local.Store); ok {
			c.rec, c.restricted = rec, &restrictedStore{next: st, rec: rec}
		}
	}
	if s.Store != nil {
		c.r.StoreDir = s.Store.StoreDir()
	}
	return c
}

func (c *conn) close() {
	c.tempMu.Lock()
	defer c.tempMu.Unlock()
	if c.temp != nil {
		if err := c.temp.Close(); err != nil {
			c.s.logf("%v", err)
		}
	}
}

// brokenError marks an error after which the connection is out of step (a
// payload half read): it is reported, then the connection closes.
type brokenError struct{ err error }

func (e *brokenError) Error() string { return e.err.Error() }
func (e *brokenError) Unwrap() error { return e.err }

func broken(err error) error {
	if err == nil {
		return nil
	}
	return &brokenError{err}
}

// nixError makes the STDERR_ERROR payload for err.
func nixError(err error) *protocol.Error {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		return pe
	}
	return &protocol.Error{Level: protocol.LvlError, Name: "Error", Message: err.Error(), Status: 1}
}

// hl highlights a value in a message as Nix's hintfmt does.
func hl(s string) string { return "\x1b[35;1m" + s + "\x1b[0m" }

// run does the handshake and then serves operations until the client hangs up.
func (c *conn) run() error {
	cl := ClientFrom(c.ctx)
	trust := protocol.NotTrusted
	if cl.Trusted {
		trust = protocol.Trusted
	}
	ci, err := protocol.ServerHandshake(c.r, c.w, protocol.ServerInfo{
		Version:    ProtocolVersion,
		Features:   Features,
		NixVersion: HandshakeVersion,
		Trusted:    trust,
	})
	if err != nil {
		c.w.Flush()
		return err
	}
	c.p = ci.Params
	c.log = newConnLogger(c.w, c.p)
	// The startup stderr channel: refusal, or the user's directories.
	c.log.startWork()
	if !cl.Allowed {
		msg := cl.Refusal
		if msg == "" {
			msg = "connection refused"
		}
		c.log.fail(nixError(errors.New(msg)))
		return nil
	}
	if c.s.Roots != nil && cl.User != "" && cl.Peer.Known {
		if err := c.s.Roots.CreateUserDirs(cl.User, int(cl.UID), os.Geteuid() == 0); err != nil {
			c.log.fail(nixError(err))
			return err
		}
	}
	if err := c.log.last(); err != nil {
		return err
	}
	for {
		if err := c.ctx.Err(); err != nil {
			return nil
		}
		op := protocol.Op(c.r.Uint64())
		if err := c.r.Err(); err != nil {
			if err == io.EOF {
				return nil
			}
			return fmt.Errorf("read op: %w", err)
		}
		c.s.busy.Add(1)
		done, err := c.operation(op)
		c.s.busy.Add(-1)
		if done {
			return err
		}
		if c.spin != nil {
			c.spin.replied()
		}
	}
}

// operation reads, performs and answers one operation whose code is read.
// done means the connection ends, with err.
func (c *conn) operation(op protocol.Op) (done bool, err error) {
	failed := false // an error the client was told of, the connection going on
	if c.s.Metrics != nil {
		start := time.Now()
		defer func() {
			name := "unknown"
			if op.Known() {
				name = op.String()
			}
			c.s.Metrics.Operation(name, time.Since(start), err != nil || failed)
		}()
	}
	req, err := protocol.NewRequest(op, c.p)
	if err != nil {
		return true, c.fatal(fmt.Errorf("invalid operation %s", hl(fmt.Sprint(uint64(op)))))
	}
	req.Read(c.r, c.p)
	if err := c.r.Err(); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return true, c.fatal(fmt.Errorf("reading %v: %w", op, err))
	}
	err = c.perform(req)
	if err == nil {
		if err := c.w.Flush(); err != nil {
			return true, err
		}
		return false, nil
	}
	var ae *abortError
	if errors.As(err, &ae) {
		return true, ae.err
	}
	var be *brokenError
	if !c.log.working() || errors.As(err, &be) {
		return true, c.fatal(err)
	}
	failed = true
	if ferr := c.log.fail(nixError(err)); ferr != nil {
		return true, ferr
	}
	return false, nil
}

// fatal reports err and ends the connection. Like nix-daemon 2.8, which reports
// an error outside an operation's work twice (once from the operation, once
// from the connection), the error goes out twice.
func (c *conn) fatal(err error) error {
	e := nixError(err)
	c.log.fail(e)
	c.log.fail(e)
	return err
}

// start begins an operation's work: queued messages go out.
func (c *conn) start() error { return c.log.startWork() }

// reply ends the operation's work successfully and sends its reply (nil for
// none).
// reply ends the op's stderr channel and writes r; the op loop flushes both at once.
func (c *conn) reply(r protocol.Reply) error {
	if err := c.log.lastBuffered(); err != nil {
		return err
	}
	if r != nil {
		r.Write(c.w, c.p)
	}
	return c.w.Err()
}

// errNotSupported is the error for operations Cairn does not do (yet).
func errNotSupported(what string) error {
	return fmt.Errorf("%s is not supported by this daemon", what)
}

// errBuilding answers every operation that would have to build.
var errBuilding = errors.New("building is not supported yet by the Cairn daemon")

func trustError(what string) error {
	return fmt.Errorf("you are not privileged to %s", what)
}

func repairError() error {
	return errors.New("repairing is not allowed because you are not in 'trusted-users'")
}

func lines(s string) []string { return strings.Split(strings.TrimRight(s, "\n"), "\n") }
