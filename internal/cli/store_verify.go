package cli

import (
	"errors"

	"github.com/spf13/cobra"

	"cairn/internal/store/local"
)

func init() { registerStoreVerb(newStoreVerifyCmd) }

func newStoreVerifyCmd() *cobra.Command {
	var opts local.VerifyOptions
	cmd := &cobra.Command{
		Use:   "verify [--check-contents] [--repair]",
		Short: "Check the store's database against its files, like nix-store --verify",
		Long: "Check that every valid path exists (a missing one nothing valid refers to is\n" +
			"removed from the database); with --check-contents rehash every path and .links\n" +
			"entry; with --repair remove corrupt links and repair what can be repaired.\n" +
			"Entries of the store directory that are not valid paths are reported as garbage.\n" +
			"Exits 1 when problems remain.",
		Args: cobra.NoArgs,
		RunE: withLocalStore(func(cmd *cobra.Command, s *local.Store, args []string) error {
			opts.Log = cmd.ErrOrStderr()
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
