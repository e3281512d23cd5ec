package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"cairn/internal/build"
	"cairn/internal/derivation"
	"cairn/internal/gc"
	"cairn/internal/gcroots"
	"cairn/internal/nar"
	"cairn/internal/narinfo"
	"cairn/internal/nixhash"
	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
	"cairn/internal/substitute"
	"cairn/internal/wire"
)

// Interfaces the daemon asks the store for beyond package store's.
type (
	batcher  interface{ NewBatch() *local.Batch }
	importer interface {
		Import(ctx context.Context, r io.Reader) ([]storepath.StorePath, error)
	}
	verifier interface {
		Verify(ctx context.Context, opts local.VerifyOptions) (*local.VerifyResult, error)
	}
	optimiser interface {
		Optimise(ctx context.Context, opts local.OptimiseOptions) (*local.OptimiseStats, error)
	}
	registrar interface {
		RegisterValidPaths(ctx context.Context, infos []*store.PathInfo) error
	}
	realPather interface {
		RealPath(p storepath.StorePath) string
	}
)

// capability returns the store as T, or an error naming what is missing.
func capability[T any](c *conn, what string) (T, error) {
	v, ok := c.view().(T)
	if !ok {
		var zero T
		return zero, errNotSupported(what)
	}
	return v, nil
}

// view is the store this connection sees: the daemon's, or a recursive
// build's restricted one.
func (c *conn) view() store.Store {
	if c.restricted != nil {
		return c.restricted
	}
	return c.s.Store
}

// abortError ends the connection without a word: the client expects raw
// data (a NAR) that can no longer come.
type abortError struct{ err error }

func (e *abortError) Error() string { return e.err.Error() }

// perform runs one operation whose arguments are read: its work, its stderr
// messages, and its reply.
func (c *conn) perform(req protocol.Request) error {
	// Automatic collection (min-free), where Nix's daemon checks: adds wait
	// for a collection that is due, builds only start one.
	if c.rec != nil {
		if handled, err := c.recursiveOp(req); handled {
			return err
		}
	}
	tell := func(s string) { c.log.Log(protocol.LvlInfo, s) }
	switch req.(type) {
	case *protocol.AddToStoreRequest, *protocol.AddTextToStoreRequest, *protocol.AddToStoreNarRequest, *protocol.AddMultipleToStoreRequest:
		c.s.AutoGC.Check(c.ctx, true, tell)
	case *protocol.BuildPathsRequest, *protocol.BuildDerivationRequest:
		c.s.AutoGC.Check(c.ctx, false, tell)
	}
	switch q := req.(type) {
	case *protocol.PathRequest:
		return c.pathOp(q)
	case *protocol.EmptyRequest:
		return c.emptyOp(q)
	case *protocol.PathsRequest:
		c.start()
		if q.Code == protocol.OpClearFailedPaths {
			return c.reply(&protocol.U64Reply{Value: 1})
		}
		paths, err := c.substitutablePaths(q.Paths)
		if err != nil {
			return err
		}
		return c.reply(&protocol.PathsReply{Paths: sorted(paths)})
	case *protocol.QueryValidPathsRequest:
		c.start()
		vq, err := capability[store.ValidityQuerier](c, "querying validity")
		if err != nil {
			return err
		}
		valid, err := vq.QueryValidPaths(c.ctx, q.Paths)
		if err != nil {
			return err
		}
		if q.Substitute && len(valid) < len(q.Paths) && c.rec == nil {
			// As Nix's substitutePaths: what the caches have is fetched
			// first (not derivations); a failure is only a warning.
			var missing []storepath.StorePath
			for _, p := range q.Paths {
				if !slices.Contains(valid, p) && !p.IsDerivation() {
					missing = append(missing, p)
				}
			}
			if subs, err := c.substitutableIn(c.substConfig(), missing); err == nil && len(subs) > 0 {
				have := make([]storepath.StorePath, len(subs))
				for i, s := range subs {
					have[i] = s.Path
				}
				if err := c.ensurePaths(have); err != nil && c.ctx.Err() == nil {
					c.log.Warn(err.Error())
				}
			}
			if valid, err = vq.QueryValidPaths(c.ctx, q.Paths); err != nil {
				return err
			}
		}
		return c.reply(&protocol.PathsReply{Paths: sorted(valid)})
	case *protocol.QueryPathFromHashPartRequest:
		c.start()
		hq, err := capability[store.HashPartQuerier](c, "querying by hash part")
		if err != nil {
			return err
		}
		p, err := hq.QueryPathFromHashPart(c.ctx, q.HashPart)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		return c.reply(&protocol.PathReply{Path: p})
	case *protocol.QuerySubstitutablePathInfosRequest:
		c.start()
		infos, err := c.substitutable(q.Paths)
		if err != nil {
			return err
		}
		return c.reply(&protocol.SubstitutablePathInfosReply{Infos: infos})
	case *protocol.AddToStoreRequest:
		if c.p.Version.AtLeast(25) && !c.p.Guix {
			return c.addToStore(q)
		}
		return c.addToStoreOld(q)
	case *protocol.AddTextToStoreRequest:
		c.start()
		adder, err := capability[store.CAAdder](c, "adding to the store")
		if err != nil {
			return err
		}
		info, err := adder.AddCA(c.ctx, q.Name, nixhash.Text, nixhash.SHA256, q.References, strings.NewReader(q.Text))
		if err != nil {
			return err
		}
		return c.reply(&protocol.PathReply{Path: info.Path})
	case *protocol.AddToStoreNarRequest:
		return c.addToStoreNar(q)
	case *protocol.AddMultipleToStoreRequest:
		return c.addMultipleToStore(q)
	case *protocol.ExportPathRequest:
		return c.exportPath(q.Path)
	case *protocol.AddIndirectRootRequest:
		c.start()
		if c.s.Roots == nil {
			return errNotSupported("adding GC roots")
		}
		if err := c.s.Roots.AddIndirect(q.Path); err != nil {
			return err
		}
		return c.reply(&protocol.U64Reply{Value: 1})
	case *protocol.AddPermRootRequest:
		return c.addPermRoot(q)
	case *protocol.SetOptionsRequest:
		c.start()
		c.applyOptions(&q.ClientOptions)
		return c.reply(nil)
	case *protocol.VerifyStoreRequest:
		return c.verifyStore(q)
	case *protocol.AddSignaturesRequest:
		return c.addSignatures(q)
	case *protocol.AddBuildLogRequest:
		return c.addBuildLog(q)
	case *protocol.QueryMissingRequest:
		c.start()
		act := c.log.StartActivity(protocol.LvlDebug, protocol.ActUnknown, "querying info about missing paths")
		mi, err := c.queryMissing(q.Paths)
		c.log.StopActivity(act)
		if err != nil {
			return err
		}
		return c.reply(mi)
	case *protocol.BuildPathsRequest:
		return c.buildPaths(q)
	case *protocol.BuildDerivationRequest:
		return c.buildDerivation(q)
	case *protocol.CollectGarbageRequest:
		return c.collectGarbage(q)
	case *protocol.RegisterDrvOutputRequest:
		return c.registerDrvOutput(q)
	case *protocol.QueryRealisationRequest:
		return c.queryRealisation(q)
	}
	return fmt.Errorf("invalid operation %s", hl(fmt.Sprint(uint64(req.Op()))))
}

func sorted(ps []storepath.StorePath) []storepath.StorePath {
	ps = slices.Clone(ps)
	storepath.SortPaths(ps)
	return slices.Compact(ps)
}

func (c *conn) pathInfo(p storepath.StorePath) (*store.PathInfo, error) {
	q, err := capability[store.PathInfoQuerier](c, "querying path info")
	if err != nil {
		return nil, err
	}
	return q.QueryPathInfo(c.ctx, p)
}

func (c *conn) isValid(p storepath.StorePath) (bool, error) {
	q, err := capability[store.ValidityQuerier](c, "querying validity")
	if err != nil {
		return false, err
	}
	return q.IsValidPath(c.ctx, p)
}

func (c *conn) pathOp(q *protocol.PathRequest) error {
	p := q.Path
	if q.Code == protocol.OpNarFromPath {
		return c.narFromPath(p)
	}
	c.start()
	switch q.Code {
	case protocol.OpIsValidPath:
		ok, err := c.isValid(p)
		if err != nil {
			return err
		}
		return c.reply(&protocol.BoolReply{Value: ok})
	case protocol.OpHasSubstitutes:
		paths, err := c.substitutablePaths([]storepath.StorePath{p})
		if err != nil {
			return err
		}
		return c.reply(&protocol.BoolReply{Value: len(paths) > 0})
	case protocol.OpQuerySubstitutablePathInfo:
		infos, err := c.substitutable([]storepath.StorePath{p})
		if err != nil || len(infos) == 0 {
			if err != nil {
				return err
			}
			return c.reply(&protocol.SubstitutablePathInfoReply{})
		}
		return c.reply(&protocol.SubstitutablePathInfoReply{Valid: true, Info: infos[0]})
	case protocol.OpQueryPathInfo:
		info, err := c.pathInfo(p)
		if errors.Is(err, store.ErrNotFound) && !c.p.Guix && c.p.Version.AtLeast(17) {
			return c.reply(&protocol.QueryPathInfoReply{})
		}
		if err != nil {
			return err
		}
		return c.reply(&protocol.QueryPathInfoReply{Valid: true, Info: (*protocol.PathInfo)(info)})
	case protocol.OpQueryPathHash, protocol.OpQueryReferences, protocol.OpQueryDeriver:
		info, err := c.pathInfo(p)
		if err != nil {
			return err
		}
		switch q.Code {
		case protocol.OpQueryPathHash:
			return c.reply(&protocol.StringReply{Value: info.NarHash.Base16()})
		case protocol.OpQueryReferences:
			return c.reply(&protocol.PathsReply{Paths: sorted(info.References)})
		default:
			return c.reply(&protocol.PathReply{Path: info.Deriver})
		}
	case protocol.OpQueryReferrers:
		rq, err := capability[store.ReferrerQuerier](c, "querying referrers")
		if err != nil {
			return err
		}
		ps, err := rq.QueryReferrers(c.ctx, p)
		if err != nil {
			return err
		}
		return c.reply(&protocol.PathsReply{Paths: sorted(ps)})
	case protocol.OpQueryValidDerivers, protocol.OpQueryDerivationOutputs, protocol.OpQueryDerivationOutputMap:
		dq, err := capability[store.DerivationQuerier](c, "querying derivations")
		if err != nil {
			return err
		}
		if q.Code == protocol.OpQueryValidDerivers {
			ps, err := dq.QueryValidDerivers(c.ctx, p)
			if err != nil {
				return err
			}
			return c.reply(&protocol.PathsReply{Paths: sorted(ps)})
		}
		outs, err := dq.QueryDerivationOutputs(c.ctx, p)
		if err != nil {
			return err
		}
		if q.Code == protocol.OpQueryDerivationOutputMap {
			return c.reply(&protocol.OutputMapReply{Outputs: outs})
		}
		var ps []storepath.StorePath
		for _, o := range outs {
			ps = append(ps, o)
		}
		return c.reply(&protocol.PathsReply{Paths: sorted(ps)})
	case protocol.OpQueryDerivationOutputNames:
		drv, err := c.readDerivation(p)
		if err != nil {
			return err
		}
		return c.reply(&protocol.StringsReply{Values: drv.OutputNames()})
	case protocol.OpEnsurePath:
		ok, err := c.isValid(p)
		if err != nil {
			return err
		}
		if !ok {
			if err := c.ensurePaths([]storepath.StorePath{p}); err != nil {
				return missingError(err, fmt.Sprintf("path '%s' does not exist and cannot be created", hl(p.String())))
			}
		}
		return c.reply(&protocol.U64Reply{Value: 1})
	case protocol.OpAddTempRoot:
		if err := c.addTempRoot(p); err != nil {
			return err
		}
		return c.reply(&protocol.U64Reply{Value: 1})
	}
	return fmt.Errorf("invalid operation %s", hl(fmt.Sprint(uint64(q.Code))))
}

func (c *conn) emptyOp(q *protocol.EmptyRequest) error {
	if q.Code == protocol.OpImportPaths {
		return c.importPaths()
	}
	c.start()
	switch q.Code {
	case protocol.OpSyncWithGC:
		return c.reply(&protocol.U64Reply{Value: 1})
	case protocol.OpFindRoots:
		return c.findRoots()
	case protocol.OpQueryAllValidPaths:
		aq, err := capability[store.AllPathsQuerier](c, "listing the store")
		if err != nil {
			return err
		}
		ps, err := aq.QueryAllValidPaths(c.ctx)
		if err != nil {
			return err
		}
		return c.reply(&protocol.PathsReply{Paths: sorted(ps)})
	case protocol.OpOptimiseStore:
		o, err := capability[optimiser](c, "optimising the store")
		if err != nil {
			return err
		}
		stats, err := o.Optimise(c.ctx, local.OptimiseOptions{Log: c.logWriter(protocol.LvlWarn)})
		if err != nil {
			return err
		}
		// nix-daemon's optimiseStore logs its summary to the client.
		c.log.Log(protocol.LvlInfo, stats.String())
		return c.reply(&protocol.U64Reply{Value: 1})
	case protocol.OpQueryFailedPaths:
		return c.reply(&protocol.PathsReply{})
	case protocol.OpBuiltinBuilders:
		return c.reply(&protocol.StringsReply{})
	}
	return fmt.Errorf("invalid operation %s", hl(fmt.Sprint(uint64(q.Code))))
}

// narFromPath sends a valid path's NAR raw after STDERR_LAST. Unlike nix-daemon
// 2.8, validity is checked first, so an invalid path gets a proper error (and
// the connection closes, see below).
func (c *conn) narFromPath(p storepath.StorePath) error {
	c.start()
	nr, err := capability[store.NarReader](c, "reading NARs")
	if err != nil {
		return err
	}
	ok, err := c.isValid(p)
	if err != nil {
		return err
	}
	if !ok {
		// Nix clients up to at least 2.8 ignore an error here and go on to read
		// a NAR: the error goes out, then the connection ends, so such a client
		// fails on end-of-file (as it does with nix-daemon) instead of waiting.
		err := store.NotValid(p)
		if ferr := c.log.fail(nixError(err)); ferr != nil {
			return ferr
		}
		return &abortError{err}
	}
	if err := c.reply(nil); err != nil {
		return err
	}
	if err := nr.NarFromPath(c.ctx, p, c.w); err != nil {
		return &abortError{fmt.Errorf("nar from path %s: %w", p, err)}
	}
	return c.w.Flush()
}

// logWriter is an io.Writer whose lines become log messages at level.
func (c *conn) logWriter(level protocol.Verbosity) io.Writer {
	return writerFunc(func(b []byte) (int, error) {
		for _, l := range lines(string(b)) {
			c.log.Log(level, l)
		}
		return len(b), nil
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// checkAdd applies the rules for adding a path with its metadata: repair needs
// trust, and unless the client is trusted and asked not to check, a path must
// carry a valid signature by a trusted key or be content-addressed when
// require-sigs is set.
func (c *conn) checkAdd(info *store.PathInfo, repair, dontCheckSigs bool) error {
	trusted := ClientFrom(c.ctx).Trusted
	if repair && !trusted {
		return repairError()
	}
	if (dontCheckSigs && trusted) || !c.settings.Bool("require-sigs") || info.ContentAddressed() {
		return nil
	}
	if narinfo.VerifyAny(info.Fingerprint(), narinfo.ParseSignatures(info.Signatures), c.publicKeys()) {
		return nil
	}
	return fmt.Errorf("cannot add path '%s' because it lacks a valid signature", hl(info.Path.String()))
}

// drain consumes the rest of a framed upload; failing that, the connection is
// out of step.
func drain(fr *wire.FramedReader, err error) error {
	if derr := fr.Drain(); derr != nil {
		if err == nil {
			err = derr
		}
		return broken(err)
	}
	return err
}

func (c *conn) addToStoreNar(q *protocol.AddToStoreNarRequest) error {
	info := store.PathInfo(q.Info)
	trusted := ClientFrom(c.ctx).Trusted
	if !trusted {
		info.Ultimate = false
	}
	opts := store.AddNarOptions{Repair: q.Repair}
	add := func(r io.Reader) error {
		if err := c.checkAdd(&info, q.Repair, q.DontCheckSigs); err != nil {
			return err
		}
		adder, err := capability[store.NarAdder](c, "adding NARs")
		if err != nil {
			return err
		}
		return adder.AddNar(c.ctx, &info, r, opts)
	}
	switch {
	case c.p.Version.AtLeast(23):
		fr := wire.NewFramedReader(c.r)
		c.start()
		if err := drain(fr, add(fr)); err != nil {
			return err
		}
	case c.p.Version.AtLeast(21):
		c.start()
		if err := add(&tunnelReader{c: c}); err != nil {
			return err
		}
	default:
		// The NAR follows unframed: read it whatever happens.
		c.start()
		if err := c.checkAdd(&info, q.Repair, q.DontCheckSigs); err != nil {
			if cerr := protocol.CopyNAR(io.Discard, c.r); cerr != nil {
				return broken(cerr)
			}
			return err
		}
		if err := add(c.r); err != nil {
			return broken(err)
		}
	}
	return c.reply(nil)
}

func (c *conn) addMultipleToStore(q *protocol.AddMultipleToStoreRequest) error {
	fr := wire.NewFramedReader(c.r)
	c.start()
	err := c.addMultiple(fr, q)
	if err := drain(fr, err); err != nil {
		return err
	}
	return c.reply(nil)
}

func (c *conn) addMultiple(fr *wire.FramedReader, q *protocol.AddMultipleToStoreRequest) error {
	trusted := ClientFrom(c.ctx).Trusted
	opts := store.AddNarOptions{Repair: q.Repair}
	var add func(info *store.PathInfo, r io.Reader) error
	var commit func() error
	if b, ok := c.view().(batcher); ok {
		batch := b.NewBatch()
		defer batch.Discard()
		add = func(info *store.PathInfo, r io.Reader) error { return batch.AddNar(c.ctx, info, r, opts) }
		commit = func() error { return batch.Commit(c.ctx) }
	} else {
		adder, err := capability[store.NarAdder](c, "adding NARs")
		if err != nil {
			return err
		}
		add = func(info *store.PathInfo, r io.Reader) error { return adder.AddNar(c.ctx, info, r, opts) }
		commit = func() error { return nil }
	}
	mr := protocol.NewMultipleReader(fr, c.s.Store.StoreDir())
	for {
		pinfo, nr, err := mr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		info := (*store.PathInfo)(pinfo)
		if !trusted {
			info.Ultimate = false
		}
		if err := c.checkAdd(info, q.Repair, q.DontCheckSigs); err != nil {
			return err
		}
		if err := add(info, nr); err != nil {
			return err
		}
	}
	return commit()
}

// addToStore is AddToStore from 1.25 on: the payload is framed.
func (c *conn) addToStore(q *protocol.AddToStoreRequest) error {
	fr := wire.NewFramedReader(c.r)
	c.start()
	info, err := func() (*store.PathInfo, error) {
		if q.Repair && !ClientFrom(c.ctx).Trusted {
			return nil, repairError()
		}
		adder, err := capability[store.CAAdder](c, "adding to the store")
		if err != nil {
			return nil, err
		}
		return adder.AddCA(c.ctx, q.Name, q.Method, q.HashAlgo, q.References, fr)
	}()
	if err := drain(fr, err); err != nil {
		return err
	}
	return c.reply(&protocol.PathInfoReply{Info: (*protocol.PathInfo)(info)})
}

// addToStoreOld is AddToStore below 1.25 (and Guix's): an unframed NAR
// follows, of a tree (recursive) or of the single file to add (flat).
func (c *conn) addToStoreOld(q *protocol.AddToStoreRequest) error {
	method, algoName := nixhash.Flat, q.OldAlgo
	if q.Recursive {
		method = nixhash.Recursive
	}
	if !q.Fixed {
		method, algoName = nixhash.Recursive, "sha256"
	}
	c.start()
	adder, aerr := capability[store.CAAdder](c, "adding to the store")
	algo, err := nixhash.ParseAlgorithm(algoName)
	if aerr != nil {
		err = aerr
	}
	var info *store.PathInfo
	if method == nixhash.Recursive {
		// The NAR goes through a pipe to the store while the stream is read to
		// its end, whatever the store does with it.
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() {
			d := &discardOnError{w: pw}
			err := protocol.CopyNAR(d, c.r)
			pw.CloseWithError(err)
			done <- err
		}()
		if err == nil {
			info, err = adder.AddCA(c.ctx, q.Name, method, algo, nil, pr)
		}
		pr.CloseWithError(errors.New("add to store: aborted"))
		if cerr := <-done; cerr != nil {
			return broken(cerr)
		}
	} else {
		nr := nar.NewReader(c.r)
		h, nerr := nr.Next()
		if nerr != nil {
			return broken(nerr)
		}
		if err == nil && h.Type != nar.TypeRegular {
			err = errors.New("regular file expected")
		}
		if err == nil {
			info, err = adder.AddCA(c.ctx, q.Name, method, algo, nil, nr)
		}
		for {
			if _, nerr := nr.Next(); nerr == io.EOF {
				break
			} else if nerr != nil {
				return broken(nerr)
			}
		}
	}
	if err != nil {
		return err
	}
	return c.reply(&protocol.PathReply{Path: info.Path})
}

// discardOnError writes to w until a write fails, then swallows the rest.
type discardOnError struct {
	w      io.Writer
	failed bool
}

func (d *discardOnError) Write(p []byte) (int, error) {
	if !d.failed {
		if _, err := d.w.Write(p); err != nil {
			d.failed = true
		}
	}
	return len(p), nil
}

// maxTunnelRead bounds one STDERR_READ request.
const maxTunnelRead = 64 << 10

// tunnelReader pulls upload data from the client with STDERR_READ (ImportPaths,
// and AddToStoreNar at 1.21–1.22).
type tunnelReader struct{ c *conn }

func (t *tunnelReader) Read(p []byte) (int, error) {
	n := min(len(p), maxTunnelRead)
	if n == 0 {
		return 0, nil
	}
	if err := t.c.log.locked(func(w *wire.Writer) error {
		w.Uint64(protocol.StderrRead)
		w.Uint64(uint64(n))
		return w.Flush()
	}); err != nil {
		return 0, err
	}
	b := t.c.r.Bytes(n)
	if err := t.c.r.Err(); err != nil {
		return 0, broken(err)
	}
	if len(b) == 0 {
		return 0, io.ErrUnexpectedEOF
	}
	return copy(p, b), nil
}

// tunnelWriter sends download data to the client as STDERR_WRITE messages
// (ExportPath).
type tunnelWriter struct{ c *conn }

func (t *tunnelWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		chunk := p[:min(len(p), maxTunnelRead)]
		if err := t.c.log.locked(func(w *wire.Writer) error {
			w.Uint64(protocol.StderrWrite)
			w.Bytes(chunk)
			return w.Flush()
		}); err != nil {
			return 0, err
		}
		p = p[len(chunk):]
	}
	return total, nil
}

// oldTunnel reports whether STDERR_READ/WRITE may be used: only clients from
// before 1.23 and Guix's still read them.
func (c *conn) oldTunnel() bool { return c.p.Guix || !c.p.Version.AtLeast(23) }

func (c *conn) exportPath(p storepath.StorePath) error {
	c.start()
	if !c.oldTunnel() {
		return errors.New("ExportPath is obsolete; use NarFromPath")
	}
	nr, err := capability[store.NarReader](c, "reading NARs")
	if err != nil {
		return err
	}
	info, err := c.pathInfo(p)
	if err != nil {
		return err
	}
	w := wire.NewWriter(&tunnelWriter{c: c})
	if err := nr.NarFromPath(c.ctx, p, w); err != nil {
		return err
	}
	w.Uint64(protocol.ExportMagic)
	w.StorePath(p)
	w.StorePaths(sorted(info.References))
	w.OptStorePath(info.Deriver)
	w.Uint64(0)
	if err := w.Flush(); err != nil {
		return err
	}
	return c.reply(&protocol.U64Reply{Value: 1})
}

func (c *conn) importPaths() error {
	c.start()
	if !c.oldTunnel() {
		return errors.New("ImportPaths is obsolete; use AddToStoreNar")
	}
	src := &tunnelReader{c: c}
	if !ClientFrom(c.ctx).Trusted && c.settings.Bool("require-sigs") {
		// An export stream carries no signatures and no content address, so
		// nix-daemon refuses its first path; so does this.
		ent, err := protocol.NewExportReader(wire.NewReader(src)).Next(io.Discard)
		if err == io.EOF {
			return c.reply(&protocol.StringsReply{})
		}
		if err != nil {
			return err
		}
		return fmt.Errorf("cannot add path '%s' because it lacks a valid signature", hl(ent.Path.String()))
	}
	imp, err := capability[importer](c, "importing paths")
	if err != nil {
		return err
	}
	paths, err := imp.Import(c.ctx, src)
	if err != nil {
		return err
	}
	var out []string
	for _, p := range paths {
		out = append(out, p.String())
	}
	return c.reply(&protocol.StringsReply{Values: out})
}

func (c *conn) addTempRoot(p storepath.StorePath) error { return c.AddTempRoot(c.ctx, p) }

// AddTempRoot makes p a temporary root until the connection closes
// (store.TempRooter: the store calls it before adding a path).
func (c *conn) AddTempRoot(ctx context.Context, p storepath.StorePath) error {
	if c.s.Roots == nil {
		return errNotSupported("adding GC roots")
	}
	c.tempMu.Lock()
	if c.temp == nil {
		t, err := c.s.Roots.OpenTemp()
		if err != nil {
			c.tempMu.Unlock()
			return err
		}
		c.temp = t
	}
	t := c.temp
	c.tempMu.Unlock()
	return t.Add(ctx, p)
}

// collectGarbage is op 20, for any client (nix-daemon 2.8 asks no trust).
func (c *conn) collectGarbage(q *protocol.CollectGarbageRequest) error {
	c.start()
	if q.IgnoreLiveness {
		return errors.New("you are not allowed to ignore liveness")
	}
	st, ok := c.s.Store.(*local.Store)
	if !ok || c.s.Roots == nil {
		return errNotSupported("garbage collection")
	}
	if q.DeleteReferrers {
		return errNotSupported("deleting referrers")
	}
	opts := gc.Options{
		Action:          q.Action,
		Paths:           q.Paths,
		MaxFreed:        q.MaxFreed,
		KeepOutputs:     c.settings.Bool("keep-outputs"),
		KeepDerivations: c.settings.Bool("keep-derivations"),
		Log:             func(s string) { c.log.Log(protocol.LvlInfo, s) },
		RuntimeRoots:    gc.RuntimeRootsFor(st.Config(), c.s.useRootsDaemon()),
	}
	res, err := gc.Collect(c.ctx, st, c.s.Roots, opts)
	if err != nil {
		return err
	}
	if q.Action == protocol.GCDeleteDead || q.Action == protocol.GCDeleteSpecific {
		c.s.Metrics.Collected(len(res.Paths), res.BytesFreed)
	}
	return c.reply(&protocol.GCReply{Paths: res.Paths, BytesFreed: res.BytesFreed})
}

func (c *conn) addPermRoot(q *protocol.AddPermRootRequest) error {
	c.start()
	if !ClientFrom(c.ctx).Trusted {
		return errors.New("you are not privileged to create perm roots\n\n" +
			"hint: you can just do this client-side without special privileges, and probably want to do that instead.")
	}
	if err := c.addTempRoot(q.Path); err != nil {
		return err
	}
	root, err := c.s.Roots.AddPerm(q.Path, q.GCRoot)
	if err != nil {
		return err
	}
	return c.reply(&protocol.StringReply{Value: root})
}

func (c *conn) findRoots() error {
	if c.s.Roots == nil {
		return errNotSupported("finding GC roots")
	}
	vq, _ := c.s.Store.(store.ValidityQuerier)
	opts := gcrootsFindOptions(c, vq)
	roots, err := c.s.Roots.Find(c.ctx, opts)
	if err != nil {
		return err
	}
	roots = slices.DeleteFunc(roots, func(r gcroots.Root) bool { return local.IsTemporaries(r.Path) })
	// Runtime roots, as far as this process may read /proc or from the
	// roots daemon (Nix's findRuntimeRoots).
	runtime := gc.ProcRoots
	if st, ok := c.s.Store.(*local.Store); ok {
		runtime = gc.RuntimeRootsFor(st.Config(), c.s.useRootsDaemon())
	}
	if rs, err := runtime(c.ctx, c.s.Store.StoreDir()); err == nil {
		for _, r := range gc.RuntimeRootsOf(rs, c.s.Store.StoreDir(), opts.Valid) {
			if opts.Censor {
				r.Link = gcroots.Censored
			}
			if !slices.Contains(roots, r) {
				roots = append(roots, r)
			}
		}
	}
	rep := &protocol.RootsReply{}
	for _, r := range roots {
		rep.Links = append(rep.Links, r.Link)
		rep.Targets = append(rep.Targets, r.Path)
	}
	return c.reply(rep)
}

func (c *conn) verifyStore(q *protocol.VerifyStoreRequest) error {
	c.start()
	if q.Repair && !ClientFrom(c.ctx).Trusted {
		return trustError("repair paths")
	}
	v, err := capability[verifier](c, "verifying the store")
	if err != nil {
		return err
	}
	opts := local.VerifyOptions{
		CheckContents: q.CheckContents,
		Repair:        q.Repair,
		Log:           c.logWriter(protocol.LvlInfo),
	}
	if b, err := c.builder(); err == nil {
		// A path with a valid deriver is rebuilt.
		opts.RepairPath = func(ctx context.Context, p storepath.StorePath) error {
			log := newBuildLogger(c)
			defer log.stop()
			return b.RepairPath(ctx, p, c.buildOptions(), log)
		}
	}
	res, err := v.Verify(c.ctx, opts)
	if err != nil {
		return err
	}
	var errs uint64
	if res.Errors {
		errs = 1
	}
	return c.reply(&protocol.U64Reply{Value: errs})
}

func (c *conn) addSignatures(q *protocol.AddSignaturesRequest) error {
	c.start()
	if !ClientFrom(c.ctx).Trusted {
		return trustError("add signatures")
	}
	reg, err := capability[registrar](c, "adding signatures")
	if err != nil {
		return err
	}
	info, err := c.pathInfo(q.Path)
	if err != nil {
		return err
	}
	for _, s := range q.Signatures {
		if _, err := narinfo.ParseSignature(s); err != nil {
			return fmt.Errorf("add signatures to %s: %w", q.Path, err)
		}
	}
	sigs := slices.Concat(info.Signatures, q.Signatures)
	slices.Sort(sigs)
	info.Signatures = slices.Compact(sigs)
	if err := reg.RegisterValidPaths(c.ctx, []*store.PathInfo{info}); err != nil {
		return err
	}
	return c.reply(&protocol.U64Reply{Value: 1})
}

// addBuildLog stores a build log where `nix-store -l` and `nix log` look,
// as Nix 2.8's LocalFSStore::addBuildLog: LOGDIR/drvs/XX/REST.bz2, always
// compressed, unless a log of the derivation is there already.
func (c *conn) addBuildLog(q *protocol.AddBuildLogRequest) error {
	fr := wire.NewFramedReader(c.r)
	c.start()
	err := func() error {
		if !ClientFrom(c.ctx).Trusted {
			return trustError("add logs")
		}
		if c.s.LogDir == "" {
			return errNotSupported("adding build logs")
		}
		p, err := c.s.Store.StoreDir().FromBase(q.DrvBase)
		if err != nil {
			return err
		}
		base := p.Base()
		plain := filepath.Join(c.s.LogDir, "drvs", base[:2], base[2:])
		name := plain + ".bz2"
		if exists(plain) || exists(name) {
			return nil
		}
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			return err
		}
		tmp := fmt.Sprintf("%s.tmp.%d.%d", name, os.Getpid(), ClientFrom(c.ctx).ID)
		f, err := os.Create(tmp)
		if err != nil {
			return err
		}
		zw := build.NewLogWriter(f)
		_, err = io.Copy(zw, fr)
		if zerr := zw.Close(); err == nil {
			err = zerr
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp, name)
		}
		if err != nil {
			os.Remove(tmp)
		}
		return err
	}()
	if err := drain(fr, err); err != nil {
		return err
	}
	return c.reply(&protocol.U64Reply{Value: 1})
}

func exists(name string) bool {
	_, err := os.Lstat(name)
	return err == nil
}

// readDerivation reads and parses a valid derivation from the store.
func (c *conn) readDerivation(p storepath.StorePath) (*derivation.Derivation, error) {
	if !p.IsDerivation() {
		return nil, fmt.Errorf("path '%s' is not a derivation", hl(p.String()))
	}
	ok, err := c.isValid(p)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, store.NotValid(p)
	}
	rp, ok := c.s.Store.(realPather)
	if !ok {
		return nil, errNotSupported("reading derivations")
	}
	f, err := os.Open(rp.RealPath(p))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, derivation.MaxSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > derivation.MaxSize {
		return nil, fmt.Errorf("read derivation %s: too large", p)
	}
	return derivation.Parse(c.s.Store.StoreDir(), data, strings.TrimSuffix(p.Name(), ".drv"))
}

// outputsOf returns the output paths of a valid derivation that dp asks for
// (a zero path for an output whose path is not known statically).
func (c *conn) outputsOf(drv *derivation.Derivation, dp protocol.DerivedPath) (map[string]storepath.StorePath, error) {
	outs := map[string]storepath.StorePath{}
	if dp.All || len(dp.Outputs) == 0 {
		for name, o := range drv.Outputs {
			outs[name] = o.Path
		}
		return outs, nil
	}
	for _, name := range dp.Outputs {
		o, ok := drv.Outputs[name]
		if !ok {
			return nil, fmt.Errorf("derivation '%s' does not have an output named '%s'", hl(dp.Path.String()), hl(name))
		}
		outs[name] = o.Path
	}
	return outs, nil
}

// missingOutputs returns whether any output dp asks for is not valid, and the
// outputs.
func (c *conn) missingOutputs(dp protocol.DerivedPath) (*derivation.Derivation, map[string]storepath.StorePath, bool, error) {
	drv, err := c.readDerivation(dp.Path)
	if err != nil {
		return nil, nil, false, err
	}
	outs, err := c.outputsOf(drv, dp)
	if err != nil {
		return nil, nil, false, err
	}
	for _, o := range outs {
		if o.IsZero() {
			return drv, outs, true, nil
		}
		ok, err := c.isValid(o)
		if err != nil {
			return nil, nil, false, err
		}
		if !ok {
			return drv, outs, true, nil
		}
	}
	return drv, outs, false, nil
}

// queryMissing answers QueryMissing as Nix 2.8 does (build.QueryMissing),
// through this connection's view of the store and its caches.
func (c *conn) queryMissing(paths []protocol.DerivedPath) (*protocol.MissingInfo, error) {
	return build.QueryMissing(c.ctx, missingSource{c: c, cfg: c.substConfig()}, paths)
}

// missingSource is a connection as build.QueryMissing asks it.
type missingSource struct {
	c   *conn
	cfg substitute.Config
}

func (m missingSource) IsValid(p storepath.StorePath) (bool, error) { return m.c.isValid(p) }
func (m missingSource) ValidPaths(ps []storepath.StorePath) (map[storepath.StorePath]bool, error) {
	return m.c.validPaths(ps)
}
func (m missingSource) Substitutable(ps []storepath.StorePath) ([]protocol.SubstitutablePathInfo, error) {
	return m.c.substitutableIn(m.cfg, ps)
}
func (m missingSource) HasCaches() bool                   { return len(m.cfg.Caches) > 0 }
func (m missingSource) Prefetch(ps []storepath.StorePath) { substitute.Prefetch(m.c.ctx, m.cfg, ps) }
func (m missingSource) MissingOutputs(dp protocol.DerivedPath) (*derivation.Derivation, map[string]storepath.StorePath, bool, error) {
	return m.c.missingOutputs(dp)
}

// buildPaths builds what is asked for (BuildPaths, BuildPathsWithResults):
// missing opaque paths are substituted (with their closures), derivations'
// missing outputs substituted or built by the daemon's shared builder.
func (c *conn) buildPaths(q *protocol.BuildPathsRequest) error {
	c.start()
	if q.Mode == protocol.BuildRepair && !ClientFrom(c.ctx).Trusted {
		return repairError()
	}
	results := make([]protocol.KeyedBuildResult, len(q.Paths))
	var targets []build.Target
	var index []int
	var opaque []storepath.StorePath
	for i, dp := range q.Paths {
		results[i] = protocol.KeyedBuildResult{Path: dp, BuildResult: protocol.BuildResult{Status: protocol.AlreadyValid}}
		if !dp.Built {
			ok, err := c.isValid(dp.Path)
			if err != nil {
				return err
			}
			if !ok {
				opaque = append(opaque, dp.Path)
				results[i].Status = protocol.Substituted
			}
			continue
		}
		if ok, err := c.isValid(dp.Path); err == nil && !ok && dp.Path.IsDerivation() {
			// Nix 2.8 does not substitute a missing .drv here.
			return fmt.Errorf("cannot build missing derivation '%s'", hl(dp.Path.String()))
		}
		if _, err := c.readDerivation(dp.Path); err != nil {
			return err
		}
		t := build.Target{Drv: dp.Path}
		if !dp.All {
			t.Outputs = dp.Outputs
		}
		targets = append(targets, t)
		index = append(index, i)
	}
	if len(opaque) > 0 {
		if err := c.ensurePaths(opaque); err != nil {
			var ne *substitute.NotFoundError
			if errors.As(err, &ne) && len(c.substConfig().Caches) == 0 {
				return fmt.Errorf("path '%s' is required, but there is no substituter that can build it", hl(ne.Path.String()))
			}
			if c.ctx.Err() != nil {
				return err
			}
			// Nix 2.8: the failures were logged as they happened; the
			// request fails naming the wanted paths still missing.
			var failed []string
			for _, p := range opaque {
				if ok, verr := c.isValid(p); verr == nil && !ok {
					failed = append(failed, "'"+p.String()+"'")
				}
			}
			if len(failed) == 0 {
				return err
			}
			return fmt.Errorf("build of %s failed", hl(strings.Join(failed, ", ")))
		}
	}
	if len(targets) > 0 {
		b, err := c.builder()
		if err != nil {
			return err
		}
		// A recursive build's builds log to the build that runs it.
		var log build.Logger
		stop := func() {}
		if c.rec != nil {
			log = c.rec.Logger()
		} else {
			bl := newBuildLogger(c)
			log, stop = bl, bl.stop
		}
		opts := c.buildOptions()
		opts.Mode = build.Mode(q.Mode)
		built, err := b.Build(c.ctx, targets, opts, log)
		stop()
		if err != nil {
			return err
		}
		for j, r := range built {
			results[index[j]].BuildResult = r.Wire()
			c.s.Metrics.Build(r.Status.String(), r.Ran())
		}
		if q.Code != protocol.OpBuildPathsWithResults {
			if err := c.buildFailure(log, built); err != nil {
				return err
			}
		}
	}
	if q.Code == protocol.OpBuildPathsWithResults {
		// In the order of Nix's goals: substitutions ("a$name$path") before
		// derivations ("b$name$path").
		key := func(r protocol.KeyedBuildResult) string {
			k := "a$"
			if r.Path.Built {
				k = "b$"
			}
			return k + r.Path.Path.Name() + "$" + r.Path.Path.String()
		}
		slices.SortStableFunc(results, func(a, b protocol.KeyedBuildResult) int { return strings.Compare(key(a), key(b)) })
		if c.rec != nil {
			if err := c.addBuilt(q.Paths); err != nil {
				return err
			}
		}
		return c.reply(&protocol.KeyedBuildResultsReply{Results: results})
	}
	if c.rec != nil {
		if err := c.addBuilt(q.Paths); err != nil {
			return err
		}
	}
	return c.reply(&protocol.U64Reply{Value: 1})
}

// buildDerivation builds a BasicDerivation the client sends (its inputs must
// be valid), as the derivation at the path it names.
func (c *conn) buildDerivation(q *protocol.BuildDerivationRequest) error {
	c.start()
	if !ClientFrom(c.ctx).Trusted {
		kind, err := q.Drv.Type()
		if err != nil {
			return err
		}
		if kind == derivation.InputAddressed {
			return errors.New("you are not privileged to build input-addressed derivations")
		}
	}
	for _, o := range q.Drv.Outputs {
		if o.Path.IsZero() {
			return errors.New("building floating content-addressed or impure derivations is not supported yet by the Cairn daemon")
		}
	}
	b, err := c.builder()
	if err != nil {
		return err
	}
	log := newBuildLogger(c)
	opts := c.buildOptions()
	opts.Mode = build.Mode(q.Mode)
	r := b.BuildDerivation(c.ctx, q.DrvPath, q.Drv, opts, log)
	c.s.Metrics.Build(r.Status.String(), r.Ran())
	log.stop()
	res := r.Wire()
	if r.Status.Success() {
		// Every output, as Nix reports them.
		res.BuiltOutputs = map[string]protocol.BuiltOutput{}
		for name, o := range q.Drv.Outputs {
			res.BuiltOutputs[name] = protocol.BuiltOutput{OutPath: o.Path}
		}
	}
	return c.reply(&protocol.BuildResultReply{Result: &res})
}

func gcrootsFindOptions(c *conn, vq store.ValidityQuerier) gcroots.FindOptions {
	opts := gcroots.FindOptions{
		Censor: !ClientFrom(c.ctx).Trusted,
		Log:    func(s string) { c.log.Log(protocol.LvlInfo, s) },
	}
	if vq != nil {
		opts.Valid = func(p storepath.StorePath) bool {
			ok, err := vq.IsValidPath(c.ctx, p)
			return err == nil && ok
		}
	}
	return opts
}

// useRootsDaemon says whether the daemon's own settings (never a client's)
// send runtime roots to the roots daemon (gc.RuntimeRootsFor).
func (s *Server) useRootsDaemon() bool {
	return s.Settings != nil && s.Settings.Bool("use-roots-daemon")
}
