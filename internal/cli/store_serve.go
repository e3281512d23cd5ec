package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"cairn/internal/build"
	"cairn/internal/gcroots"
	"cairn/internal/serve"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/store/remote"
	"cairn/internal/substitute"
)

func init() { registerStoreVerb(newStoreServeCmd) }

func newStoreServeCmd() *cobra.Command {
	var write bool
	cmd := &cobra.Command{
		Use:   "serve [--write]",
		Short: "Serve the store on standard input and output, like nix-store --serve",
		Long: "Speak Nix's serve protocol on standard input and output, as `nix-store --serve`\n" +
			"does at the far end of an ssh:// store or of a remote builder: query, dump and\n" +
			"export paths; with --write also import, add and build them. Point Nix at it with\n" +
			"the store's remote-program, e.g. 'ssh://host?remote-program=cairn store serve'\n" +
			"(Nix adds --serve --write, which this verb accepts).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, settings, err := storeConfig(cmd)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			stderr := cmd.ErrOrStderr()
			s := &serve.Server{Write: write}
			switch cfg.Scheme {
			case store.SchemeDaemon:
				// The daemon decides what this user may do; the settings
				// reach it as a client's.
				rs, err := remote.Open(ctx, cfg, remote.Options{ClientOptions: clientOptions(settings)})
				if err != nil {
					return err
				}
				defer rs.Close()
				s.Store = &serve.Remote{Store: rs}
			case store.SchemeLocal:
				st, err := local.Open(ctx, cfg, localOptions(settings))
				if err != nil {
					return err
				}
				defer st.Close()
				l := &serve.Local{Store: st, Roots: gcroots.New(cfg.StateDir, cfg.StoreDir, cfg.RealStoreDir), Log: stderr}
				defer l.Close()
				if write {
					b, err := build.NewWithConfig(st, build.ConfigFrom(settings))
					if err != nil {
						return err
					}
					defer b.Close()
					l.Builder = b
					l.Options = build.OptionsFrom(settings)
					l.Options.Subst = substitute.ConfigFrom(settings, warnTo(stderr))
				}
				s.Store = l
			default:
				return fmt.Errorf("%s: %w: cairn store serve needs a local or a daemon store", cfg.URL, store.ErrUnsupported)
			}
			return s.Serve(ctx, cmd.InOrStdin(), cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVar(&write, "write", false, "allow importing, adding and building paths")
	// nix-store's own flag: Nix appends "--serve --write" to remote-program.
	cmd.Flags().Bool("serve", true, "accepted for nix-store compatibility")
	cmd.Flags().MarkHidden("serve")
	return cmd
}
