package cli

import (
	"bufio"

	"github.com/spf13/cobra"
)

func init() { registerStoreVerb(newStoreDumpCmd) }

func newStoreDumpCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "dump PATH",
		Short: "Write the NAR serialisation of a valid store path to stdout",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := openStore(cmd)
			if err != nil {
				return err
			}
			defer s.Close()
			p, err := argStorePath(s.StoreDir(), args[0])
			if err != nil {
				return err
			}
			w := bufio.NewWriterSize(cmd.OutOrStdout(), 256<<10)
			if err := s.NarFromPath(cmd.Context(), p, w); err != nil {
				return err
			}
			return w.Flush()
		},
	}
}
