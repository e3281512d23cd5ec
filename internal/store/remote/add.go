package remote

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"cairn/internal/derivation"
	"cairn/internal/fsnar"
	"cairn/internal/nixhash"
	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/storepath"
	"cairn/internal/wire"
)

// copyBufSize is the size of the chunks (and so of the frames) a payload is
// sent in.
const copyBufSize = 128 << 10

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// sendFramed returns a payload writer that copies src (at most limit bytes
// when limit ≥ 0) as a framed stream. If src fails, it closes the connection
// instead of ending the stream, so the daemon never takes a truncated payload
// for a whole one.
func sendFramed(src io.Reader, limit int64) func(c *conn) error {
	return func(c *conn) error {
		fw := wire.NewFramedWriter(c.w)
		bp := copyBufs.Get().(*[]byte)
		defer copyBufs.Put(bp)
		if limit >= 0 {
			src = io.LimitReader(src, limit)
		}
		n, err := io.CopyBuffer(fw, onlyReader{src}, *bp)
		if err == nil && limit >= 0 && n < limit {
			err = fmt.Errorf("payload: %w after %d of %d bytes", io.ErrUnexpectedEOF, n, limit)
		}
		if err != nil {
			c.srcErr.Store(&err)
			c.rwc.Close()
			return err
		}
		return fw.Close()
	}
}

// onlyReader hides a source's WriterTo, so that io.CopyBuffer uses our buffer.
type onlyReader struct{ io.Reader }

// answerRead answers a STDERR_READ from readSrc (AddToStoreNar at 1.21–1.22).
func (c *conn) answerRead(max uint64) error {
	if c.readSrc == nil {
		return fmt.Errorf("unexpected STDERR_READ: %w", protocol.ErrProtocol)
	}
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := (*bp)[:min(uint64(len(*bp)), max)]
	n, err := io.ReadFull(c.readSrc, buf)
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		return err
	}
	c.w.Bytes(buf[:n])
	return c.w.Flush()
}

// AddNar adds info.Path from its NAR (AddToStoreNar). info.NarSize must be set:
// exactly that many bytes are read from r. Signatures are not checked
// (dontCheckSigs, which a daemon grants only to trusted clients) unless
// opts.CheckSigs.
func (s *Store) AddNar(ctx context.Context, info *store.PathInfo, r io.Reader, opts store.AddNarOptions) error {
	if info.NarSize == 0 {
		return fmt.Errorf("add %s: %w: the NAR size is needed to send a NAR to a daemon", info.Path, store.ErrInvalid)
	}
	ver, err := s.version(ctx)
	if err != nil {
		return err
	}
	req := &protocol.AddToStoreNarRequest{Info: protocol.PathInfo(*info), Repair: opts.Repair, DontCheckSigs: !opts.CheckSigs}
	size := int64(info.NarSize)
	var send func(c *conn) error
	switch {
	case ver.AtLeast(23):
		send = sendFramed(r, size)
	case ver.AtLeast(21):
		send = func(c *conn) error {
			c.readSrc = io.LimitReader(r, size)
			return nil
		}
	default:
		send = func(c *conn) error {
			_, err := io.CopyN(c.w, r, size)
			return err
		}
	}
	err = s.do(ctx, req, send, nil)
	return err
}

// version is the protocol version of the pool's connections.
func (s *Store) version(ctx context.Context) (protocol.Version, error) {
	info, err := s.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.Version, nil
}

// AddCA adds the content read from r under its content-addressed path
// (AddToStore at ≥1.25; below, AddTextToStore for text and the old AddToStore
// for NAR content, while flat content needs 1.25).
func (s *Store) AddCA(ctx context.Context, name string, method nixhash.Method, algo nixhash.Algorithm,
	refs []storepath.StorePath, r io.Reader) (*store.PathInfo, error) {
	ver, err := s.version(ctx)
	if err != nil {
		return nil, err
	}
	if method == nixhash.Text && algo != nixhash.SHA256 {
		return nil, fmt.Errorf("add %s: %w: text hashed with %v", name, store.ErrInvalid, algo)
	}
	if ver.AtLeast(25) {
		var rep protocol.PathInfoReply
		req := &protocol.AddToStoreRequest{Name: name, Method: method, HashAlgo: algo, References: refs}
		err := s.do(ctx, req, sendFramed(r, -1), func(c *conn) error {
			rep.Read(c.r, c.p)
			return c.r.Err()
		})
		if err != nil {
			return nil, err
		}
		info := (*store.PathInfo)(rep.Info)
		info.References = sortedPaths(info.References)
		return info, nil
	}
	var req protocol.Request
	var send func(c *conn) error
	switch method {
	case nixhash.Text:
		text, err := io.ReadAll(io.LimitReader(r, wire.MaxTextLen+1))
		if err != nil {
			return nil, fmt.Errorf("add %s: %w", name, err)
		}
		if len(text) > wire.MaxTextLen {
			return nil, fmt.Errorf("add %s: %w: text over %d bytes", name, wire.ErrTooLong, wire.MaxTextLen)
		}
		req = &protocol.AddTextToStoreRequest{Name: name, Text: string(text), References: refs}
	case nixhash.Recursive:
		if len(refs) > 0 {
			return nil, fmt.Errorf("add %s: %w: references need protocol 1.25", name, store.ErrUnsupported)
		}
		req = &protocol.AddToStoreRequest{Name: name, Fixed: algo != nixhash.SHA256, Recursive: true, OldAlgo: algo.String()}
		send = func(c *conn) error { return protocol.CopyNAR(c.w, r) }
	default:
		return nil, fmt.Errorf("add %s: %w: flat content needs protocol 1.25", name, store.ErrUnsupported)
	}
	var rep protocol.PathReply
	if err := s.do(ctx, req, send, func(c *conn) error {
		rep.Read(c.r, c.p)
		return c.r.Err()
	}); err != nil {
		return nil, err
	}
	return s.QueryPathInfo(ctx, rep.Path)
}

// AddText adds a text file with references, as builtins.toFile and .drv files are.
func (s *Store) AddText(ctx context.Context, name, text string, refs []storepath.StorePath) (*store.PathInfo, error) {
	return s.AddCA(ctx, name, nixhash.Text, nixhash.SHA256, refs, strings.NewReader(text))
}

// AddPaths adds the files or trees at srcs under their base names, as
// `nix-store --add` (method Recursive, sha256) and `--add-fixed` do: the NAR
// (or for Flat the file's bytes) is made here and streamed to the daemon. The
// paths are added one by one, not atomically together: after an error, the
// infos returned are those of the sources before the failing one, all added.
func (s *Store) AddPaths(ctx context.Context, srcs []string, method nixhash.Method, algo nixhash.Algorithm) ([]*store.PathInfo, error) {
	out := make([]*store.PathInfo, 0, len(srcs))
	for _, src := range srcs {
		info, err := s.addPath(ctx, src, method, algo)
		if err != nil {
			return out, err
		}
		out = append(out, info)
	}
	return out, nil
}

func (s *Store) addPath(ctx context.Context, src string, method nixhash.Method, algo nixhash.Algorithm) (*store.PathInfo, error) {
	abs, err := filepath.Abs(src)
	if err != nil {
		return nil, err
	}
	name := filepath.Base(abs)
	switch method {
	case nixhash.Recursive:
		pr, pw := io.Pipe()
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() { pw.CloseWithError(fsnar.Dump(ctx, pw, abs)) }()
		info, err := s.AddCA(ctx, name, method, algo, nil, pr)
		pr.CloseWithError(io.ErrClosedPipe)
		return info, err
	case nixhash.Flat:
		f, err := os.Open(abs)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if fi, err := f.Stat(); err != nil {
			return nil, err
		} else if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("add %s: %w: not a regular file", abs, store.ErrInvalid)
		}
		return s.AddCA(ctx, name, method, algo, nil, f)
	default:
		return nil, fmt.Errorf("add %s: %w: method %v", abs, store.ErrInvalid, method)
	}
}

// AddTempRoot makes p a temporary GC root for as long as the connection that
// sent it stays open (see the package comment).
func (s *Store) AddTempRoot(ctx context.Context, p storepath.StorePath) error {
	return s.do(ctx, &protocol.PathRequest{Code: protocol.OpAddTempRoot, Path: p}, nil, skipU64)
}

// AddIndirectRoot registers link, a symlink outside the store pointing into it,
// as a GC root (the daemon links to it from gcroots/auto).
func (s *Store) AddIndirectRoot(ctx context.Context, link string) error {
	return s.do(ctx, &protocol.AddIndirectRootRequest{Path: link}, nil, skipU64)
}

// AddPermRoot makes gcRoot a symlink to p registered as a GC root (≥1.36) and
// returns the root's path.
func (s *Store) AddPermRoot(ctx context.Context, p storepath.StorePath, gcRoot string) (string, error) {
	if err := s.needs(ctx, protocol.OpAddPermRoot, 36); err != nil {
		return "", err
	}
	var rep protocol.StringReply
	err := s.do(ctx, &protocol.AddPermRootRequest{Path: p, GCRoot: gcRoot}, nil, func(c *conn) error {
		rep.Read(c.r, c.p)
		return c.r.Err()
	})
	return rep.Value, err
}

// EnsurePath makes p valid, substituting it if need be.
func (s *Store) EnsurePath(ctx context.Context, p storepath.StorePath) error {
	return s.do(ctx, &protocol.PathRequest{Code: protocol.OpEnsurePath, Path: p}, nil, skipU64)
}

// AddSignatures adds signatures ("keyname:base64") to the valid path p.
func (s *Store) AddSignatures(ctx context.Context, p storepath.StorePath, sigs []string) error {
	return s.do(ctx, &protocol.AddSignaturesRequest{Path: p, Signatures: sigs}, nil, skipU64)
}

func skipU64(c *conn) error {
	c.r.Uint64()
	return c.r.Err()
}

// CollectGarbage runs the daemon's garbage collector (op 20).
func (s *Store) CollectGarbage(ctx context.Context, q *protocol.CollectGarbageRequest) (*protocol.GCReply, error) {
	var rep protocol.GCReply
	err := s.do(ctx, q, nil, func(c *conn) error {
		rep.Read(c.r, c.p)
		return c.r.Err()
	})
	if err != nil {
		return nil, err
	}
	return &rep, nil
}

// FindRoots returns the daemon's GC roots (links censored for an untrusted
// client).
func (s *Store) FindRoots(ctx context.Context) (*protocol.RootsReply, error) {
	var rep protocol.RootsReply
	err := s.do(ctx, &protocol.EmptyRequest{Code: protocol.OpFindRoots}, nil, func(c *conn) error {
		rep.Read(c.r, c.p)
		return c.r.Err()
	})
	if err != nil {
		return nil, err
	}
	return &rep, nil
}

// BuildPaths builds or substitutes paths (BuildPaths) in mode; a failure is
// an *Error with the daemon's message and the worker's exit status.
func (s *Store) BuildPaths(ctx context.Context, paths []protocol.DerivedPath, mode protocol.BuildMode) error {
	return s.do(ctx, &protocol.BuildPathsRequest{Code: protocol.OpBuildPaths, Paths: paths, Mode: mode}, nil, skipU64)
}

// BuildDerivation builds drv, which need not be in the store, as the
// derivation at drvPath (BuildDerivation; the daemon requires a trusted
// client for input-addressed ones).
func (s *Store) BuildDerivation(ctx context.Context, drvPath storepath.StorePath, drv *derivation.Derivation, mode protocol.BuildMode) (*protocol.BuildResult, error) {
	var res *protocol.BuildResult
	err := s.do(ctx, &protocol.BuildDerivationRequest{DrvPath: drvPath, Drv: drv, Mode: mode}, nil, func(c *conn) error {
		res = protocol.ReadBuildResult(c.r, c.p)
		return c.r.Err()
	})
	return res, err
}

// AddNars adds the paths of infos, dependencies first, in one
// AddMultipleToStore (1.32 on; one AddToStoreNar each below), as Nix's
// copyPaths sends them to a daemon. Each NAR comes from nar as its path is
// sent, and sending is told which path that is.
func (s *Store) AddNars(ctx context.Context, infos []*store.PathInfo, nar func(*store.PathInfo) (io.ReadCloser, error),
	sending func(*store.PathInfo), opts store.AddNarOptions) error {
	ver, err := s.version(ctx)
	if err != nil {
		return err
	}
	if !ver.AtLeast(32) {
		for _, info := range infos {
			sending(info)
			r, err := nar(info)
			if err != nil {
				return err
			}
			err = s.AddNar(ctx, info, r, opts)
			r.Close()
			if err != nil {
				return err
			}
		}
		return nil
	}
	pr, pw := io.Pipe()
	go func() {
		w := wire.NewWriter(pw)
		protocol.WriteMultipleCount(w, len(infos))
		for _, info := range infos {
			sending(info)
			r, err := nar(info)
			if err == nil {
				err = protocol.AddMultiple(w, (*protocol.PathInfo)(info), r)
				r.Close()
			}
			if err != nil {
				pw.CloseWithError(err)
				return
			}
		}
		pw.CloseWithError(w.Flush())
	}()
	err = s.do(ctx, &protocol.AddMultipleToStoreRequest{Repair: opts.Repair, DontCheckSigs: !opts.CheckSigs}, sendFramed(pr, -1), nil)
	pr.CloseWithError(io.ErrClosedPipe)
	return err
}
