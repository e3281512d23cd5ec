package remote

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"

	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/storepath"
)

// The capabilities a remote store offers.
var (
	_ store.Store             = (*Store)(nil)
	_ store.PathInfoQuerier   = (*Store)(nil)
	_ store.ValidityQuerier   = (*Store)(nil)
	_ store.ReferrerQuerier   = (*Store)(nil)
	_ store.ClosureQuerier    = (*Store)(nil)
	_ store.DerivationQuerier = (*Store)(nil)
	_ store.HashPartQuerier   = (*Store)(nil)
	_ store.AllPathsQuerier   = (*Store)(nil)
	_ store.NarReader         = (*Store)(nil)
	_ store.NarAdder          = (*Store)(nil)
	_ store.CAAdder           = (*Store)(nil)
)

func (s *Store) needs(ctx context.Context, op protocol.Op, minor uint8) error {
	info, err := s.Info(ctx)
	if err != nil {
		return err
	}
	if !info.Version.AtLeast(minor) {
		return fmt.Errorf("%v: %w by a daemon speaking %v", op, store.ErrUnsupported, info.Version)
	}
	return nil
}

func sortedPaths(ps []storepath.StorePath) []storepath.StorePath {
	if !slices.IsSortedFunc(ps, storepath.Compare) {
		storepath.SortPaths(ps)
	}
	return ps
}

// QueryPathInfo returns the info of the valid path p.
func (s *Store) QueryPathInfo(ctx context.Context, p storepath.StorePath) (*store.PathInfo, error) {
	var rep protocol.QueryPathInfoReply
	err := s.do(ctx, &protocol.PathRequest{Code: protocol.OpQueryPathInfo, Path: p}, nil, func(c *conn) error {
		rep.Read(c.r, c.p)
		return c.r.Err()
	})
	if err != nil {
		return nil, err
	}
	if !rep.Valid {
		return nil, store.NotValid(p)
	}
	info := (*store.PathInfo)(rep.Info)
	info.Path = p
	info.References = sortedPaths(info.References)
	return info, nil
}

// QueryPathInfos returns the infos of paths in their order; the first invalid
// path is an error matching store.ErrNotFound. The queries run on up to
// Options.MaxConns connections at once.
func (s *Store) QueryPathInfos(ctx context.Context, paths []storepath.StorePath) ([]*store.PathInfo, error) {
	out := make([]*store.PathInfo, len(paths))
	err := s.parallel(ctx, len(paths), func(ctx context.Context, i int) error {
		info, err := s.QueryPathInfo(ctx, paths[i])
		out[i] = info
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// QueryReferencesOf returns the references of each valid path among paths;
// invalid paths are missing from the map.
func (s *Store) QueryReferencesOf(ctx context.Context, paths []storepath.StorePath) (map[storepath.StorePath][]storepath.StorePath, error) {
	infos := make([]*store.PathInfo, len(paths))
	err := s.parallel(ctx, len(paths), func(ctx context.Context, i int) error {
		info, err := s.QueryPathInfo(ctx, paths[i])
		if err != nil && !isNotFound(err) {
			return err
		}
		infos[i] = info
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make(map[storepath.StorePath][]storepath.StorePath, len(paths))
	for _, info := range infos {
		if info != nil {
			out[info.Path] = info.References
		}
	}
	return out, nil
}

// IsValidPath reports whether p is valid.
func (s *Store) IsValidPath(ctx context.Context, p storepath.StorePath) (bool, error) {
	var rep protocol.BoolReply
	err := s.do(ctx, &protocol.PathRequest{Code: protocol.OpIsValidPath, Path: p}, nil, func(c *conn) error {
		rep.Read(c.r, c.p)
		return c.r.Err()
	})
	return rep.Value, err
}

// QueryValidPaths returns the valid paths among paths, in their order, each once.
func (s *Store) QueryValidPaths(ctx context.Context, paths []storepath.StorePath) ([]storepath.StorePath, error) {
	return s.QueryValidPathsSubstituting(ctx, paths, false)
}

// QueryValidPathsSubstituting is QueryValidPaths that, with substitute, lets
// the daemon substitute the missing paths first (from 1.27; below, it does
// not).
func (s *Store) QueryValidPathsSubstituting(ctx context.Context, paths []storepath.StorePath, substitute bool) ([]storepath.StorePath, error) {
	var rep protocol.PathsReply
	err := s.do(ctx, &protocol.QueryValidPathsRequest{Paths: paths, Substitute: substitute}, nil, func(c *conn) error {
		rep.Read(c.r, c.p)
		return c.r.Err()
	})
	if err != nil {
		return nil, err
	}
	valid := make(map[storepath.StorePath]bool, len(rep.Paths))
	for _, p := range rep.Paths {
		valid[p] = true
	}
	out := make([]storepath.StorePath, 0, len(rep.Paths))
	for _, p := range paths {
		if valid[p] {
			out = append(out, p)
			valid[p] = false
		}
	}
	return out, nil
}

func (s *Store) paths(ctx context.Context, req protocol.Request) ([]storepath.StorePath, error) {
	var rep protocol.PathsReply
	err := s.do(ctx, req, nil, func(c *conn) error {
		rep.Read(c.r, c.p)
		return c.r.Err()
	})
	if err != nil {
		return nil, err
	}
	return sortedPaths(rep.Paths), nil
}

// QueryReferrers returns the valid paths that refer to p, sorted.
func (s *Store) QueryReferrers(ctx context.Context, p storepath.StorePath) ([]storepath.StorePath, error) {
	return s.paths(ctx, &protocol.PathRequest{Code: protocol.OpQueryReferrers, Path: p})
}

// QueryValidDerivers returns the valid derivations that name p as an output.
func (s *Store) QueryValidDerivers(ctx context.Context, p storepath.StorePath) ([]storepath.StorePath, error) {
	return s.paths(ctx, &protocol.PathRequest{Code: protocol.OpQueryValidDerivers, Path: p})
}

// QueryAllValidPaths returns every valid path, sorted.
func (s *Store) QueryAllValidPaths(ctx context.Context) ([]storepath.StorePath, error) {
	return s.paths(ctx, &protocol.EmptyRequest{Code: protocol.OpQueryAllValidPaths})
}

// QueryDerivationOutputs returns the statically known outputs of drv
// (QueryDerivationOutputMap, ≥1.22; outputs without a known path are left out).
func (s *Store) QueryDerivationOutputs(ctx context.Context, drv storepath.StorePath) (map[string]storepath.StorePath, error) {
	if err := s.needs(ctx, protocol.OpQueryDerivationOutputMap, 22); err != nil {
		return nil, err
	}
	var rep protocol.OutputMapReply
	err := s.do(ctx, &protocol.PathRequest{Code: protocol.OpQueryDerivationOutputMap, Path: drv}, nil, func(c *conn) error {
		rep.Read(c.r, c.p)
		return c.r.Err()
	})
	if err != nil {
		return nil, err
	}
	for name, p := range rep.Outputs {
		if p.IsZero() {
			delete(rep.Outputs, name)
		}
	}
	return rep.Outputs, nil
}

// QueryPathFromHashPart returns the valid path with the hash part hashPart.
func (s *Store) QueryPathFromHashPart(ctx context.Context, hashPart string) (storepath.StorePath, error) {
	var rep protocol.PathReply
	err := s.do(ctx, &protocol.QueryPathFromHashPartRequest{HashPart: hashPart}, nil, func(c *conn) error {
		rep.Read(c.r, c.p)
		return c.r.Err()
	})
	if err != nil {
		return storepath.StorePath{}, err
	}
	if rep.Path.IsZero() {
		return storepath.StorePath{}, fmt.Errorf("query path from hash part %s: %w", hashPart, store.ErrNotFound)
	}
	return rep.Path, nil
}

// QueryClosure returns roots and everything they reach over references (over
// referrers when reverse), sorted, asking the daemon path by path.
func (s *Store) QueryClosure(ctx context.Context, roots []storepath.StorePath, reverse bool) ([]storepath.StorePath, error) {
	seen := make(map[storepath.StorePath]bool, len(roots))
	var todo []storepath.StorePath
	for _, r := range roots {
		if !seen[r] {
			seen[r] = true
			todo = append(todo, r)
		}
	}
	if reverse {
		// Roots must be valid, as for the forward closure.
		if _, err := s.QueryPathInfos(ctx, todo); err != nil {
			return nil, err
		}
	}
	out := slices.Clone(todo)
	for len(todo) > 0 {
		next := make([][]storepath.StorePath, len(todo))
		err := s.parallel(ctx, len(todo), func(ctx context.Context, i int) error {
			var err error
			if reverse {
				next[i], err = s.QueryReferrers(ctx, todo[i])
			} else {
				var info *store.PathInfo
				if info, err = s.QueryPathInfo(ctx, todo[i]); err == nil {
					next[i] = info.References
				}
			}
			return err
		})
		if err != nil {
			return nil, err
		}
		todo = todo[:0]
		for _, ps := range next {
			for _, p := range ps {
				if !seen[p] {
					seen[p] = true
					todo = append(todo, p)
					out = append(out, p)
				}
			}
		}
	}
	storepath.SortPaths(out)
	return out, nil
}

// NarFromPath writes the NAR of the valid path p to w.
func (s *Store) NarFromPath(ctx context.Context, p storepath.StorePath, w io.Writer) error {
	return s.do(ctx, &protocol.PathRequest{Code: protocol.OpNarFromPath, Path: p}, nil, func(c *conn) error {
		if err := lateNarError(c); err != nil {
			return err
		}
		return protocol.CopyNAR(w, c.r)
	})
}

// narMagicToken is the first token of every NAR as it goes on the wire.
const narMagicToken = "\x0d\x00\x00\x00\x00\x00\x00\x00nix-archive-1\x00\x00\x00"

// lateNarError catches how nix-daemon 2.8 fails NarFromPath on an invalid
// path: STDERR_LAST, the NAR's magic token, then STDERR_ERROR, and it hangs
// up. Nothing reaches the caller's writer and the error is the daemon's.
func lateNarError(c *conn) error {
	b, err := c.r.Peek(len(narMagicToken) + 8)
	if err != nil || string(b[:len(narMagicToken)]) != narMagicToken ||
		binary.LittleEndian.Uint64(b[len(narMagicToken):]) != protocol.StderrError {
		return nil
	}
	c.broken = true
	c.r.Skip(int64(len(narMagicToken)))
	m, err := protocol.ReadMessage(c.r, c.p)
	if err != nil {
		return err
	}
	return m.Err
}

// parallel runs f(i) for i in [0, n) on up to MaxConns goroutines and returns
// the first error (by index).
func (s *Store) parallel(ctx context.Context, n int, f func(ctx context.Context, i int) error) error {
	if n == 0 {
		return nil
	}
	workers := min(n, s.opts.MaxConns)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make([]error, n)
	next := make(chan int)
	done := make(chan struct{})
	for range workers {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range next {
				if errs[i] = f(ctx, i); errs[i] != nil {
					cancel()
				}
			}
		}()
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	for range workers {
		<-done
	}
	for _, err := range errs {
		if err != nil && err != context.Canceled {
			return err
		}
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return ctx.Err()
}

func isNotFound(err error) bool { return errors.Is(err, store.ErrNotFound) }
