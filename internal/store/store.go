package store

import (
	"context"
	"io"

	"cairn/internal/nixhash"
	"cairn/internal/storepath"
)

// Store is the least every store offers: the directory its paths are named by,
// and release of its resources. Everything else is a capability interface below;
// ask for one with a type assertion.
type Store interface {
	// StoreDir is the logical store directory of every path the store names.
	StoreDir() storepath.StoreDir
	// Close releases the store's resources. Calls after Close fail.
	Close() error
}

// PathInfoQuerier reads the metadata of valid paths.
type PathInfoQuerier interface {
	// QueryPathInfo returns the info of a valid path, references sorted. If p is
	// not valid the error matches ErrNotFound (a *NotValidError). The result is
	// the caller's to modify.
	QueryPathInfo(ctx context.Context, p storepath.StorePath) (*PathInfo, error)
}

// ValidityQuerier answers whether paths are valid, in bulk.
type ValidityQuerier interface {
	// IsValidPath reports whether p is valid; an error means the store could not tell.
	IsValidPath(ctx context.Context, p storepath.StorePath) (bool, error)
	// QueryValidPaths returns the valid paths among paths, in their input order,
	// each once.
	QueryValidPaths(ctx context.Context, paths []storepath.StorePath) ([]storepath.StorePath, error)
}

// ReferrerQuerier finds who refers to a path.
type ReferrerQuerier interface {
	// QueryReferrers returns the valid paths whose references include p (p
	// itself if it refers to itself), sorted. An invalid p has no referrers.
	QueryReferrers(ctx context.Context, p storepath.StorePath) ([]storepath.StorePath, error)
}

// ClosureQuerier computes closures inside the store in one request.
type ClosureQuerier interface {
	// QueryClosure returns roots and every path reachable from them over
	// references (over referrers when reverse is true), sorted. Every root must be
	// valid (else an error matching ErrNotFound).
	QueryClosure(ctx context.Context, roots []storepath.StorePath, reverse bool) ([]storepath.StorePath, error)
}

// DerivationQuerier relates derivations and their outputs.
type DerivationQuerier interface {
	// QueryDerivationOutputs returns the statically known outputs of the valid
	// derivation drv, by output name. An invalid drv gives an error matching ErrNotFound.
	QueryDerivationOutputs(ctx context.Context, drv storepath.StorePath) (map[string]storepath.StorePath, error)
	// QueryValidDerivers returns the valid derivations that name p as an output,
	// sorted; none is not an error.
	QueryValidDerivers(ctx context.Context, p storepath.StorePath) ([]storepath.StorePath, error)
}

// HashPartQuerier finds a valid path by its hash part.
type HashPartQuerier interface {
	// QueryPathFromHashPart returns the valid path whose hash part is hashPart, or
	// an error matching ErrNotFound.
	QueryPathFromHashPart(ctx context.Context, hashPart string) (storepath.StorePath, error)
}

// AllPathsQuerier lists the whole store.
type AllPathsQuerier interface {
	// QueryAllValidPaths returns every valid path, sorted.
	QueryAllValidPaths(ctx context.Context) ([]storepath.StorePath, error)
}

// NarReader serialises valid paths.
type NarReader interface {
	// NarFromPath writes the NAR of the valid path p to w. If p is not valid the
	// error matches ErrNotFound and nothing is written.
	NarFromPath(ctx context.Context, p storepath.StorePath, w io.Writer) error
}

// AddNarOptions adjusts NarAdder.AddNar.
type AddNarOptions struct {
	// Repair replaces the files of a path that is already valid.
	Repair bool
	// CheckSigs asks a daemon to check the path's signatures as it would
	// an untrusted client's (require-sigs); a local store leaves that to
	// its caller.
	CheckSigs bool
}

// NarAdder adds a path from its NAR and declared metadata (Nix's AddToStoreNar,
// used by copying, substitution and import).
type NarAdder interface {
	// AddNar reads exactly one NAR from r (never past its end, even when the path
	// is already valid) and makes info.Path valid with info's metadata. The NAR
	// must hash to info.NarHash and, when info.NarSize is not 0, be that long;
	// when info.CA is set, the path must be that content address's path and the
	// contents must match it. Otherwise the error matches ErrHashMismatch and the
	// store is as before. A path that is already valid is left alone (unless
	// opts.Repair). References must be valid, or among themselves in the same
	// call. A zero RegistrationTime means now.
	AddNar(ctx context.Context, info *PathInfo, r io.Reader, opts AddNarOptions) error
}

// CAAdder adds content under the content-addressed path it determines (Nix's
// AddToStore and AddTextToStore).
type CAAdder interface {
	// AddCA reads content from r to its end and adds it as name. For method
	// Recursive, r holds a NAR and algo hashes that NAR; for Flat, r holds the
	// bytes of one regular file and algo hashes them; for Text, r holds the text
	// (algo must be SHA256) and refs are its references. Flat and non-sha256
	// Recursive paths allow no references. Adding a path that is already valid
	// changes nothing and returns its info.
	AddCA(ctx context.Context, name string, method nixhash.Method, algo nixhash.Algorithm,
		refs []storepath.StorePath, r io.Reader) (*PathInfo, error)
}
