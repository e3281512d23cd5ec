package build

import (
	"context"
	"fmt"
	"os"
	"strings"

	"cairn/internal/derivation"
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

// AddDerivation writes drv into st as nix-instantiate would: its output
// paths computed (input derivations must be valid in st), checked, and
// stored as a text path referring to its inputs. It returns the .drv path.
func AddDerivation(ctx context.Context, st *local.Store, drv *derivation.Derivation) (storepath.StorePath, error) {
	resolve := func(p storepath.StorePath) (*derivation.Derivation, error) { return ReadDerivation(st, p) }
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
