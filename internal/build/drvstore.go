package build

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"cairn/internal/derivation"
	"cairn/internal/nar"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
)

// ReadDerivation reads the valid .drv p from st.
func ReadDerivation(st *local.Store, p storepath.StorePath) (*derivation.Derivation, error) {
	data, err := os.ReadFile(st.RealPath(p))
	if err != nil {
		return nil, fmt.Errorf("read derivation %s: %w", p, err)
	}
	return derivation.Parse(st.StoreDir(), data, strings.TrimSuffix(p.Name(), ".drv"))
}

// DrvStore is what AddDerivation needs of a store: the local store, or a
// daemon's (store/remote).
type DrvStore interface {
	StoreDir() storepath.StoreDir
	IsValidPath(ctx context.Context, p storepath.StorePath) (bool, error)
	QueryValidPaths(ctx context.Context, paths []storepath.StorePath) ([]storepath.StorePath, error)
	AddText(ctx context.Context, name, text string, refs []storepath.StorePath) (*store.PathInfo, error)
	NarFromPath(ctx context.Context, p storepath.StorePath, w io.Writer) error
}

// readDerivationFrom reads the valid .drv p from st: from its file in a
// local store, else from its NAR.
func readDerivationFrom(ctx context.Context, st DrvStore, p storepath.StorePath) (*derivation.Derivation, error) {
	if ls, ok := st.(*local.Store); ok {
		return ReadDerivation(ls, p)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(st.NarFromPath(ctx, p, pw)) }()
	defer pr.Close()
	nr := nar.NewReader(pr)
	h, err := nr.Next()
	if err != nil {
		return nil, fmt.Errorf("read derivation %s: %w", p, err)
	}
	if h.Type != nar.TypeRegular || h.Size > derivation.MaxSize {
		return nil, fmt.Errorf("read derivation %s: not a derivation file", p)
	}
	data, err := io.ReadAll(nr)
	if err != nil {
		return nil, fmt.Errorf("read derivation %s: %w", p, err)
	}
	return derivation.Parse(st.StoreDir(), data, strings.TrimSuffix(p.Name(), ".drv"))
}

// AddDerivation writes drv into st as nix-instantiate would: its output
// paths computed (input derivations must be valid in st), checked, and
// stored as a text path referring to its inputs. It returns the .drv path.
func AddDerivation(ctx context.Context, st DrvStore, drv *derivation.Derivation) (storepath.StorePath, error) {
	resolve := func(p storepath.StorePath) (*derivation.Derivation, error) { return readDerivationFrom(ctx, st, p) }
	var c derivation.HashCache
	if err := drv.FillOutputs(st.StoreDir(), &c, resolve); err != nil {
		return storepath.StorePath{}, err
	}
	if err := drv.Validate(st.StoreDir()); err != nil {
		return storepath.StorePath{}, err
	}
	var refs []storepath.StorePath
	for p := range drv.InputDrvs {
		refs = append(refs, p)
	}
	refs = append(refs, drv.InputSrcs...)
	valid, err := st.QueryValidPaths(ctx, refs)
	if err != nil {
		return storepath.StorePath{}, err
	}
	if len(valid) != len(refs) {
		for _, r := range refs {
			ok, _ := st.IsValidPath(ctx, r)
			if !ok {
				return storepath.StorePath{}, fmt.Errorf("add derivation %s: input '%s' is not valid", drv.Name, r)
			}
		}
	}
	storepath.SortPaths(refs)
	info, err := st.AddText(ctx, drv.Name+".drv", string(drv.Bytes()), refs)
	if err != nil {
		return storepath.StorePath{}, err
	}
	return info.Path, nil
}
