package cli

import (
	"context"
	"os"
	"os/exec"
	"syscall"

	"github.com/spf13/cobra"

	"cairn/internal/config"
	"cairn/internal/store/local"
)

func init() { register(newSyncBehindCmd) }

// newSyncBehindCmd is the hidden entry point a command that added to a local
// store starts as it exits (local.Options.SyncBehind): it makes those adds
// durable after the command has returned.
func newSyncBehindCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "sync-behind STATE-DIR REAL-STORE-DIR ROW-ID",
		Short:  "Make a store's adds durable (internal: started by a command as it exits)",
		Hidden: true,
		Args:   cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := local.ParseSyncRound(args)
			if err != nil {
				return err
			}
			return r.Run(cmd.Context())
		},
	}
}

// syncBehindKey marks the context of a command run by Main, in the cairn
// binary, which may start itself again to sync behind (not so in tests that
// run commands in their own process).
type syncBehindKey struct{}

// commandOptions are localOptions for a command that exits when done: its
// last sync runs behind it.
func commandOptions(ctx context.Context, settings *config.Settings) local.Options {
	o := localOptions(settings)
	if on, _ := ctx.Value(syncBehindKey{}).(bool); on {
		o.SyncBehind = startSyncBehind
	}
	return o
}

// startSyncBehind starts `cairn sync-behind` on r, in a session of its own
// (a terminal's ^C after the command has returned does not reach it), with
// nothing for standard input and output: a caller waiting for the command's
// output must not wait for it. A failed round says so in the marker, which
// the next open reads.
func startSyncBehind(r local.SyncRound) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	c := exec.Command(self, append([]string{"sync-behind"}, r.Args()...)...)
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := c.Start(); err != nil {
		return err
	}
	return c.Process.Release()
}
