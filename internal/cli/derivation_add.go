package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"cairn/internal/build"
	"cairn/internal/derivation"
	"cairn/internal/store"
	"cairn/internal/storepath"
)

// newDerivationAddCmd is `cairn derivation add` (added to `cairn derivation` in derivation.go).
func newDerivationAddCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "add FILE...",
		Short: "Add derivations (JSON or .drv files) to the store and print their .drv paths",
		Long: `Add derivations to the store, as nix-instantiate would have written them, and print
each one's .drv path.

A FILE is either JSON or a .drv file. JSON may be the output of nix show-derivation
(derivations keyed by .drv path; all of them are added, inputs first, and the paths of
those no other one in the file depends on are printed) or a single derivation object
(the value under a key; its name is "name" or env "name"). Output paths may be left out:
they are computed, as are the .drv paths. A .drv file's input derivations must be valid
or lie beside it under their store base names.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := openStore(cmd)
			if err != nil {
				return err
			}
			defer st.Close()
			ds, ok := st.(build.DrvStore)
			if !ok {
				return fmt.Errorf("%w: this store cannot take derivations", store.ErrUnsupported)
			}
			for _, file := range args {
				paths, err := addDerivationFile(cmd.Context(), ds, file)
				if err != nil {
					return err
				}
				for _, p := range paths {
					fmt.Fprintln(cmd.OutOrStdout(), p)
				}
			}
			return nil
		},
	}
}

// addDerivationFile adds the derivations in file (JSON or ATerm) to st and
// returns the .drv paths of the file's roots: the derivations no other one
// in the file depends on, sorted.
func addDerivationFile(ctx context.Context, st build.DrvStore, file string) ([]storepath.StorePath, error) {
	data, err := readBounded(file, derivation.MaxSize)
	if err != nil {
		return nil, err
	}
	dir := st.StoreDir()
	if t := bytes.TrimSpace(data); len(t) > 0 && t[0] == '{' {
		return addDerivationJSON(ctx, st, file, t)
	}
	key, d, err := readDrvFile(dir, file)
	if err != nil {
		return nil, err
	}
	drvs := map[storepath.StorePath]*derivation.Derivation{key: d}
	// Inputs beside the file, when they are not valid yet.
	for p := range d.InputDrvs {
		if ok, err := st.IsValidPath(ctx, p); err != nil {
			return nil, err
		} else if !ok {
			if err := addInputDrvs(dir, filepath.Dir(file), d, drvs); err != nil {
				return nil, err
			}
			break
		}
	}
	if err := addInOrder(ctx, st, drvs); err != nil {
		return nil, err
	}
	return []storepath.StorePath{key}, nil
}

func addDerivationJSON(ctx context.Context, st build.DrvStore, file string, data []byte) ([]storepath.StorePath, error) {
	dir := st.StoreDir()
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	showForm := len(top) > 0
	for k := range top {
		showForm = showForm && strings.HasPrefix(k, "/")
	}
	if !showForm {
		d, err := derivation.ParseJSON(dir, data, "")
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", file, err)
		}
		p, err := build.AddDerivation(ctx, st, d)
		if err != nil {
			return nil, err
		}
		return []storepath.StorePath{p}, nil
	}
	drvs, err := derivation.ParseShowJSON(dir, data)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	if err := addInOrder(ctx, st, drvs); err != nil {
		return nil, err
	}
	needed := map[storepath.StorePath]bool{}
	for _, d := range drvs {
		for in := range d.InputDrvs {
			needed[in] = true
		}
	}
	var roots []storepath.StorePath
	for p := range drvs {
		if !needed[p] {
			roots = append(roots, p)
		}
	}
	storepath.SortPaths(roots)
	return roots, nil
}

// addInOrder adds drvs, each after its inputs among them, checking that each
// lands at the path it is keyed by.
func addInOrder(ctx context.Context, st build.DrvStore, drvs map[storepath.StorePath]*derivation.Derivation) error {
	done := map[storepath.StorePath]bool{}
	var visit func(p storepath.StorePath, depth int) error
	visit = func(p storepath.StorePath, depth int) error {
		if done[p] {
			return nil
		}
		if depth > len(drvs) {
			return fmt.Errorf("derivation %s: cycle among input derivations", p)
		}
		d := drvs[p]
		for in := range d.InputDrvs {
			if _, ok := drvs[in]; ok {
				if err := visit(in, depth+1); err != nil {
					return err
				}
			}
		}
		got, err := build.AddDerivation(ctx, st, d)
		if err != nil {
			return err
		}
		if got != p {
			return fmt.Errorf("derivation %s: its contents give the path %s", p, got)
		}
		done[p] = true
		return nil
	}
	for p := range drvs {
		if err := visit(p, 0); err != nil {
			return err
		}
	}
	return nil
}
