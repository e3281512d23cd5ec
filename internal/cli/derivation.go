package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"cairn/internal/derivation"
	"cairn/internal/storepath"
)

func init() { register(newDerivationCmd) }

func newDerivationCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "derivation",
		Short: "Work with derivations (.drv files)",
	}
	cmd.AddCommand(newDerivationShowCmd())
	cmd.AddCommand(newDerivationAddCmd()) // derivation_add.go
	return cmd
}

func newDerivationShowCmd() *cobra.Command {
	var storeDir string
	var recursive bool
	cmd := &cobra.Command{
		Use:   "show FILE.drv...",
		Short: "Print derivations as JSON, as nix show-derivation (Nix 2.8) does",
		Long: `Print the derivations in the given .drv files as one JSON object keyed by .drv
path, with the same bytes nix show-derivation (Nix 2.8) prints.

A FILE may be anywhere on disk. Its store paths must lie in the store dir: --store-dir,
else $NIX_STORE_DIR, else /nix/store. When the file's base name is a store path base
name ("<hash>-<name>.drv", as in a store or a chroot store's real directory) the key is
that name in the store dir, as Nix shows the store path. Otherwise the derivation's name
is env "name" and the key is the .drv path computed from the contents, which is where
the derivation would be (or is) in the store.

With --recursive, input derivations are shown too; each is read from the directory of
the file that refers to it, under its store base name.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := showStoreDir(storeDir)
			if err != nil {
				return err
			}
			drvs := make(map[storepath.StorePath]*derivation.Derivation)
			for _, file := range args {
				key, d, err := readDrvFile(dir, file)
				if err != nil {
					return err
				}
				drvs[key] = d
				if recursive {
					if err := addInputDrvs(dir, filepath.Dir(file), d, drvs); err != nil {
						return err
					}
				}
			}
			return derivation.WriteJSON(cmd.OutOrStdout(), drvs)
		},
	}
	cmd.Flags().StringVar(&storeDir, "store-dir", "", "the logical store dir of the derivations (default $NIX_STORE_DIR or /nix/store)")
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "include the input derivations, read from the file's directory")
	return cmd
}

// showStoreDir picks the store dir: the flag, else $NIX_STORE_DIR, else the default.
func showStoreDir(flag string) (storepath.StoreDir, error) {
	if flag == "" {
		flag = os.Getenv("NIX_STORE_DIR")
	}
	if flag == "" {
		return storepath.DefaultStoreDir, nil
	}
	return storepath.ParseStoreDir(flag)
}

// readDrvFile reads and parses a .drv file and decides its key (see the show help).
func readDrvFile(dir storepath.StoreDir, file string) (storepath.StorePath, *derivation.Derivation, error) {
	data, err := readBounded(file, derivation.MaxSize)
	if err != nil {
		return storepath.StorePath{}, nil, err
	}
	base := filepath.Base(file)
	if key, err := dir.FromBase(base); err == nil && key.IsDerivation() {
		d, err := derivation.Parse(dir, data, strings.TrimSuffix(key.Name(), storepath.DrvExtension))
		if err != nil {
			return storepath.StorePath{}, nil, fmt.Errorf("read %s: %w", file, err)
		}
		return key, d, nil
	}
	d, err := derivation.Parse(dir, data, "")
	if err != nil {
		return storepath.StorePath{}, nil, fmt.Errorf("read %s: %w", file, err)
	}
	key, err := d.StorePath(dir)
	if err != nil {
		return storepath.StorePath{}, nil, fmt.Errorf("read %s: %w", file, err)
	}
	return key, d, nil
}

// addInputDrvs adds d's input derivations, and theirs, reading each from fileDir.
func addInputDrvs(dir storepath.StoreDir, fileDir string, d *derivation.Derivation, drvs map[storepath.StorePath]*derivation.Derivation) error {
	todo := []*derivation.Derivation{d}
	for len(todo) > 0 {
		d := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		for p := range d.InputDrvs {
			if _, seen := drvs[p]; seen {
				continue
			}
			data, err := readBounded(filepath.Join(fileDir, p.Base()), derivation.MaxSize)
			if err != nil {
				return fmt.Errorf("input derivation %s: %w", p, err)
			}
			in, err := derivation.Parse(dir, data, strings.TrimSuffix(p.Name(), storepath.DrvExtension))
			if err != nil {
				return err
			}
			drvs[p] = in
			todo = append(todo, in)
		}
	}
	return nil
}

// readBounded reads a whole file of at most max bytes.
func readBounded(file string, max int64) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("read %s: larger than %d bytes", file, max)
	}
	return data, nil
}
