package daemon

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"cairn/internal/build"
	"cairn/internal/nixhash"
	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
)

// Recursive Nix: a recursive-nix build's own daemon (build/recursive.go).
// Its clients are untrusted and see a restricted store, as Nix 2.8's
// RestrictedStore: only the build's input closure and what it added
// through this daemon, path infos without deriver, registration time,
// ultimate flag or signatures; what they add, and the closures of what they
// build, become visible to the build. Only the operations Nix's restricted
// store serves are served.

type recursionKey struct{}

// ServeRecursive serves rec's build on ln until ctx ends (build.Config's
// ServeRecursive).
func (s *Server) ServeRecursive(ctx context.Context, ln net.Listener, rec *build.Recursion) {
	ctx = context.WithValue(ctx, recursionKey{}, rec)
	var wg sync.WaitGroup
	defer wg.Wait()
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			go func() {
				<-ctx.Done()
				c.Close()
			}()
			s.serve(ctx, c, c, Decision{User: "nobody", UID: 65535, Allowed: true}, Peer{}, nil)
		}()
	}
}

// restrictedStore is the store a recursive build's daemon shows.
type restrictedStore struct {
	next *local.Store
	rec  *build.Recursion
}

func (r *restrictedStore) StoreDir() storepath.StoreDir { return r.next.StoreDir() }
func (r *restrictedStore) Close() error                 { return nil }

func (r *restrictedStore) QueryPathInfo(ctx context.Context, p storepath.StorePath) (*store.PathInfo, error) {
	if !r.rec.Allowed(p) {
		return nil, &store.NotValidError{Path: p}
	}
	info, err := r.next.QueryPathInfo(ctx, p)
	if err != nil {
		return nil, err
	}
	// Censored as Nix censors it: nothing of where or when it came from.
	info.Deriver, info.RegistrationTime, info.Ultimate, info.Signatures = storepath.StorePath{}, time.Time{}, false, nil
	return info, nil
}

func (r *restrictedStore) IsValidPath(ctx context.Context, p storepath.StorePath) (bool, error) {
	if !r.rec.Allowed(p) {
		return false, nil
	}
	return r.next.IsValidPath(ctx, p)
}

func (r *restrictedStore) QueryValidPaths(ctx context.Context, paths []storepath.StorePath) ([]storepath.StorePath, error) {
	var allowed []storepath.StorePath
	for _, p := range paths {
		if r.rec.Allowed(p) {
			allowed = append(allowed, p)
		}
	}
	return r.next.QueryValidPaths(ctx, allowed)
}

func (r *restrictedStore) QueryAllValidPaths(ctx context.Context) ([]storepath.StorePath, error) {
	return r.next.QueryValidPaths(ctx, r.rec.AllowedPaths())
}

func (r *restrictedStore) QueryReferrers(ctx context.Context, p storepath.StorePath) ([]storepath.StorePath, error) {
	return nil, nil
}

func (r *restrictedStore) QueryDerivationOutputs(ctx context.Context, drv storepath.StorePath) (map[string]storepath.StorePath, error) {
	if !r.rec.Allowed(drv) {
		return nil, fmt.Errorf("cannot query output map for unknown path '%s' in recursive Nix: %w", drv, store.ErrNotFound)
	}
	return r.next.QueryDerivationOutputs(ctx, drv)
}

// QueryValidDerivers tells nothing, as Nix's restricted store.
func (r *restrictedStore) QueryValidDerivers(ctx context.Context, p storepath.StorePath) ([]storepath.StorePath, error) {
	return nil, nil
}

func (r *restrictedStore) NarFromPath(ctx context.Context, p storepath.StorePath, w io.Writer) error {
	if !r.rec.Allowed(p) {
		return fmt.Errorf("cannot dump unknown path '%s' in recursive Nix: %w", p, store.ErrNotFound)
	}
	return r.next.NarFromPath(ctx, p, w)
}

func (r *restrictedStore) AddNar(ctx context.Context, info *store.PathInfo, nar io.Reader, opts store.AddNarOptions) error {
	if err := r.next.AddNar(ctx, info, nar, opts); err != nil {
		return err
	}
	return r.rec.Add(info.Path)
}

func (r *restrictedStore) AddCA(ctx context.Context, name string, method nixhash.Method, algo nixhash.Algorithm,
	refs []storepath.StorePath, rd io.Reader) (*store.PathInfo, error) {
	info, err := r.next.AddCA(ctx, name, method, algo, refs, rd)
	if err != nil {
		return nil, err
	}
	return info, r.rec.Add(info.Path)
}

// recursiveOp answers the operations a recursive build's daemon treats
// otherwise than the daemon: handled says it did; the others it lets
// through (to the restricted store) or refuses.
func (c *conn) recursiveOp(req protocol.Request) (handled bool, err error) {
	switch q := req.(type) {
	case *protocol.PathRequest:
		switch q.Code {
		case protocol.OpAddTempRoot:
			c.start()
			return true, c.reply(&protocol.U64Reply{Value: 1})
		case protocol.OpEnsurePath:
			c.start()
			if !c.rec.Allowed(q.Path) {
				return true, fmt.Errorf("cannot substitute unknown path '%s' in recursive Nix", q.Path)
			}
			return true, c.reply(&protocol.U64Reply{Value: 1})
		case protocol.OpIsValidPath, protocol.OpQueryPathInfo, protocol.OpNarFromPath, protocol.OpQueryReferrers,
			protocol.OpQueryDerivationOutputs, protocol.OpQueryDerivationOutputNames, protocol.OpQueryDerivationOutputMap,
			protocol.OpQueryValidDerivers:
			return false, nil
		}
	case *protocol.EmptyRequest:
		switch q.Code {
		case protocol.OpQueryAllValidPaths, protocol.OpSyncWithGC:
			return false, nil
		}
	case *protocol.QueryValidPathsRequest, *protocol.SetOptionsRequest, *protocol.AddToStoreRequest,
		*protocol.AddTextToStoreRequest, *protocol.AddToStoreNarRequest, *protocol.AddMultipleToStoreRequest:
		return false, nil
	case *protocol.AddIndirectRootRequest:
		c.start()
		return true, c.reply(&protocol.U64Reply{Value: 1})
	case *protocol.QueryMissingRequest:
		c.start()
		var allowed []protocol.DerivedPath
		var unknown []storepath.StorePath
		for _, dp := range q.Paths {
			if c.rec.Allowed(dp.Path) {
				allowed = append(allowed, dp)
			} else {
				unknown = append(unknown, dp.Path)
			}
		}
		mi, err := c.queryMissing(allowed)
		if err != nil {
			return true, err
		}
		mi.Unknown = sorted(append(mi.Unknown, unknown...))
		return true, c.reply(mi)
	case *protocol.BuildPathsRequest:
		if q.Mode != protocol.BuildNormal {
			c.start()
			return true, fmt.Errorf("unsupported build mode")
		}
		for _, dp := range q.Paths {
			if !c.rec.Allowed(dp.Path) {
				c.start()
				return true, fmt.Errorf("cannot build '%s' in recursive Nix because path is unknown", dp.Path)
			}
		}
		return false, nil
	}
	c.start()
	return true, errNotSupported(fmt.Sprintf("operation %s in recursive Nix", req.Op()))
}

// addBuilt makes the closures of what a recursive build's BuildPaths built
// visible to it, before the reply says they are there.
func (c *conn) addBuilt(paths []protocol.DerivedPath) error {
	st := c.s.Store.(*local.Store)
	var roots []storepath.StorePath
	for _, dp := range paths {
		if !dp.Built {
			roots = append(roots, dp.Path)
			continue
		}
		drv, err := c.readDerivation(dp.Path)
		if err != nil {
			return err
		}
		outs, err := c.outputsOf(drv, dp)
		if err != nil {
			return err
		}
		for _, o := range outs {
			if !o.IsZero() {
				roots = append(roots, o)
			}
		}
	}
	valid, err := st.QueryValidPaths(c.ctx, roots)
	if err != nil || len(valid) == 0 {
		return err
	}
	closure, err := st.QueryClosure(c.ctx, valid, false)
	if err != nil {
		return err
	}
	for _, p := range closure {
		if err := c.rec.Add(p); err != nil {
			return err
		}
	}
	return nil
}
