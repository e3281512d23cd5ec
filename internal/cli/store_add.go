package cli

import (
	"bufio"
	"fmt"

	"github.com/spf13/cobra"

	"cairn/internal/nixhash"
)

func init() { registerStoreVerb(newStoreAddCmd) }

func newStoreAddCmd() *cobra.Command {
	var fixed string
	var recursive bool
	cmd := &cobra.Command{
		Use:   "add [--fixed ALGO [--recursive]] PATH...",
		Short: "Add files or trees to the store, like nix-store --add and --add-fixed",
		Long: "Add each PATH to the store under its base name and print the store paths.\n" +
			"Without --fixed the NAR serialisation is hashed with sha256 (nix-store --add);\n" +
			"with --fixed ALGO the file's bytes are hashed with ALGO, or its NAR with --recursive\n" +
			"(nix-store --add-fixed [--recursive] ALGO). All paths are registered together.",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			method, algo := nixhash.Recursive, nixhash.SHA256
			if fixed != "" {
				a, err := nixhash.ParseAlgorithm(fixed)
				if err != nil {
					return err
				}
				algo = a
				if !recursive {
					method = nixhash.Flat
				}
			} else if recursive {
				return fmt.Errorf("--recursive needs --fixed")
			}
			s, err := openStore(cmd)
			if err != nil {
				return err
			}
			defer s.Close()
			// Like nix-store --add, the paths added before a failing
			// source are printed before its error.
			infos, err := s.AddPaths(cmd.Context(), args, method, algo)
			w := bufio.NewWriter(cmd.OutOrStdout())
			for _, info := range infos {
				fmt.Fprintln(w, info.Path)
			}
			if ferr := w.Flush(); err == nil {
				err = ferr
			}
			return err
		},
	}
	cmd.Flags().StringVar(&fixed, "fixed", "", "hash with `ALGO` (md5, sha1, sha256, sha512) as a fixed-output path")
	cmd.Flags().BoolVar(&recursive, "recursive", false, "with --fixed, hash the NAR serialisation instead of the file's bytes")
	return cmd
}
