package remote

import (
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/storepath"
	"cairn/internal/wire"
)

// payloadGrace is how long an op that failed waits for its payload writer to
// finish before it closes the connection to stop it. A Nix daemon drains a
// framed payload before it reports the error, so the writer ends by itself.
const payloadGrace = 10 * time.Second

// errHungUp marks a connection the daemon closed before answering an op.
var errHungUp = errors.New("daemon hung up")

// conn is one connection: a handshake done, then one op at a time.
type conn struct {
	rwc    io.ReadWriteCloser
	r      *wire.Reader
	w      *wire.Writer
	p      protocol.Params
	info   *protocol.DaemonInfo
	log    func(*protocol.Message)
	broken bool // out of step; close, never reuse
	reused bool // taken from the idle list
	// readSrc answers STDERR_READ while an AddToStoreNar at 1.21–1.22 runs.
	readSrc io.Reader
	// srcErr is set by a payload sender whose source failed, before it
	// closes the connection.
	srcErr atomic.Pointer[error]
}

func newConn(rwc io.ReadWriteCloser, dir storepath.StoreDir, log func(*protocol.Message)) *conn {
	c := &conn{rwc: rwc, r: wire.NewReader(rwc), w: wire.NewWriter(rwc), log: log}
	c.r.StoreDir = dir
	return c
}

func (c *conn) close() error { return c.rwc.Close() }

func (c *conn) handle(m *protocol.Message) error {
	if c.log != nil {
		c.log(m)
	}
	return nil
}

func (c *conn) handshake(opts Options) error {
	info, err := protocol.ClientHandshake(c.r, c.w, protocol.ClientConfig{Version: ClientVersion}, c.handle)
	if err != nil {
		return err
	}
	if !info.Version.AtLeast(18) {
		return fmt.Errorf("handshake: daemon protocol %v is older than 1.18: %w", info.Version, store.ErrUnsupported)
	}
	c.info, c.p = info, info.Params
	if opts.NoSetOptions {
		return nil
	}
	return c.call(&protocol.SetOptionsRequest{ClientOptions: *opts.ClientOptions}, nil, nil)
}

// call writes req, runs send (if any) on its own goroutine while reading the
// stderr channel, then runs reply (if any). It marks c broken unless c is
// still in step: success, or an *Error after a complete exchange.
func (c *conn) call(req protocol.Request, send func(c *conn) error, reply func(c *conn) error) error {
	defer func() { c.readSrc = nil }()
	c.w.Uint64(uint64(req.Op()))
	req.Write(c.w, c.p)
	if send == nil {
		err := c.w.Flush()
		if err == nil {
			_, err = c.r.Peek(1)
		}
		if err != nil {
			c.broken = true
			if err == io.EOF || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
				return fmt.Errorf("%v: %w: %v", req.Op(), errHungUp, err)
			}
			return fmt.Errorf("%v: %w", req.Op(), err)
		}
		return c.finish(req, c.stderr(), reply)
	}
	if c.p.Version.AtLeast(23) {
		done := make(chan error, 1)
		go func() { done <- send(c) }()
		err := c.stderr()
		var serr error
		var de *protocol.Error
		switch {
		case err == nil:
			serr = <-done
		case errors.As(err, &de):
			t := time.NewTimer(payloadGrace)
			select {
			case serr = <-done:
			case <-t.C:
				c.broken = true
				c.rwc.Close()
				serr = <-done
			}
			t.Stop()
		default:
			// The connection broke (or ctx closed it): the sender fails at its
			// next write, but may be blocked reading its source, which the
			// caller owns; don't wait for it.
			c.broken = true
			c.rwc.Close()
			select {
			case serr = <-done:
			default:
				if e := c.srcErr.Load(); e != nil {
					serr = *e
				}
			}
			if serr == nil {
				return fmt.Errorf("%v: %w", req.Op(), err)
			}
		}
		if serr != nil {
			// The source failed or the stream broke: the daemon saw at most
			// part of the payload and the connection is out of step.
			c.broken = true
			return fmt.Errorf("%v: send: %w", req.Op(), serr)
		}
		return c.finish(req, err, reply)
	}
	// Old forms: send pulls nothing itself (STDERR_READ is answered by the
	// stderr handler it installed) or writes the raw payload before the
	// stderr channel.
	if err := send(c); err != nil {
		c.broken = true
		return fmt.Errorf("%v: send: %w", req.Op(), err)
	}
	if err := c.w.Flush(); err != nil {
		c.broken = true
		return fmt.Errorf("%v: send: %w", req.Op(), err)
	}
	return c.finish(req, c.stderr(), reply)
}

// stderr reads the stderr channel up to LAST or ERROR.
func (c *conn) stderr() error {
	return protocol.ProcessStderr(c.r, c.p, c.handleRead)
}

// handleRead answers STDERR_READ from readSrc and passes the rest on.
func (c *conn) handleRead(m *protocol.Message) error {
	if m.Code == protocol.StderrRead {
		return c.answerRead(m.ReadLen)
	}
	return c.handle(m)
}

func (c *conn) finish(req protocol.Request, err error, reply func(c *conn) error) error {
	if err != nil {
		var de *protocol.Error
		if errors.As(err, &de) {
			return newError(req, de)
		}
		c.broken = true
		return fmt.Errorf("%v: %w", req.Op(), err)
	}
	if reply != nil {
		if err := reply(c); err != nil {
			var de *protocol.Error
			if errors.As(err, &de) {
				return newError(req, de)
			}
			c.broken = true
			return fmt.Errorf("%v: reply: %w", req.Op(), err)
		}
	}
	if err := c.r.Err(); err != nil {
		c.broken = true
		return fmt.Errorf("%v: reply: %w", req.Op(), err)
	}
	return nil
}

// Error is an op the daemon reported as failed. It matches store.ErrNotFound
// when the daemon said a path is not valid, store.ErrHashMismatch when it
// reported a hash or size mismatch.
type Error struct {
	Op      protocol.Op
	Subject string // the op's first argument, if any
	Message string // the daemon's message, terminal colours removed
	Traces  []string
	Status  uint64 // exit status (protocol <1.26 only)
	kind    error
}

func (e *Error) Error() string {
	if e.Subject == "" {
		return fmt.Sprintf("%v: %s", e.Op, e.Message)
	}
	return fmt.Sprintf("%v %s: %s", e.Op, e.Subject, e.Message)
}

// Is matches the error kinds of package store.
func (e *Error) Is(target error) bool { return e.kind != nil && target == e.kind }

var ansi = regexp.MustCompile("\x1b\\[[0-9;]*[A-Za-z]")

var (
	notValidRe = regexp.MustCompile(`path '[^']*' is not valid|is not a valid store path|don't know how to build these paths|no such path`)
	mismatchRe = regexp.MustCompile(`hash mismatch|size mismatch|does not match`)
)

func newError(req protocol.Request, de *protocol.Error) *Error {
	e := &Error{Op: req.Op(), Message: strings.TrimSpace(ansi.ReplaceAllString(de.Message, "")), Status: de.Status}
	for _, t := range de.Traces {
		e.Traces = append(e.Traces, ansi.ReplaceAllString(t, ""))
	}
	e.Message = strings.TrimPrefix(e.Message, "error: ")
	switch q := req.(type) {
	case *protocol.PathRequest:
		e.Subject = q.Path.String()
	case *protocol.AddToStoreNarRequest:
		e.Subject = q.Info.Path.String()
	case *protocol.AddToStoreRequest:
		e.Subject = q.Name
	case *protocol.AddTextToStoreRequest:
		e.Subject = q.Name
	}
	switch {
	case notValidRe.MatchString(e.Message):
		e.kind = store.ErrNotFound
	case e.Op == protocol.OpNarFromPath && strings.Contains(e.Message, "No such file or directory"):
		// nix-daemon 2.8 dumps without a validity check.
		e.kind = store.ErrNotFound
	case mismatchRe.MatchString(e.Message):
		e.kind = store.ErrHashMismatch
	}
	return e
}
