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
	"strings"
	"time"

	"cairn/internal/build"
	"cairn/internal/gcroots"
	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
	"cairn/internal/wire"
)

// Server serves one connection.
type Server struct {
	Store *local.Store
	// Roots, when set, holds the temporary roots QueryValidPaths takes
	// with its lock flag (with Write), until the connection ends.
	Roots *gcroots.Roots
	// Builder builds for BuildPaths and BuildDerivation, and substitutes
	// for QueryValidPaths; nil refuses them.
	Builder *build.Builder
	// Options are the settings' build options; each build request's own
	// override some of them, as nix-store --serve does.
	Options build.Options
	// Write allows the commands that change the store (nix-store --serve
	// --write).
	Write bool
	// Log receives build output and errors (the process's stderr).
	Log io.Writer
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
	defer c.close()
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
	s    *Server
	ctx  context.Context
	br   *bufio.Reader
	r    *wire.Reader
	w    *wire.Writer
	v    protocol.Version
	temp *gcroots.TempRoots
}

func (c *conn) close() {
	if c.temp != nil {
		c.temp.Close()
	}
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
		if _, err := st.Import(c.ctx, c.br); err != nil {
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
// substitute tries the caches first (failures ignored, as Nix's
// substitutePaths).
func (c *conn) queryValidPaths(a protocol.ServeQueryValidPathsArgs) error {
	if a.Lock && c.s.Write && c.s.Roots != nil {
		if c.temp == nil {
			t, err := c.s.Roots.OpenTemp()
			if err != nil {
				return err
			}
			c.temp = t
		}
		for _, p := range a.Paths {
			if err := c.temp.Add(c.ctx, p); err != nil {
				return err
			}
		}
	}
	if a.Substitute && c.s.Write && c.s.Builder != nil {
		for _, p := range a.Paths {
			c.s.Builder.EnsurePaths(c.ctx, []storepath.StorePath{p}, c.s.Options, nil)
		}
	}
	valid, err := c.s.Store.QueryValidPaths(c.ctx, a.Paths)
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

// buildOptions are the settings' options with a build request's own, as
// nix-store --serve sets them: no substitution, no log kept, the diff hook
// run (≥2.3).
func (c *conn) buildOptions(o protocol.ServeBuildOptions) build.Options {
	opts := c.s.Options
	opts.MaxSilentTime = seconds(o.MaxSilentTime)
	opts.Timeout = seconds(o.BuildTimeout)
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
	opts.DiscardLog = true
	opts.LogShown = true // on stderr, line by line
	opts.Subst.Caches = nil
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
	if c.s.Builder == nil {
		return errors.New("building is not supported by this store")
	}
	opts := c.buildOptions(o)
	var targets []build.Target
	var opaque []storepath.StorePath
	for _, spec := range specs {
		path, outs, drvOutputs := strings.Cut(spec, "!")
		p, err := c.s.Store.StoreDir().Parse(path)
		if err != nil {
			return err
		}
		if !drvOutputs {
			if p.IsDerivation() {
				targets = append(targets, build.Target{Drv: p})
			} else {
				opaque = append(opaque, p)
			}
			continue
		}
		t := build.Target{Drv: p}
		if outs != "*" {
			t.Outputs = strings.Split(outs, ",")
		}
		targets = append(targets, t)
	}
	log := &logger{w: c.s.Log}
	if len(opaque) > 0 {
		if err := c.s.Builder.EnsurePaths(c.ctx, opaque, opts, log); err != nil {
			c.w.Uint64(1)
			c.w.String(err.Error())
			return nil
		}
	}
	results, err := c.s.Builder.Build(c.ctx, targets, opts, log)
	if err != nil {
		return err
	}
	var failed []build.Result
	for _, res := range results {
		if !res.Status.Success() {
			failed = append(failed, res)
		}
	}
	switch len(failed) {
	case 0:
		c.w.Uint64(0)
	case 1:
		c.w.Uint64(uint64(build.ExitStatus(failed)))
		c.w.String(failed[0].Err.Error())
	default:
		log.Error(failed[0].Err.Error())
		var names []string
		for _, res := range failed {
			names = append(names, "'"+res.Target.Drv.String()+"'")
		}
		c.w.Uint64(uint64(build.ExitStatus(failed)))
		c.w.String(fmt.Sprintf("build of %s failed", strings.Join(names, ", ")))
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
	if c.s.Builder == nil {
		return errors.New("building is not supported by this store")
	}
	res := c.s.Builder.BuildDerivation(c.ctx, a.DrvPath, a.Drv, c.buildOptions(a.Options), &logger{w: c.s.Log})
	out := protocol.BuildResult{
		Status:             protocol.BuildStatus(res.Status),
		TimesBuilt:         uint64(res.TimesBuilt),
		IsNonDeterministic: res.NonDeterministic,
		StartTime:          res.Start,
		StopTime:           res.Stop,
	}
	if res.Err != nil {
		out.ErrorMsg = res.Err.Error()
	}
	if res.Status.Success() {
		out.BuiltOutputs = map[string]protocol.BuiltOutput{}
		for name, p := range res.Outputs {
			out.BuiltOutputs[name] = protocol.BuiltOutput{OutPath: p}
		}
	}
	protocol.WriteServeBuildResult(c.w, c.v, &out)
	return nil
}

// logger writes builds' output and errors to the process's stderr, where
// the client (Nix's build-remote, over ssh) shows them.
type logger struct{ w io.Writer }

func (l *logger) BuildStarted(drv storepath.StorePath) build.BuildLog { return l }
func (l *logger) Progress(done, expected, running, failed int)        {}
func (l *logger) Error(msg string) {
	if l.w != nil {
		fmt.Fprintf(l.w, "error: %s\n", msg)
	}
}
func (l *logger) Line(text string) {
	if l.w != nil {
		fmt.Fprintln(l.w, text)
	}
}
func (l *logger) Message(string) {}
func (l *logger) Done()          {}
