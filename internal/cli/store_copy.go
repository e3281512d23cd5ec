package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"cairn/internal/config"
	"cairn/internal/narinfo"
	"cairn/internal/remotebuild"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/store/remote"
	"cairn/internal/storepath"
	"cairn/internal/substitute"
)

func init() { registerStoreVerb(newStoreCopyCmd) }

func newStoreCopyCmd() *cobra.Command {
	var from, to string
	var noCheckSigs, onDestination bool
	cmd := &cobra.Command{
		Use:   "copy (--from URL | --to URL) PATH...",
		Short: "Copy paths and their closures between stores, as nix copy",
		Long: "Copy the PATHs and everything they refer to from the store --from names to the\n" +
			"store --store names, or from the store --store names to the one --to names;\n" +
			"local stores, daemons (daemon, unix://PATH) and ssh-ng://HOST alike. A path\n" +
			"copied into a local store needs a signature by a trusted-public-keys key\n" +
			"(require-sigs) unless it is content-addressed or --no-check-sigs is given;\n" +
			"a daemon decides for itself. --to file:///DIR (or s3://BUCKET) writes a binary cache there\n" +
			"(?compression=xz|bzip2|zstd|none, ?secret-key=FILE to sign); --from a binary\n" +
			"cache URL (file://, http(s)://, s3://) reads one.",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (from == "") == (to == "") {
				return errors.New("exactly one of '--from' and '--to' is needed")
			}
			ctx := cmd.Context()
			cfg, settings, err := storeConfig(cmd)
			if err != nil {
				return err
			}
			if strings.HasPrefix(to, "file://") || strings.HasPrefix(to, "s3://") {
				// A binary cache, written as nix copy writes one.
				src, err := openStoreConfig(ctx, cfg, settings, cmd.ErrOrStderr())
				if err != nil {
					return err
				}
				defer src.Close()
				cache, err := substitute.OpenCacheWriter(ctx, to, src.StoreDir(), substitute.OptionsFrom(settings).HTTP)
				if err != nil {
					return err
				}
				paths, err := argStorePaths(src.StoreDir(), args)
				if err != nil {
					return err
				}
				c := &copier{src: src, dst: cache, srcURI: storeURI(cfg), dstURI: cache.URI(), log: cmd.ErrOrStderr()}
				return c.copy(ctx, paths)
			}
			if isCacheURL(from) {
				// From a binary cache: its narinfos and NARs.
				dst, err := openStoreConfig(ctx, cfg, settings, cmd.ErrOrStderr())
				if err != nil {
					return err
				}
				defer dst.Close()
				cache, err := substitute.NewCache(from, substitute.OptionsFrom(settings))
				if err != nil {
					return err
				}
				paths, err := argStorePaths(dst.StoreDir(), args)
				if err != nil {
					return err
				}
				c := &copier{src: cacheSource{cache, dst.StoreDir()}, dst: dst, srcURI: cache.URI(), dstURI: storeURI(cfg),
					checkSigs: !noCheckSigs, log: cmd.ErrOrStderr()}
				if _, ok := dst.(*local.Store); ok && c.checkSigs && settings.Bool("require-sigs") {
					c.keys, c.verify = narinfo.TrustedKeys(settings.Get("trusted-public-keys"), warnTo(cmd.ErrOrStderr())), true
				}
				return c.copy(ctx, paths)
			}
			other, err := parseStoreURL(from+to, warnTo(cmd.ErrOrStderr()))
			if err != nil {
				return err
			}
			srcCfg, dstCfg := other, cfg
			if to != "" {
				srcCfg, dstCfg = cfg, other
			}
			src, err := openCopyStore(ctx, srcCfg, settings, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			defer src.Close()
			dst, err := openCopyStore(ctx, dstCfg, settings, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			defer dst.Close()
			paths, err := argStorePaths(src.StoreDir(), args)
			if err != nil {
				return err
			}
			csrc, ok := src.(copySource)
			if !ok {
				return fmt.Errorf("copy from '%s': %w", storeURI(srcCfg), store.ErrUnsupported)
			}
			c := &copier{src: csrc, dst: dst, srcURI: storeURI(srcCfg), dstURI: storeURI(dstCfg),
				checkSigs: !noCheckSigs, substitute: onDestination, log: cmd.ErrOrStderr()}
			if _, ok := dst.(*local.Store); ok && c.checkSigs && settings.Bool("require-sigs") {
				c.keys = narinfo.TrustedKeys(settings.Get("trusted-public-keys"), warnTo(cmd.ErrOrStderr()))
				c.verify = true
			}
			return c.copy(ctx, paths)
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "copy from the store at `URL`")
	cmd.Flags().StringVar(&to, "to", "", "copy to the store at `URL`")
	cmd.Flags().BoolVar(&noCheckSigs, "no-check-sigs", false, "do not require signatures")
	cmd.Flags().BoolVarP(&onDestination, "substitute-on-destination", "s", false, "let the destination substitute what its caches have")
	return cmd
}

// storeURI is how Nix names a store in "copying path '…' to '…'" (its
// getUri): "local", "daemon", or the scheme and host.
func storeURI(cfg *store.Config) string {
	switch cfg.Scheme {
	case store.SchemeDaemon:
		return "daemon"
	case store.SchemeSSHNG, store.SchemeSSH:
		u, _, _ := strings.Cut(cfg.URL, "?")
		return u
	}
	return "local"
}

// isCacheURL says u names a binary cache to copy from.
func isCacheURL(u string) bool {
	for _, p := range []string{"file://", "http://", "https://", "s3://"} {
		if strings.HasPrefix(u, p) {
			return true
		}
	}
	return false
}

// cacheSource is a binary cache as copying reads it.
type cacheSource struct {
	c   *substitute.Cache
	dir storepath.StoreDir // the destination's, which the cache's must be
}

func (s cacheSource) StoreDir() storepath.StoreDir { return s.dir }
func (s cacheSource) Close() error                 { return nil }

func (s cacheSource) QueryPathInfos(ctx context.Context, paths []storepath.StorePath) ([]*store.PathInfo, error) {
	var out []*store.PathInfo
	for _, p := range paths {
		ni, err := s.c.NarInfo(ctx, p)
		if errors.Is(err, substitute.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		info := &store.PathInfo{Path: ni.StorePath, NarHash: ni.NarHash, NarSize: ni.NarSize,
			References: ni.References, Deriver: ni.Deriver, CA: ni.CA}
		for _, sig := range ni.Sigs {
			info.Signatures = append(info.Signatures, sig.String())
		}
		out = append(out, info)
	}
	return out, nil
}

func (s cacheSource) QueryClosure(ctx context.Context, roots []storepath.StorePath, reverse bool) ([]storepath.StorePath, error) {
	return closureOf(ctx, s.QueryPathInfos, roots)
}

func (s cacheSource) NarFromPath(ctx context.Context, p storepath.StorePath, w io.Writer) error {
	ni, err := s.c.NarInfo(ctx, p)
	if err != nil {
		return err
	}
	rc, err := s.c.OpenNar(ctx, ni)
	if err != nil {
		return err
	}
	defer rc.Close()
	return substitute.Decompress(ni.Compression, rc, w)
}

// closureOf follows references one level per query, as Nix's
// computeFSClosure does on a store that has no closure query.
func closureOf(ctx context.Context, infos func(context.Context, []storepath.StorePath) ([]*store.PathInfo, error), roots []storepath.StorePath) ([]storepath.StorePath, error) {
	seen := map[storepath.StorePath]bool{}
	var out []storepath.StorePath
	for frontier := roots; len(frontier) > 0; {
		var next []storepath.StorePath
		got, err := infos(ctx, frontier)
		if err != nil {
			return nil, err
		}
		for _, p := range frontier {
			if !slices.ContainsFunc(got, func(i *store.PathInfo) bool { return i.Path == p }) {
				return nil, fmt.Errorf("path '%s' is not valid", p)
			}
		}
		for _, info := range got {
			if seen[info.Path] {
				continue
			}
			seen[info.Path] = true
			out = append(out, info.Path)
			for _, r := range info.References {
				if !seen[r] {
					next = append(next, r)
				}
			}
		}
		storepath.SortPaths(next)
		frontier = slices.Compact(next)
	}
	storepath.SortPaths(out)
	return out, nil
}

// openCopyStore opens a store to copy from or to: any the verbs open, and
// ssh:// (nix-store --serve).
func openCopyStore(ctx context.Context, cfg *store.Config, settings *config.Settings, stderr io.Writer) (store.Store, error) {
	if cfg.Scheme != store.SchemeSSH {
		return openStoreConfig(ctx, cfg, settings, stderr)
	}
	c, err := remotebuild.Dial(ctx, &remotebuild.Machine{StoreURI: cfg.URL}, stderr)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", cfg.URL, err)
	}
	return &serveStore{c: c, dir: cfg.StoreDir}, nil
}

// serveStore is an ssh:// store (nix-store --serve --write) as copying
// uses it.
type serveStore struct {
	c   *remotebuild.Conn
	dir storepath.StoreDir
}

func (s *serveStore) StoreDir() storepath.StoreDir { return s.dir }
func (s *serveStore) Close() error                 { return s.c.Close() }

func (s *serveStore) QueryPathInfos(ctx context.Context, paths []storepath.StorePath) ([]*store.PathInfo, error) {
	return s.c.QueryPathInfos(paths)
}

// QueryClosure follows references one level per QueryPathInfos.
func (s *serveStore) QueryClosure(ctx context.Context, roots []storepath.StorePath, reverse bool) ([]storepath.StorePath, error) {
	return closureOf(ctx, s.QueryPathInfos, roots)
}

func (s *serveStore) NarFromPath(ctx context.Context, p storepath.StorePath, w io.Writer) error {
	infos, err := s.c.QueryPathInfos([]storepath.StorePath{p})
	if err != nil {
		return err
	}
	if len(infos) == 0 {
		return fmt.Errorf("path '%s' is not valid", p)
	}
	r, err := s.c.DumpStorePath(p, infos[0].NarSize)
	if err != nil {
		return err
	}
	_, err = io.Copy(w, r)
	return err
}

func (s *serveStore) QueryValidPathsSubstituting(ctx context.Context, paths []storepath.StorePath, substitute bool) ([]storepath.StorePath, error) {
	return s.c.QueryValidPaths(paths, false, substitute)
}

func (s *serveStore) AddNar(ctx context.Context, info *store.PathInfo, nar io.Reader, opts store.AddNarOptions) error {
	return s.c.AddToStoreNar(info, nar)
}

// openStoreConfig opens the store cfg names, as openStore opens --store's.
func openStoreConfig(ctx context.Context, cfg *store.Config, settings *config.Settings, stderr io.Writer) (anyStore, error) {
	switch cfg.Scheme {
	case store.SchemeDaemon:
		return remote.Open(ctx, cfg, remote.Options{ClientOptions: clientOptions(settings)})
	case store.SchemeSSHNG:
		c, err := remotebuild.DialDaemon(ctx, &remotebuild.Machine{StoreURI: cfg.URL}, cfg.StoreDir, stderr)
		if err != nil {
			return nil, fmt.Errorf("open store %s: %w", cfg.URL, err)
		}
		return sshNGStore{c.Store(), c}, nil
	}
	return local.Open(ctx, cfg, commandOptions(ctx, settings))
}

// copySource is what copying reads from a store.
type copySource interface {
	StoreDir() storepath.StoreDir
	Close() error
	QueryClosure(ctx context.Context, roots []storepath.StorePath, reverse bool) ([]storepath.StorePath, error)
	QueryPathInfos(ctx context.Context, paths []storepath.StorePath) ([]*store.PathInfo, error)
	NarFromPath(ctx context.Context, p storepath.StorePath, w io.Writer) error
}

// copier copies closures from src to dst as Nix's copyPaths does.
type copier struct {
	src            copySource
	dst            store.Store
	srcURI, dstURI string
	checkSigs      bool
	substitute     bool
	verify         bool // dst is local: check signatures here
	keys           []narinfo.PublicKey
	log            io.Writer
}

func (c *copier) copy(ctx context.Context, paths []storepath.StorePath) error {
	closure, err := c.src.QueryClosure(ctx, paths, false)
	if err != nil {
		return err
	}
	valid, err := c.validOnDst(ctx, closure)
	if err != nil {
		return err
	}
	isValid := make(map[storepath.StorePath]bool, len(valid))
	for _, p := range valid {
		isValid[p] = true
	}
	var missing []storepath.StorePath
	for _, p := range closure {
		if !isValid[p] {
			missing = append(missing, p)
		}
	}
	fmt.Fprintf(c.log, "copying %d paths...\n", len(missing))
	if len(missing) == 0 {
		return nil
	}
	infos, err := c.src.QueryPathInfos(ctx, missing)
	if err != nil {
		return err
	}
	byPath := make(map[storepath.StorePath]*store.PathInfo, len(infos))
	for _, info := range infos {
		byPath[info.Path] = info
	}
	order, err := store.TopoSort(missing, func(p storepath.StorePath) []storepath.StorePath { return byPath[p].References })
	if err != nil {
		return err
	}
	sorted := make([]*store.PathInfo, 0, len(order))
	for i := len(order) - 1; i >= 0; i-- {
		// Copied as Nix copies: never marked built here.
		info := byPath[order[i]]
		info.Ultimate = false
		sorted = append(sorted, info)
	}
	if rs, ok := c.dst.(interface {
		AddNars(context.Context, []*store.PathInfo, func(*store.PathInfo) (io.ReadCloser, error), func(*store.PathInfo), store.AddNarOptions) error
	}); ok {
		// A daemon: every path in one stream; it checks the signatures.
		err := rs.AddNars(ctx, sorted, func(info *store.PathInfo) (io.ReadCloser, error) {
			pr, pw := io.Pipe()
			go func() { pw.CloseWithError(c.src.NarFromPath(ctx, info.Path, pw)) }()
			return pr, nil
		}, func(info *store.PathInfo) {
			fmt.Fprintf(c.log, "%s\n", c.message(info.Path))
		}, store.AddNarOptions{CheckSigs: c.checkSigs})
		var de *remote.Error
		if errors.As(err, &de) {
			return errors.New(de.Message) // the daemon's words, as Nix shows them
		}
		return err
	}
	if st, ok := c.dst.(*local.Store); ok {
		return c.copyLocal(ctx, st, sorted)
	}
	adder, ok := c.dst.(store.NarAdder)
	if !ok {
		return fmt.Errorf("copy to '%s': %w", c.dstURI, store.ErrUnsupported)
	}
	for _, info := range sorted {
		fmt.Fprintf(c.log, "%s\n", c.message(info.Path))
		if c.verify && !info.ContentAddressed() && !narinfo.VerifyAny(info.Fingerprint(), narinfo.ParseSignatures(info.Signatures), c.keys) {
			return fmt.Errorf("cannot add path '%s' because it lacks a valid signature", info.Path)
		}
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(c.src.NarFromPath(ctx, info.Path, pw)) }()
		err := adder.AddNar(ctx, info, pr, store.AddNarOptions{CheckSigs: c.checkSigs})
		pr.CloseWithError(io.ErrClosedPipe)
		if err != nil {
			return err
		}
	}
	return nil
}

// localBatch is how many paths a local destination registers at once (its
// spare lock files: see local.Store.AddPaths).
const localBatch = 64

// copyLocal adds infos (dependencies first) to a local store, a batch of
// localBatch paths per transaction.
func (c *copier) copyLocal(ctx context.Context, st *local.Store, infos []*store.PathInfo) error {
	for start := 0; start < len(infos); start += localBatch {
		b := st.NewBatch()
		for _, info := range infos[start:min(start+localBatch, len(infos))] {
			fmt.Fprintf(c.log, "%s\n", c.message(info.Path))
			var err error
			if c.verify && !info.ContentAddressed() && !narinfo.VerifyAny(info.Fingerprint(), narinfo.ParseSignatures(info.Signatures), c.keys) {
				err = fmt.Errorf("cannot add path '%s' because it lacks a valid signature", info.Path)
			} else {
				pr, pw := io.Pipe()
				go func() { pw.CloseWithError(c.src.NarFromPath(ctx, info.Path, pw)) }()
				err = b.AddNar(ctx, info, pr, store.AddNarOptions{})
				pr.CloseWithError(io.ErrClosedPipe)
			}
			if err != nil {
				// The paths before it stay copied, as Nix copies one
				// at a time.
				if cerr := b.Commit(ctx); cerr != nil {
					return cerr
				}
				return err
			}
		}
		if err := b.Commit(ctx); err != nil {
			return err
		}
	}
	return nil
}

// validOnDst asks the destination which paths it has, letting it
// substitute first with --substitute-on-destination (a daemon's).
func (c *copier) validOnDst(ctx context.Context, paths []storepath.StorePath) ([]storepath.StorePath, error) {
	if rs, ok := c.dst.(interface {
		QueryValidPathsSubstituting(context.Context, []storepath.StorePath, bool) ([]storepath.StorePath, error)
	}); ok {
		return rs.QueryValidPathsSubstituting(ctx, paths, c.substitute)
	}
	vq, ok := c.dst.(store.ValidityQuerier)
	if !ok {
		return nil, fmt.Errorf("copy to '%s': %w", c.dstURI, store.ErrUnsupported)
	}
	return vq.QueryValidPaths(ctx, paths)
}

// message is Nix's text for one path copied.
func (c *copier) message(p storepath.StorePath) string {
	switch {
	case c.srcURI == "local" || c.srcURI == "daemon":
		return fmt.Sprintf("copying path '%s' to '%s'...", p, c.dstURI)
	case c.dstURI == "local" || c.dstURI == "daemon":
		return fmt.Sprintf("copying path '%s' from '%s'...", p, c.srcURI)
	}
	return fmt.Sprintf("copying path '%s' from '%s' to '%s'...", p, c.srcURI, c.dstURI)
}
