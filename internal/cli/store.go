package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"cairn/internal/config"
	"cairn/internal/nixhash"
	"cairn/internal/remotebuild"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/store/remote"
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

// storeConfig parses the store URL the global --store flag names (or the
// default store's, see storeURL) and reads the settings.
func storeConfig(cmd *cobra.Command) (*store.Config, *config.Settings, error) {
	flag, err := cmd.Flags().GetString("store")
	if err != nil {
		return nil, nil, err
	}
	settings, err := loadSettings(cmd.Context(), warnTo(cmd.ErrOrStderr()), nil)
	if err != nil {
		return nil, nil, err
	}
	url, err := storeURL(flag, settings, false)
	if err != nil {
		return nil, nil, err
	}
	cfg, err := parseStoreURL(url, warnTo(cmd.ErrOrStderr()))
	return cfg, settings, err
}

// parseStoreURL parses a store URL and warns, as Nix does, about each
// parameter no store reads.
func parseStoreURL(url string, warn func(string)) (*store.Config, error) {
	cfg, err := store.ParseURL(url, nil)
	if err != nil {
		return nil, err
	}
	for _, name := range cfg.UnknownParams() {
		warn(fmt.Sprintf("unknown setting '%s'", name))
	}
	return cfg, nil
}

// withLocalStore adapts a verb's body that needs the local store named by --store:
// it opens the store, runs f and closes the store again.
func withLocalStore(f func(cmd *cobra.Command, s *local.Store, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		s, err := openLocalStore(cmd)
		if err != nil {
			return err
		}
		defer s.Close()
		return f(cmd, s, args)
	}
}

// openLocalStore opens the store the global --store flag names (or the default
// store) as a local store.
func openLocalStore(cmd *cobra.Command) (*local.Store, error) {
	cfg, settings, err := storeConfig(cmd)
	if err != nil {
		return nil, err
	}
	if cfg.Scheme != store.SchemeLocal {
		return nil, fmt.Errorf("%s: %w: this command needs a local store", cfg.URL, store.ErrUnsupported)
	}
	return local.Open(cmd.Context(), cfg, commandOptions(cmd.Context(), settings))
}

// anyStore is what the verbs that work on a local store and through a daemon
// alike (add, query, path-info, dump) need; *local.Store and *remote.Store
// both offer it.
type anyStore interface {
	store.Store
	store.PathInfoQuerier
	store.ReferrerQuerier
	store.ClosureQuerier
	store.DerivationQuerier
	store.NarReader
	QueryPathInfos(ctx context.Context, paths []storepath.StorePath) ([]*store.PathInfo, error)
	QueryReferencesOf(ctx context.Context, paths []storepath.StorePath) (map[storepath.StorePath][]storepath.StorePath, error)
	AddPaths(ctx context.Context, srcs []string, method nixhash.Method, algo nixhash.Algorithm) ([]*store.PathInfo, error)
}

// openStore opens the store --store names: a local store, or a daemon's
// ("daemon", "unix://PATH", "ssh-ng://HOST") through package remote.
func openStore(cmd *cobra.Command) (anyStore, error) {
	cfg, settings, err := storeConfig(cmd)
	if err != nil {
		return nil, err
	}
	return openStoreConfig(cmd.Context(), cfg, settings, cmd.ErrOrStderr())
}

// sshNGStore is a daemon's store over ssh (ssh-ng://): closing it ends the
// command too.
type sshNGStore struct {
	*remote.Store
	conn *remotebuild.DaemonConn
}

func (s sshNGStore) Close() error { return s.conn.Close() }

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
