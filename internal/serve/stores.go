package serve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"cairn/internal/build"
	"cairn/internal/derivation"
	"cairn/internal/gcroots"
	"cairn/internal/nixhash"
	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/store/remote"
	"cairn/internal/storepath"
	"cairn/internal/wire"
)

// Local serves a local store, building with Builder.
type Local struct {
	*local.Store
	// Roots holds the temporary roots QueryValidPaths takes; nil: none.
	Roots *gcroots.Roots
	// Builder builds and substitutes; nil refuses both.
	Builder *build.Builder
	// Options are the settings' build options; a request's own override
	// some, as nix-store --serve does.
	Options build.Options
	// Log receives the builds' output and errors (the process's stderr).
	Log io.Writer

	temp *gcroots.TempRoots
}

func (l *Local) Import(ctx context.Context, r io.Reader) error {
	_, err := l.Store.Import(ctx, r)
	return err
}

func (l *Local) Export(ctx context.Context, w *wire.Writer, paths []storepath.StorePath) error {
	return l.Store.Export(ctx, w, paths)
}

func (l *Local) AddTempRoot(ctx context.Context, p storepath.StorePath) error {
	if l.Roots == nil {
		return nil
	}
	if l.temp == nil {
		t, err := l.Roots.OpenTemp()
		if err != nil {
			return err
		}
		l.temp = t
	}
	return l.temp.Add(ctx, p)
}

func (l *Local) Substitute(ctx context.Context, paths []storepath.StorePath) {
	if l.Builder == nil {
		return
	}
	for _, p := range paths {
		l.Builder.EnsurePaths(ctx, []storepath.StorePath{p}, l.Options, nil)
	}
}

// buildOptions are the settings' options with the request's: no
// substitution and no log kept, as nix-store --serve sets them, and the
// log shown as it comes (on stderr), so failures quote none.
func (l *Local) buildOptions(o Options) build.Options {
	opts := l.Options
	opts.MaxSilentTime, opts.Timeout, opts.MaxLogSize = o.MaxSilentTime, o.Timeout, o.MaxLogSize
	opts.Repeat, opts.EnforceDeterminism, opts.KeepFailed = o.Repeat, o.EnforceDeterminism, o.KeepFailed
	opts.RunDiffHook = opts.RunDiffHook || o.RunDiffHook
	opts.DiscardLog = true
	opts.LogShown = true
	opts.Subst.Caches = nil
	return opts
}

func (l *Local) BuildPaths(ctx context.Context, targets []protocol.DerivedPath, o Options) (uint64, string, error) {
	if l.Builder == nil {
		return 0, "", errors.New("building is not supported by this store")
	}
	opts := l.buildOptions(o)
	log := &logger{w: l.Log}
	var drvs []build.Target
	var opaque []storepath.StorePath
	for _, t := range targets {
		if !t.Built {
			opaque = append(opaque, t.Path)
			continue
		}
		drvs = append(drvs, build.Target{Drv: t.Path, Outputs: t.Outputs})
	}
	if len(opaque) > 0 {
		if err := l.Builder.EnsurePaths(ctx, opaque, opts, log); err != nil {
			return 1, err.Error(), nil
		}
	}
	results, err := l.Builder.Build(ctx, drvs, opts, log)
	if err != nil {
		return 0, "", err
	}
	failed, status, err := build.Failure(results)
	if err == nil {
		return 0, "", nil
	}
	if len(failed) > 1 {
		log.Error(failed[0].Err.Error())
	}
	return uint64(status), err.Error(), nil
}

func (l *Local) BuildDerivation(ctx context.Context, drvPath storepath.StorePath, drv *derivation.Derivation, o Options) (*protocol.BuildResult, error) {
	if l.Builder == nil {
		return nil, errors.New("building is not supported by this store")
	}
	res := l.Builder.BuildDerivation(ctx, drvPath, drv, l.buildOptions(o), &logger{w: l.Log}).Wire()
	return &res, nil
}

// Close releases the temporary roots (not the store, which stays the
// caller's).
func (l *Local) Close() error {
	if l.temp != nil {
		return l.temp.Close()
	}
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

// Remote serves a daemon's store, as nix-store --serve does for a user who
// reaches the store through the daemon: the daemon decides what the user
// may do. Its client options carry the build settings.
type Remote struct {
	*remote.Store
}

func (r *Remote) Substitute(ctx context.Context, paths []storepath.StorePath) {
	for _, p := range paths {
		r.EnsurePath(ctx, p)
	}
}

// Import reads the export stream and adds each path from its NAR, which is
// spooled to a temporary file first: the daemon wants the NAR's hash
// before the NAR.
func (r *Remote) Import(ctx context.Context, in io.Reader) error {
	er := protocol.NewExportReader(wire.NewReader(in))
	for {
		f, err := os.CreateTemp("", "cairn-serve-nar-*")
		if err != nil {
			return err
		}
		os.Remove(f.Name())
		h := nixhash.NewHasher(nixhash.SHA256)
		n := &countingWriter{}
		ent, err := er.Next(io.MultiWriter(f, h, n))
		if err == io.EOF {
			f.Close()
			return nil
		}
		if err == nil {
			_, err = f.Seek(0, io.SeekStart)
		}
		if err == nil {
			info := &store.PathInfo{Path: ent.Path, References: ent.References, Deriver: ent.Deriver,
				NarHash: h.Sum(), NarSize: n.n}
			err = r.AddNar(ctx, info, f, store.AddNarOptions{})
		}
		f.Close()
		if err != nil {
			return err
		}
	}
}

type countingWriter struct{ n uint64 }

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n += uint64(len(p))
	return len(p), nil
}

// Export writes the paths in the order Nix's exportPaths does (referenced
// paths first, as local.Store.Export), each NAR streamed from the daemon.
func (r *Remote) Export(ctx context.Context, w *wire.Writer, paths []storepath.StorePath) error {
	paths = slices.Clone(paths)
	storepath.SortPaths(paths)
	paths = slices.Compact(paths)
	infos, err := r.QueryPathInfos(ctx, paths)
	if err != nil {
		return err
	}
	byPath := make(map[storepath.StorePath]*store.PathInfo, len(infos))
	for _, info := range infos {
		byPath[info.Path] = info
	}
	for _, p := range paths {
		if byPath[p] == nil {
			return fmt.Errorf("export: path '%s' is not valid", p)
		}
	}
	sorted, err := store.TopoSort(paths, func(p storepath.StorePath) []storepath.StorePath { return byPath[p].References })
	if err != nil {
		return err
	}
	slices.Reverse(sorted)
	ew := protocol.NewExportWriter(w)
	for _, p := range sorted {
		info := byPath[p]
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(r.NarFromPath(ctx, p, pw)) }()
		err = ew.Add(&protocol.ExportEntry{Path: p, References: info.References, Deriver: info.Deriver}, pr)
		pr.Close()
		if err != nil {
			return err
		}
	}
	return ew.Close()
}

// BuildPaths builds through the daemon; its failure's message and status
// (worker protocol < 1.26 only; 1 otherwise, as the client sees it) are the
// reply.
func (r *Remote) BuildPaths(ctx context.Context, targets []protocol.DerivedPath, o Options) (uint64, string, error) {
	err := r.Store.BuildPaths(ctx, targets, protocol.BuildNormal)
	var re *remote.Error
	switch {
	case err == nil:
		return 0, "", nil
	case errors.As(err, &re):
		return max(re.Status, 1), re.Message, nil
	}
	return 0, "", err
}

func (r *Remote) BuildDerivation(ctx context.Context, drvPath storepath.StorePath, drv *derivation.Derivation, o Options) (*protocol.BuildResult, error) {
	return r.Store.BuildDerivation(ctx, drvPath, drv, protocol.BuildNormal)
}
