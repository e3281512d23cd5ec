package remotebuild

import (
	"context"
	"fmt"
	"io"
	"slices"
	"time"

	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
)

// dependenciesFirst orders infos so that every path comes after the paths
// it refers to.
func dependenciesFirst(infos []*store.PathInfo) ([]*store.PathInfo, error) {
	byPath := make(map[storepath.StorePath]*store.PathInfo, len(infos))
	paths := make([]storepath.StorePath, 0, len(infos))
	for _, info := range infos {
		byPath[info.Path] = info
		paths = append(paths, info.Path)
	}
	sorted, err := store.TopoSort(paths, func(p storepath.StorePath) []storepath.StorePath { return byPath[p].References })
	if err != nil {
		return nil, err
	}
	slices.Reverse(sorted)
	out := make([]*store.PathInfo, len(sorted))
	for i, p := range sorted {
		out[i] = byPath[p]
	}
	return out, nil
}

// CopyTo makes paths (a closure) valid on the machine: those it lacks are
// sent, dependencies first, as Nix's copyPaths sends them to an ssh store.
// With substitute the machine may substitute them instead. copying is told
// how many it lacks before they go (Nix's "copying N paths"). It returns how
// many paths were sent.
func CopyTo(ctx context.Context, c Peer, st *local.Store, paths []storepath.StorePath, substitute bool, copying func(n int)) (int, error) {
	valid, err := c.queryValid(ctx, paths, substitute)
	if err != nil {
		return 0, err
	}
	var missing []storepath.StorePath
	for _, p := range paths {
		if !slices.Contains(valid, p) {
			missing = append(missing, p)
		}
	}
	copying(len(missing))
	if len(missing) == 0 {
		return 0, nil
	}
	infos, err := st.QueryPathInfos(ctx, missing)
	if err != nil {
		return 0, err
	}
	if len(infos) != len(missing) {
		return 0, fmt.Errorf("copy to '%s': some of %d paths are not valid here", c.URI(), len(missing))
	}
	if infos, err = dependenciesFirst(infos); err != nil {
		return 0, err
	}
	for i, info := range infos {
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(st.NarFromPath(ctx, info.Path, pw)) }()
		err := c.addNar(ctx, info, pr)
		pr.CloseWithError(io.ErrClosedPipe)
		if err != nil {
			return i, err
		}
	}
	return len(infos), nil
}

// CopyFrom makes paths valid here with the NARs and metadata the machine
// has, all registered in one transaction, and returns their infos. started
// is told as each path's copy starts, and the function it returns as it
// ends (Nix's "copying path '…' from '…'"). With locked the caller holds
// the paths' locks.
func CopyFrom(ctx context.Context, c Peer, st *local.Store, paths []storepath.StorePath, locked bool, started func(*store.PathInfo) func()) ([]*store.PathInfo, error) {
	infos, err := c.queryInfos(ctx, paths)
	if err != nil {
		return nil, err
	}
	for _, p := range paths {
		if !slices.ContainsFunc(infos, func(i *store.PathInfo) bool { return i.Path == p }) {
			return nil, fmt.Errorf("path '%s' is not valid on '%s'", p, c.URI())
		}
	}
	if infos, err = dependenciesFirst(infos); err != nil {
		return nil, err
	}
	b := st.NewBatch()
	defer b.Discard()
	if locked {
		b.HoldingLocks(paths...)
	}
	now := time.Now()
	for _, info := range infos {
		info.Ultimate = false
		info.RegistrationTime = now
		done := started(info)
		r, finish, err := c.nar(ctx, info.Path, info.NarSize)
		if err != nil {
			done()
			return nil, err
		}
		err = b.AddNar(ctx, info, r, store.AddNarOptions{})
		if err == nil {
			// A NAR shorter than its size fails the hash; one that
			// is longer would leave bytes in the stream.
			if n, _ := io.Copy(io.Discard, r); n > 0 {
				err = fmt.Errorf("%d bytes after the NAR", n)
			}
		}
		if ferr := finish(); err == nil {
			err = ferr
		}
		done()
		if err != nil {
			return nil, fmt.Errorf("copy %s from '%s': %w", info.Path, c.URI(), err)
		}
	}
	if err := b.Commit(ctx); err != nil {
		return nil, err
	}
	return infos, nil
}
