// Package cli holds cairn's command line: one file per verb.
//
// Each verb file registers its command constructor in init, so verbs stay
// independent of one another and of this file.
package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

var verbs []func() *cobra.Command

// register adds a top-level verb. Called from init in each verb's file.
func register(newCmd func() *cobra.Command) { verbs = append(verbs, newCmd) }

// NewRoot builds the root command with every registered verb.
func NewRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "cairn",
		Short:         "A Nix-compatible build daemon and store",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().String("store", "", "the store URL (local, local?root=DIR, local?store=…&state=…&log=…); "+
		"default: local if /nix is writable, else a chroot store under $XDG_DATA_HOME/cairn")
	for _, newCmd := range verbs {
		root.AddCommand(newCmd())
	}
	return root
}

// Main runs cairn with args and returns the process exit status.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := NewRoot()
	root.SetArgs(args)
	stderr := stderrWriter()
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "error: %v\n", err)
		return exitStatus(err)
	}
	return 0
}

// exitError carries a specific exit status out of a verb.
type exitError struct {
	status int
	err    error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitStatus(err error) int {
	if e, ok := err.(*exitError); ok {
		return e.status
	}
	return 1
}
