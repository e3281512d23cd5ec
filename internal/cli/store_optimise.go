package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"cairn/internal/store/local"
)

func init() { registerStoreVerb(newStoreOptimiseCmd) }

func newStoreOptimiseCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "optimise",
		Short: "Hard-link identical files in the store, like nix-store --optimise",
		Long: "Replace files with identical contents (and execute bit) by hard links to one\n" +
			"copy kept in <store>/.links, and print how much space that freed.",
		Args: cobra.NoArgs,
		RunE: withLocalStore(func(cmd *cobra.Command, s *local.Store, args []string) error {
			stats, err := s.Optimise(cmd.Context(), local.OptimiseOptions{Log: cmd.ErrOrStderr()})
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.ErrOrStderr(), stats)
			return nil
		}),
	}
}
