// Package cli holds cairn's command line: one file per verb.
//
// Each verb file registers its command constructor in init, so verbs stay
// independent of one another and of this file.
package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
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
	root.Long = "Every verb also takes --option NAME VALUE (any number, anywhere before --), which sets\n" +
		"a nix.conf setting after $NIX_CONF_DIR/nix.conf, the user's nix.conf files and $NIX_CONFIG."
	for _, newCmd := range verbs {
		root.AddCommand(newCmd())
	}
	return root
}

// Main runs cairn with args and returns the process exit status.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx = context.WithValue(ctx, syncBehindKey{}, true)
	return execute(ctx, args, os.Stdout, stderrWriter())
}

// execute runs the command line args and returns its exit status; errors
// go to stderr as Nix prints them.
func execute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	args, options, err := takeOptions(args)
	if err != nil {
		fmt.Fprintln(stderr, errorText(err.Error()))
		return 1
	}
	ctx = context.WithValue(ctx, optionsKey{}, options)
	root := NewRoot()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(stderr, errorText(err.Error()))
		return exitStatus(err)
	}
	return 0
}

// errorText is msg as Nix prints an error: after "error: ", and every
// further line indented to match.
func errorText(msg string) string {
	return "error: " + strings.ReplaceAll(strings.TrimRight(msg, "\n"), "\n", "\n       ")
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
