package build

import (
	"context"
	"maps"
	"slices"
	"strings"

	"cairn/internal/derivation"
	"cairn/internal/protocol"
	"cairn/internal/storepath"
	"cairn/internal/substitute"
)

// MissingSource is the store and the binary caches as QueryMissing asks
// them (the daemon's connection, or a local store and its caches).
type MissingSource interface {
	IsValid(p storepath.StorePath) (bool, error)
	ValidPaths(ps []storepath.StorePath) (map[storepath.StorePath]bool, error)
	// Substitutable returns what the caches know of those of ps they have.
	Substitutable(ps []storepath.StorePath) ([]protocol.SubstitutablePathInfo, error)
	HasCaches() bool
	// Prefetch starts looking up ps in the caches ahead of the walk.
	Prefetch(ps []storepath.StorePath)
	// MissingOutputs reads dp's derivation and says whether any output it
	// wants is missing.
	MissingOutputs(dp protocol.DerivedPath) (*derivation.Derivation, map[string]storepath.StorePath, bool, error)
}

func sortedUnique(ps []storepath.StorePath) []storepath.StorePath {
	ps = slices.Clone(ps)
	storepath.SortPaths(ps)
	return slices.Compact(ps)
}

// QueryMissing answers QueryMissing as Nix 2.8 does: a valid derivation
// whose missing outputs are all in a binary cache will be
// substituted (their references looked at in turn), otherwise built (its
// inputs looked at in turn); a missing opaque path a cache has will be
// substituted, with its references; every other path that is not valid is
// unknown. The sizes are the narinfos' FileSize and NarSize.
func QueryMissing(ctx context.Context, src MissingSource, paths []protocol.DerivedPath) (*protocol.MissingInfo, error) {
	mi := &protocol.MissingInfo{}
	seen := map[string]bool{}
	var visit func(dp protocol.DerivedPath) error
	willSubstitute := func(infos []protocol.SubstitutablePathInfo) error {
		for _, info := range infos {
			mi.WillSubstitute = append(mi.WillSubstitute, info.Path)
			mi.DownloadSize += info.DownloadSize
			mi.NarSize += info.NarSize
		}
		var refs []storepath.StorePath
		for _, info := range infos {
			for _, ref := range info.References {
				if !seen[ref.String()] {
					refs = append(refs, ref)
				}
			}
		}
		if len(refs) > 1 {
			valid, err := src.ValidPaths(refs)
			if err != nil {
				return err
			}
			src.Prefetch(slices.DeleteFunc(slices.Clone(refs), func(p storepath.StorePath) bool { return valid[p] }))
		}
		for _, ref := range refs {
			if err := visit(protocol.DerivedPath{Path: ref}); err != nil {
				return err
			}
		}
		return nil
	}
	visit = func(dp protocol.DerivedPath) error {
		key := dp.Path.String()
		if dp.Built {
			key += "!" + strings.Join(dp.Outputs, ",")
		}
		if seen[key] {
			return nil
		}
		seen[key] = true
		if err := ctx.Err(); err != nil {
			return err
		}
		ok, err := src.IsValid(dp.Path)
		if err != nil {
			return err
		}
		if !dp.Built {
			if ok {
				return nil
			}
			infos, err := src.Substitutable([]storepath.StorePath{dp.Path})
			if err != nil {
				return err
			}
			if len(infos) == 0 {
				mi.Unknown = append(mi.Unknown, dp.Path)
				return nil
			}
			return willSubstitute(infos)
		}
		if !ok {
			mi.Unknown = append(mi.Unknown, dp.Path)
			return nil
		}
		drv, outs, missing, err := src.MissingOutputs(dp)
		if err != nil || !missing {
			return err
		}
		if SubstitutesAllowed(drv) && src.HasCaches() {
			var invalid []storepath.StorePath
			known := true
			for _, name := range slices.Sorted(maps.Keys(outs)) {
				o := outs[name]
				if o.IsZero() {
					known = false
					break
				}
				if ok, err := src.IsValid(o); err != nil {
					return err
				} else if !ok {
					invalid = append(invalid, o)
				}
			}
			if known {
				infos, err := src.Substitutable(invalid)
				if err != nil {
					return err
				}
				if len(infos) == len(invalid) {
					for _, o := range invalid {
						seen[o.String()] = true
					}
					return willSubstitute(infos)
				}
			}
		}
		mi.WillBuild = append(mi.WillBuild, dp.Path)
		for in, outs := range drv.InputDrvs {
			if err := visit(protocol.DerivedPath{Path: in, Built: true, Outputs: outs}); err != nil {
				return err
			}
		}
		for _, src := range drv.InputSrcs {
			if err := visit(protocol.DerivedPath{Path: src}); err != nil {
				return err
			}
		}
		return nil
	}
	var opaque []storepath.StorePath
	for _, dp := range paths {
		if !dp.Built {
			opaque = append(opaque, dp.Path)
		}
	}
	if len(opaque) > 1 {
		valid, err := src.ValidPaths(opaque)
		if err != nil {
			return nil, err
		}
		src.Prefetch(slices.DeleteFunc(opaque, func(p storepath.StorePath) bool { return valid[p] }))
	}
	for _, dp := range paths {
		if err := visit(dp); err != nil {
			return nil, err
		}
	}
	mi.WillBuild, mi.WillSubstitute, mi.Unknown = sortedUnique(mi.WillBuild), sortedUnique(mi.WillSubstitute), sortedUnique(mi.Unknown)
	return mi, nil
}

// localMissing is a Builder's store and caches as QueryMissing asks them.
type localMissing struct {
	ctx context.Context
	b   *Builder
	cfg substitute.Config
}

func (m localMissing) IsValid(p storepath.StorePath) (bool, error) {
	return m.b.store.IsValidPath(m.ctx, p)
}
func (m localMissing) ValidPaths(ps []storepath.StorePath) (map[storepath.StorePath]bool, error) {
	valid, err := m.b.store.QueryValidPaths(m.ctx, ps)
	out := make(map[storepath.StorePath]bool, len(valid))
	for _, p := range valid {
		out[p] = true
	}
	return out, err
}
func (m localMissing) HasCaches() bool                   { return len(m.cfg.Caches) > 0 }
func (m localMissing) Prefetch(ps []storepath.StorePath) { substitute.Prefetch(m.ctx, m.cfg, ps) }
func (m localMissing) Substitutable(ps []storepath.StorePath) ([]protocol.SubstitutablePathInfo, error) {
	return substitute.Substitutable(m.ctx, m.cfg, ps)
}
func (m localMissing) MissingOutputs(dp protocol.DerivedPath) (*derivation.Derivation, map[string]storepath.StorePath, bool, error) {
	drv, err := m.b.readDrv(m.ctx, dp.Path)
	if err != nil {
		return nil, nil, false, err
	}
	outs, missing, err := m.b.missing(m.ctx, drv, dp.Outputs)
	return drv, outs, missing, err
}

// Missing is QueryMissing for targets on the Builder's store, with the
// caches of opts: what a build of them will build, fetch, or cannot make.
func (b *Builder) Missing(ctx context.Context, targets []Target, opts Options) (*protocol.MissingInfo, error) {
	dps := make([]protocol.DerivedPath, len(targets))
	for i, t := range targets {
		dps[i] = protocol.DerivedPath{Path: t.Drv, Built: t.Drv.IsDerivation(), Outputs: t.Outputs}
	}
	return QueryMissing(ctx, localMissing{ctx: ctx, b: b, cfg: opts.Subst}, dps)
}
