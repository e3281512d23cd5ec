package build

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"cairn/internal/derivation"
	"cairn/internal/storepath"
	"cairn/internal/substitute"
)

// substLogger returns the request's logger as a substitute.Logger, or nil.
func (r *request) substLogger() substitute.Logger {
	if l, ok := r.log.(substitute.Logger); ok {
		return l
	}
	return nil
}

// SubstitutesAllowed is Nix 2.8's ParsedDerivation::substitutesAllowed: the
// allowSubstitutes attribute, true when absent; as a plain attribute only
// "1" is true (nix-instantiate writes false as "").
func SubstitutesAllowed(drv *derivation.Derivation) bool {
	if j, ok := drv.Env["__json"]; ok {
		var attrs map[string]json.RawMessage
		if len(j) <= MaxStructuredAttrs && json.Unmarshal([]byte(j), &attrs) == nil {
			if v, ok := attrs["allowSubstitutes"]; ok {
				var b bool
				return json.Unmarshal(v, &b) != nil || b
			}
		}
		return true
	}
	v, ok := drv.Env["allowSubstitutes"]
	return !ok || v == "1"
}

// onlyMissing reports whether err says only that no cache has some paths
// (Nix's "no substituters" and "incomplete closure"), not that a
// substitution failed.
func onlyMissing(err error) bool {
	switch e := err.(type) {
	case nil:
		return true
	case interface{ Unwrap() []error }:
		for _, c := range e.Unwrap() {
			if !onlyMissing(c) {
				return false
			}
		}
		return true
	case interface{ Unwrap() error }:
		if e.Unwrap() == nil {
			return false
		}
		return onlyMissing(e.Unwrap())
	}
	return errors.Is(err, substitute.ErrNoSubstitute)
}

// trySubstitute substitutes g's missing outputs before it is built (Normal
// mode, substitute = true, the derivation allowing it). It reports whether
// they are valid now; an error means a cache had them and failed, and
// fallback is off.
func (b *Builder) trySubstitute(ctx context.Context, g *goal, r *request) (bool, error) {
	if g.mode != Normal || len(r.opts.Subst.Caches) == 0 || !SubstitutesAllowed(g.drv) || b.subst == nil {
		return false, nil
	}
	var paths []storepath.StorePath
	for _, name := range g.drv.OutputNames() {
		if p := g.drv.Outputs[name].Path; !p.IsZero() {
			paths = append(paths, p)
		}
	}
	valid, err := b.store.QueryValidPaths(ctx, paths)
	if err != nil {
		return false, err
	}
	var missing []storepath.StorePath
	for _, p := range paths {
		if !containsPath(valid, p) {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return true, nil
	}
	err = b.subst.Realise(ctx, r.opts.Subst, missing, r.substLogger())
	switch {
	case err == nil:
		return true, nil
	case ctx.Err() != nil:
		return false, ctx.Err()
	case onlyMissing(err) || r.opts.Fallback:
		return false, nil
	}
	// The failures were logged as they happened.
	return false, fmt.Errorf("some substitutes for the outputs of derivation '%s' failed (usually happens due to networking issues); try '--fallback' to build derivation from source ", hl(g.drvPath.String()))
}

func containsPath(ps []storepath.StorePath, p storepath.StorePath) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

// EnsurePaths makes paths (not derivations to build: store paths wanted as
// they are) valid with their closures, substituting what is missing. The
// error of a path no cache has matches substitute.ErrNoSubstitute.
func (b *Builder) EnsurePaths(ctx context.Context, paths []storepath.StorePath, opts Options, log Logger) error {
	valid, err := b.store.QueryValidPaths(ctx, paths)
	if err != nil {
		return err
	}
	var missing []storepath.StorePath
	for _, p := range paths {
		if !containsPath(valid, p) && !containsPath(missing, p) {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if len(opts.Subst.Caches) > 0 && b.subst != nil {
		r := b.newRequest(opts, log)
		err := b.subst.Realise(ctx, opts.Subst, missing, r.substLogger())
		if err == nil || !onlyMissing(err) {
			return err
		}
	}
	valid, err = b.store.QueryValidPaths(ctx, missing)
	if err != nil {
		return err
	}
	for _, p := range missing {
		if !containsPath(valid, p) {
			return &substitute.NotFoundError{Path: p}
		}
	}
	return nil
}

// Substituter returns the builder's substituter (shared by every request).
func (b *Builder) Substituter() *substitute.Substituter { return b.subst }
