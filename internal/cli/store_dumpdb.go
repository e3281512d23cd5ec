package cli

import (
	"github.com/spf13/cobra"

	"cairn/internal/store/local"
)

func init() {
	registerStoreVerb(newStoreDumpDBCmd)
	registerStoreVerb(newStoreLoadDBCmd)
}

func newStoreDumpDBCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "dump-db [PATH...]",
		Short: "Print the registration of valid paths, like nix-store --dump-db",
		Long: "Print, in Nix's registration format, each PATH's path, NAR hash (base16),\n" +
			"NAR size, deriver and references; without arguments, every valid path.",
		RunE: withLocalStore(func(cmd *cobra.Command, s *local.Store, args []string) error {
			if len(args) == 0 {
				return s.DumpDB(cmd.Context(), cmd.OutOrStdout(), nil)
			}
			ps, err := argStorePaths(s.StoreDir(), args)
			if err != nil {
				return err
			}
			return s.DumpDB(cmd.Context(), cmd.OutOrStdout(), ps)
		}),
	}
}

func newStoreLoadDBCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "load-db",
		Short: "Register paths from a dump-db stream on stdin, like nix-store --load-db",
		Long: "Read registrations (nix-store --dump-db or cairn store dump-db output) from\n" +
			"stdin and register them in one transaction; the files must be in place already.",
		Args: cobra.NoArgs,
		RunE: withLocalStore(func(cmd *cobra.Command, s *local.Store, args []string) error {
			_, err := s.LoadDB(cmd.Context(), cmd.InOrStdin())
			return err
		}),
	}
}
