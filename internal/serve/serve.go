// Package serve is the server side of Nix's serve protocol, what
// `nix-store --serve` speaks on its standard input and output: the legacy
// ssh:// store and Nix 2.8's remote builders run it on the far end of an
// ssh connection. It serves a local store; with Write it also imports,
// adds and builds.
package serve

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"cairn/internal/derivation"
	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/storepath"
	"cairn/internal/wire"
)

// Server serves one connection.
type Server struct {
	// Store is what is served: a local store (Local) or a daemon's
	// (Remote).
	Store Store
	// Write allows the commands that change the store (nix-store --serve
	// --write).
	Write bool
}

// Store is what a Server needs of the store it serves.
type Store interface {
	StoreDir() storepath.StoreDir
	QueryPathInfo(ctx context.Context, p storepath.StorePath) (*store.PathInfo, error)
	QueryValidPaths(ctx context.Context, paths []storepath.StorePath) ([]storepath.StorePath, error)
	QueryClosure(ctx context.Context, roots []storepath.StorePath, reverse bool) ([]storepath.StorePath, error)
	QueryDerivationOutputs(ctx context.Context, drv storepath.StorePath) (map[string]storepath.StorePath, error)
	IsValidPath(ctx context.Context, p storepath.StorePath) (bool, error)
	NarFromPath(ctx context.Context, p storepath.StorePath, w io.Writer) error
	AddNar(ctx context.Context, info *store.PathInfo, r io.Reader, opts store.AddNarOptions) error
	// Import adds the paths of an export stream, reading from r exactly
	// the stream.
	Import(ctx context.Context, r io.Reader) error
	// Export writes paths as an export stream.
	Export(ctx context.Context, w *wire.Writer, paths []storepath.StorePath) error
	// AddTempRoot keeps p from the collector until the connection ends.
	AddTempRoot(ctx context.Context, p storepath.StorePath) error
	// Substitute tries to make paths valid from binary caches; failures
	// are ignored, as Nix's substitutePaths ignores them.
	Substitute(ctx context.Context, paths []storepath.StorePath)
	// BuildPaths builds targets; a failure is reported as the worker's exit
	// status and message (err is for what ends the connection).
	BuildPaths(ctx context.Context, targets []protocol.DerivedPath, o Options) (status uint64, msg string, err error)
	// BuildDerivation builds drv as the derivation at drvPath.
	BuildDerivation(ctx context.Context, drvPath storepath.StorePath, drv *derivation.Derivation, o Options) (*protocol.BuildResult, error)
}

// Options are a build request's options (protocol.ServeBuildOptions, gated
// on the client's version).
type Options struct {
	MaxSilentTime, Timeout time.Duration
	MaxLogSize             int64 // 0: unlimited
	Repeat                 int
	EnforceDeterminism     bool
	RunDiffHook            bool
	KeepFailed             bool
}

// Serve answers the client on in and out until it closes in. An error
// ends the connection: the protocol has no error replies, so the caller
// reports it on stderr and exits non-zero, as Nix does.
func (s *Server) Serve(ctx context.Context, in io.Reader, out io.Writer) error {
	// One buffer for every reader of in: Import and the NAR of
	// AddToStoreNar read from it directly and must not read ahead.
	br := bufio.NewReaderSize(in, wire.BufferSize)
	r, w := wire.NewReader(br), wire.NewWriter(out)
	r.StoreDir = s.Store.StoreDir()
	cv, err := protocol.ServeServerHandshake(r, w, protocol.ServeVersion)
	if err != nil {
		return err
	}
	v := min(cv, protocol.ServeVersion)
	c := &conn{s: s, ctx: ctx, br: br, r: r, w: w, v: v}
	for {
		cmd := protocol.ServeCmd(r.Uint64())
		if err := r.Err(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("serve: %w", err)
		}
		if err := c.do(cmd); err != nil {
			return err
		}
		if err := r.Err(); err != nil {
			return fmt.Errorf("serve %s: %w", cmd, err)
		}
		if err := w.Flush(); err != nil {
			return fmt.Errorf("serve %s: %w", cmd, err)
		}
	}
}

type conn struct {
	s   *Server
	ctx context.Context
	br  *bufio.Reader
	r   *wire.Reader
	w   *wire.Writer
	v   protocol.Version
}

func (c *conn) requireWrite(what string) error {
	if !c.s.Write {
		return fmt.Errorf("%s is not allowed", what)
	}
	return nil
}

func (c *conn) do(cmd protocol.ServeCmd) error {
	st := c.s.Store
	switch cmd {
	case protocol.ServeQueryValidPaths:
		var a protocol.ServeQueryValidPathsArgs
		a.Read(c.r)
		if c.r.Err() != nil {
			return nil
		}
		return c.queryValidPaths(a)

	case protocol.ServeQueryPathInfos:
		paths := c.r.StorePaths()
		if c.r.Err() != nil {
			return nil
		}
		var infos []*protocol.PathInfo
		for _, p := range paths {
			info, err := st.QueryPathInfo(c.ctx, p)
			if errors.Is(err, store.ErrNotFound) {
				continue // Nix skips what is not valid
			}
			if err != nil {
				return err
			}
			infos = append(infos, (*protocol.PathInfo)(info))
		}
		protocol.WriteServePathInfos(c.w, c.v, infos)
		return nil

	case protocol.ServeDumpStorePath:
		p := c.r.StorePath()
		if c.r.Err() != nil {
			return nil
		}
		return st.NarFromPath(c.ctx, p, c.w)

	case protocol.ServeImportPaths:
		if err := c.requireWrite("importing paths"); err != nil {
			return err
		}
		if err := st.Import(c.ctx, c.br); err != nil {
			return err
		}
		c.w.Uint64(1)
		return nil

	case protocol.ServeExportPaths:
		c.r.Uint64() // obsolete
		paths := c.r.StorePaths()
		if c.r.Err() != nil {
			return nil
		}
		return st.Export(c.ctx, c.w, paths)

	case protocol.ServeBuildPaths:
		if err := c.requireWrite("building paths"); err != nil {
			return err
		}
		return c.buildPaths()

	case protocol.ServeBuildDerivation:
		if err := c.requireWrite("building paths"); err != nil {
			return err
		}
		return c.buildDerivation()

	case protocol.ServeQueryClosure:
		includeOutputs := c.r.Bool()
		paths := c.r.StorePaths()
		if c.r.Err() != nil {
			return nil
		}
		closure, err := c.closure(paths, includeOutputs)
		if err != nil {
			return err
		}
		c.w.StorePaths(closure)
		return nil

	case protocol.ServeAddToStoreNar:
		if err := c.requireWrite("importing paths"); err != nil {
			return err
		}
		var a protocol.ServeAddToStoreNarArgs
		a.Read(c.r)
		if c.r.Err() != nil {
			return nil
		}
		info := store.PathInfo(a.Info)
		nar := io.LimitReader(c.br, int64(info.NarSize))
		if err := st.AddNar(c.ctx, &info, nar, store.AddNarOptions{}); err != nil {
			return err
		}
		// What the client sent beyond the NAR, up to narSize.
		if _, err := io.Copy(io.Discard, nar); err != nil {
			return err
		}
		c.w.Uint64(1)
		return nil
	}
	return fmt.Errorf("unknown serve command %d", uint64(cmd))
}

// queryValidPaths is command 1: with Write, lock takes temporary roots and
// substitute tries the caches first.
func (c *conn) queryValidPaths(a protocol.ServeQueryValidPathsArgs) error {
	st := c.s.Store
	if a.Lock && c.s.Write {
		for _, p := range a.Paths {
			if err := st.AddTempRoot(c.ctx, p); err != nil {
				return err
			}
		}
	}
	if a.Substitute && c.s.Write {
		st.Substitute(c.ctx, a.Paths)
	}
	valid, err := st.QueryValidPaths(c.ctx, a.Paths)
	if err != nil {
		return err
	}
	c.w.StorePaths(valid)
	return nil
}

// closure is the closure of paths; with includeOutputs also the valid
// outputs of every derivation in it, and their closures.
func (c *conn) closure(paths []storepath.StorePath, includeOutputs bool) ([]storepath.StorePath, error) {
	st := c.s.Store
	seen := map[storepath.StorePath]bool{}
	todo := paths
	for len(todo) > 0 {
		closure, err := st.QueryClosure(c.ctx, todo, false)
		if err != nil {
			return nil, err
		}
		todo = nil
		for _, p := range closure {
			if seen[p] {
				continue
			}
			seen[p] = true
			if !includeOutputs || !p.IsDerivation() {
				continue
			}
			outs, err := st.QueryDerivationOutputs(c.ctx, p)
			if err != nil {
				return nil, err
			}
			for _, o := range outs {
				if ok, err := st.IsValidPath(c.ctx, o); err != nil {
					return nil, err
				} else if ok && !seen[o] {
					todo = append(todo, o)
				}
			}
		}
	}
	out := make([]storepath.StorePath, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	return out, nil
}

// options are a build request's options, as the client's version has them;
// nix-store --serve also runs the diff hook from 2.3 on.
func (c *conn) options(o protocol.ServeBuildOptions) Options {
	opts := Options{MaxSilentTime: seconds(o.MaxSilentTime), Timeout: seconds(o.BuildTimeout)}
	if c.v.AtLeast(2) {
		opts.MaxLogSize = int64(min(o.MaxLogSize, 1<<62))
	}
	if c.v.AtLeast(3) {
		opts.Repeat = int(min(o.NrRepeats, 16))
		opts.EnforceDeterminism = o.EnforceDeterminism
		opts.RunDiffHook = true
	}
	if c.v.AtLeast(7) {
		opts.KeepFailed = o.KeepFailed
	}
	return opts
}

func seconds(n uint64) time.Duration { return time.Duration(min(n, 1<<31)) * time.Second }

// buildPaths is command 6: paths (DRV!OUT,… or opaque), then options; the
// reply is 0, or the worker's exit status and the error.
func (c *conn) buildPaths() error {
	specs := c.r.Strings(wire.MaxStringLen)
	var o protocol.ServeBuildOptions
	o.Read(c.r, c.v)
	if c.r.Err() != nil {
		return nil
	}
	var targets []protocol.DerivedPath
	for _, spec := range specs {
		path, outs, drvOutputs := strings.Cut(spec, "!")
		p, err := c.s.Store.StoreDir().Parse(path)
		if err != nil {
			return err
		}
		t := protocol.DerivedPath{Path: p, Built: p.IsDerivation(), All: p.IsDerivation()}
		if drvOutputs && outs != "*" {
			t.All, t.Outputs = false, slices.Sorted(slices.Values(strings.Split(outs, ",")))
		}
		targets = append(targets, t)
	}
	status, msg, err := c.s.Store.BuildPaths(c.ctx, targets, c.options(o))
	if err != nil {
		return err
	}
	c.w.Uint64(status)
	if status != 0 {
		c.w.String(msg)
	}
	return nil
}

// buildDerivation is command 8: a BasicDerivation built as the derivation
// at its path; the reply is the build result.
func (c *conn) buildDerivation() error {
	var a protocol.ServeBuildDerivationArgs
	a.Read(c.r, c.v)
	if c.r.Err() != nil {
		return nil
	}
	res, err := c.s.Store.BuildDerivation(c.ctx, a.DrvPath, a.Drv, c.options(a.Options))
	if err != nil {
		return err
	}
	protocol.WriteServeBuildResult(c.w, c.v, res)
	return nil
}
