package cli

import (
	"github.com/spf13/cobra"

	"cairn/internal/sandbox"
)

func init() { register(newSandboxInitCmd) }

// newSandboxInitCmd is the hidden entry point sandbox.Start re-executes the
// cairn binary into: it sets up the build's sandbox and executes the builder,
// so it returns only when that failed (and has told the parent why).
func newSandboxInitCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "sandbox-init",
		Short:  "Set up a build sandbox and run the builder (internal: started by the daemon)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return sandbox.Init()
		},
	}
}
