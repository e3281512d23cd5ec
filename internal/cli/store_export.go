package cli

import (
	"bufio"
	"fmt"

	"github.com/spf13/cobra"

	"cairn/internal/store/local"
)

func init() {
	registerStoreVerb(newStoreExportCmd)
	registerStoreVerb(newStoreImportCmd)
}

func newStoreExportCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "export PATH...",
		Short: "Write paths in nix-store --export format to stdout",
		Long: "Write the NARs and metadata of the valid PATHs, dependencies first, in the\n" +
			"format nix-store --import reads. A path whose files no longer match its hash\n" +
			"is refused.",
		Args: cobra.MinimumNArgs(1),
		RunE: withLocalStore(func(cmd *cobra.Command, s *local.Store, args []string) error {
			paths, err := argStorePaths(s.StoreDir(), args)
			if err != nil {
				return err
			}
			return s.Export(cmd.Context(), cmd.OutOrStdout(), paths)
		}),
	}
}

func newStoreImportCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "import",
		Short: "Add the paths of a nix-store --export stream read from stdin",
		Long: "Read an export stream (nix-store --export or cairn store export) from stdin,\n" +
			"add its paths, and print each one as nix-store --import does.",
		Args: cobra.NoArgs,
		RunE: withLocalStore(func(cmd *cobra.Command, s *local.Store, args []string) error {
			paths, err := s.Import(cmd.Context(), bufio.NewReaderSize(cmd.InOrStdin(), 256<<10))
			if err != nil {
				return err
			}
			w := bufio.NewWriter(cmd.OutOrStdout())
			for _, p := range paths {
				fmt.Fprintln(w, p)
			}
			return w.Flush()
		}),
	}
}
