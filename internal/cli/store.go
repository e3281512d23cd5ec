package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
)

func init() { register(newStoreCmd) }

// storeVerbs are the subcommands of `cairn store`, each registered from its own file.
var storeVerbs []func() *cobra.Command

func registerStoreVerb(newCmd func() *cobra.Command) { storeVerbs = append(storeVerbs, newCmd) }

func newStoreCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "store",
		Short: "Add to, query and read the store",
	}
	for _, newCmd := range storeVerbs {
		cmd.AddCommand(newCmd())
	}
	return cmd
}

// openLocalStore opens the store the global --store flag names (or the default
// store) as a local store.
func openLocalStore(cmd *cobra.Command) (*local.Store, error) {
	url, err := cmd.Flags().GetString("store")
	if err != nil {
		return nil, err
	}
	if url == "" {
		if url, err = store.DefaultURL(nil); err != nil {
			return nil, err
		}
	}
	cfg, err := store.ParseURL(url, nil)
	if err != nil {
		return nil, err
	}
	return local.Open(cmd.Context(), cfg, local.DefaultOptions())
}

// maxSymlinkHops bounds how many symlinks resolving a store path argument follows.
const maxSymlinkHops = 40

// argStorePath resolves a command-line argument to a store path as nix-store
// does: a store path, a path inside one, or a symlink (chain) leading to one,
// such as ./result. Symlink targets name the logical store dir.
func argStorePath(dir storepath.StoreDir, arg string) (storepath.StorePath, error) {
	p := arg
	for range maxSymlinkHops {
		abs, err := filepath.Abs(p)
		if err != nil {
			return storepath.StorePath{}, err
		}
		if strings.HasPrefix(abs, string(dir)+"/") {
			sp, _, err := dir.ToStorePath(abs)
			return sp, err
		}
		target, err := os.Readlink(abs)
		if err != nil {
			var pe *os.PathError
			if errors.As(err, &pe) {
				return storepath.StorePath{}, fmt.Errorf("path '%s' is not in the Nix store", abs)
			}
			return storepath.StorePath{}, err
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(abs), target)
		}
		p = target
	}
	return storepath.StorePath{}, fmt.Errorf("path '%s': too many levels of symbolic links", arg)
}

func argStorePaths(dir storepath.StoreDir, args []string) ([]storepath.StorePath, error) {
	out := make([]storepath.StorePath, len(args))
	for i, a := range args {
		p, err := argStorePath(dir, a)
		if err != nil {
			return nil, err
		}
		out[i] = p
	}
	return out, nil
}
