package cli

import (
	"context"
	"errors"

	"github.com/spf13/cobra"

	"cairn/internal/build"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
)

func init() { registerStoreVerb(newStoreVerifyCmd) }

func newStoreVerifyCmd() *cobra.Command {
	var opts local.VerifyOptions
	cmd := &cobra.Command{
		Use:   "verify [--check-contents] [--repair]",
		Short: "Check the store's database against its files, like nix-store --verify",
		Long: "Check that every valid path exists (a missing one nothing valid refers to is\n" +
			"removed from the database); with --check-contents rehash every path and .links\n" +
			"entry; with --repair remove corrupt links and rebuild missing or modified paths\n" +
			"whose deriver is valid.\n" +
			"Entries of the store directory that are not valid paths are reported as garbage.\n" +
			"Exits 1 when problems remain.",
		Args: cobra.NoArgs,
		RunE: withLocalStore(func(cmd *cobra.Command, s *local.Store, args []string) error {
			opts.Log = cmd.ErrOrStderr()
			if opts.Repair {
				// A path with a valid deriver is rebuilt, as nix-store does.
				settings, err := loadSettings(cmd.Context(), warnTo(cmd.ErrOrStderr()), nil)
				if err != nil {
					return err
				}
				b, err := build.New(s, "")
				if err != nil {
					return err
				}
				defer b.Close()
				log := &cliBuildLog{w: cmd.ErrOrStderr()}
				opts.RepairPath = func(ctx context.Context, p storepath.StorePath) error {
					return b.RepairPath(ctx, p, build.OptionsFrom(settings), log)
				}
			}
			res, err := s.Verify(cmd.Context(), opts)
			if err != nil {
				return err
			}
			if res.Errors {
				return &exitError{status: 1, err: errors.New("not all store errors were fixed")}
			}
			return nil
		}),
	}
	cmd.Flags().BoolVar(&opts.CheckContents, "check-contents", false, "rehash the contents of every path")
	cmd.Flags().BoolVar(&opts.Repair, "repair", false, "fix what can be fixed")
	return cmd
}
