package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"cairn/internal/store/local"
)

func init() { registerStoreVerb(newStoreDeleteCmd) }

func newStoreDeleteCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "delete PATH...",
		Short: "Delete store paths nothing else refers to, like nix-store --delete",
		Long: "Delete each PATH whose referrers (other than itself) are all being deleted too,\n" +
			"referrers first, then the .links entries nothing uses any more. GC roots are not\n" +
			"consulted. Prints how many paths were deleted and the space freed, as Nix does.",
		Args: cobra.MinimumNArgs(1),
		RunE: withLocalStore(func(cmd *cobra.Command, s *local.Store, args []string) error {
			paths, err := argStorePaths(s.StoreDir(), args)
			if err != nil {
				return err
			}
			res, err := s.Delete(cmd.Context(), paths, local.DeleteOptions{Log: cmd.ErrOrStderr()})
			if res != nil {
				fmt.Fprintf(cmd.OutOrStdout(), "%d store paths deleted, %.2f MiB freed\n",
					len(res.Paths), float64(res.BytesFreed)/(1024*1024))
			}
			return err
		}),
	}
}
