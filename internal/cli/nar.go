package cli

import (
	"bufio"
	"errors"
	"io"
	"os"

	"github.com/spf13/cobra"

	"cairn/internal/nar"
)

func init() { register(newNarCmd) }

func newNarCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "nar",
		Short: "Create, unpack and inspect Nix archives (NARs)",
	}
	cmd.AddCommand(newNarDumpCmd(), newNarRestoreCmd(), newNarLsCmd())
	return cmd
}

func newNarDumpCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "dump PATH",
		Short: "Write the NAR serialisation of PATH to stdout, as nix-store --dump does",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return nar.Dump(cmd.OutOrStdout(), args[0], nar.DumpOptions{})
		},
	}
}

func newNarRestoreCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "restore DIR",
		Short: "Unpack the NAR on stdin into the new path DIR, as nix-store --restore does",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return nar.Restore(bufio.NewReaderSize(cmd.InOrStdin(), 1<<20), args[0], nar.RestoreOptions{})
		},
	}
}

func newNarLsCmd() *cobra.Command {
	var opts nar.ListOptions
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls [flags] NAR [PATH]",
		Short: "Show a path inside a NAR file (the root by default), as nix nar ls does",
		Long: "Show a path inside a NAR file, as nix nar ls does. NAR \"-\" reads standard input;\n" +
			"PATH is \"/\" for the root or an absolute path such as /bin/hello.",
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := "/"
			if len(args) == 2 {
				path = args[1]
			}
			if asJSON && opts.Directory {
				return errors.New("'--directory' is useless with '--json'")
			}
			var in io.Reader = cmd.InOrStdin()
			if args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return err
				}
				defer f.Close()
				in = f
			}
			in = bufio.NewReaderSize(in, 1<<20)
			if asJSON {
				return nar.ListJSON(cmd.OutOrStdout(), in, path, opts.Recursive)
			}
			return nar.ListText(cmd.OutOrStdout(), in, path, opts)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "produce output in JSON format")
	cmd.Flags().BoolVarP(&opts.Recursive, "recursive", "R", false, "list subdirectories recursively")
	cmd.Flags().BoolVarP(&opts.Long, "long", "l", false, "show detailed file information")
	cmd.Flags().BoolVarP(&opts.Directory, "directory", "d", false, "show directories rather than their contents")
	return cmd
}
