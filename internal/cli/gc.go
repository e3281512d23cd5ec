package cli

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"cairn/internal/config"
	"cairn/internal/gc"
	"cairn/internal/gcroots"
	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/store/remote"
	"cairn/internal/storepath"
)

func init() {
	register(newGCCmd)
	registerStoreVerb(newGCCmd)
}

func newGCCmd() *cobra.Command {
	var (
		maxFreed                       string
		printRoots, printLive, printDd bool
		del, ignoreLiveness            bool
	)
	cmd := &cobra.Command{
		Use:   "gc [--max-freed N] [--print-roots|--print-live|--print-dead] [--delete [--ignore-liveness] PATH...]",
		Short: "Collect garbage, like nix-store --gc and nix-store --delete",
		Long: "Delete every store path no GC root keeps alive (or, with --max-freed, until more\n" +
			"than N bytes are freed; K, M, G and T suffixes work), list the roots, the live or\n" +
			"the dead paths, or delete just the given paths when nothing keeps them alive.\n" +
			"Works on a local store and through a daemon (--store daemon). keep-outputs and\n" +
			"keep-derivations are read from nix.conf and NIX_CONFIG.",
		RunE: func(cmd *cobra.Command, args []string) error {
			n := 0
			for _, b := range []bool{printRoots, printLive, printDd, del} {
				if b {
					n++
				}
			}
			if n > 1 {
				return errors.New("--print-roots, --print-live, --print-dead and --delete exclude each other")
			}
			if !del && len(args) > 0 {
				return errors.New("no arguments expected")
			}
			if ignoreLiveness && !del {
				return errors.New("--ignore-liveness goes with --delete")
			}
			req := &protocol.CollectGarbageRequest{Action: protocol.GCDeleteDead, MaxFreed: gc.NoLimit, IgnoreLiveness: ignoreLiveness}
			switch {
			case printLive:
				req.Action = protocol.GCReturnLive
			case printDd:
				req.Action = protocol.GCReturnDead
			case del:
				req.Action = protocol.GCDeleteSpecific
			}
			if maxFreed != "" {
				v, err := parseSize(maxFreed)
				if err != nil {
					return err
				}
				req.MaxFreed = v
			}
			return runGC(cmd, req, printRoots, args)
		},
	}
	f := cmd.Flags()
	f.StringVar(&maxFreed, "max-freed", "", "stop after freeing more than `N` bytes")
	f.BoolVar(&printRoots, "print-roots", false, "list the GC roots as 'link -> path'")
	f.BoolVar(&printLive, "print-live", false, "list the paths the collector would keep")
	f.BoolVar(&printDd, "print-dead", false, "list the paths the collector would delete")
	f.BoolVar(&del, "delete", false, "delete the given paths, if nothing keeps them alive")
	f.BoolVar(&ignoreLiveness, "ignore-liveness", false, "with --delete: disregard the roots (a local store only)")
	return cmd
}

// parseSize reads a byte count as nix-store's getIntArg does: an integer
// with an optional K, M, G or T suffix; negative means 0.
func parseSize(s string) (uint64, error) {
	s, mult := config.SizeSuffix(s)
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || (v != 0 && (v*mult)/mult != v) {
		return 0, fmt.Errorf("--max-freed requires an integer argument")
	}
	if v < 0 {
		return 0, nil
	}
	return uint64(v * mult), nil
}

func runGC(cmd *cobra.Command, req *protocol.CollectGarbageRequest, printRoots bool, args []string) error {
	ctx := cmd.Context()
	stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
	cfg, settings, err := storeConfig(cmd)
	if err != nil {
		return err
	}
	logf := func(s string) { fmt.Fprintln(stderr, s) }
	var (
		collect   func(*protocol.CollectGarbageRequest) (*protocol.GCReply, error)
		findRoots func() ([]gcroots.Root, error)
		dir       storepath.StoreDir
	)
	switch cfg.Scheme {
	case store.SchemeDaemon:
		opts := remote.Options{ClientOptions: clientOptions(settings), Log: func(m *protocol.Message) {
			if m.Code == protocol.StderrNext {
				fmt.Fprintln(stderr, strings.TrimSuffix(m.Text, "\n"))
			}
		}}
		rs, err := remote.Open(ctx, cfg, opts)
		if err != nil {
			return err
		}
		defer rs.Close()
		dir = rs.StoreDir()
		collect = func(q *protocol.CollectGarbageRequest) (*protocol.GCReply, error) {
			return rs.CollectGarbage(ctx, q)
		}
		findRoots = func() ([]gcroots.Root, error) {
			rep, err := rs.FindRoots(ctx)
			if err != nil {
				return nil, err
			}
			var out []gcroots.Root
			for i, l := range rep.Links {
				out = append(out, gcroots.Root{Link: l, Path: rep.Targets[i]})
			}
			return out, nil
		}
	case store.SchemeLocal:
		st, err := local.Open(ctx, cfg, localOptions(settings))
		if err != nil {
			return err
		}
		defer st.Close()
		dir = st.StoreDir()
		roots := gcroots.New(cfg.StateDir, cfg.StoreDir, cfg.RealStoreDir)
		collect = func(q *protocol.CollectGarbageRequest) (*protocol.GCReply, error) {
			res, err := gc.Collect(ctx, st, roots, gc.Options{
				Action: q.Action, Paths: q.Paths, IgnoreLiveness: q.IgnoreLiveness, MaxFreed: q.MaxFreed,
				KeepOutputs: settings.Bool("keep-outputs"), KeepDerivations: settings.Bool("keep-derivations"),
				Log: logf, RuntimeRoots: gc.RuntimeRootsFor(cfg, settings.Bool("use-roots-daemon")),
			})
			if res == nil {
				return nil, err
			}
			return &protocol.GCReply{Paths: res.Paths, BytesFreed: res.BytesFreed}, err
		}
		findRoots = func() ([]gcroots.Root, error) {
			valid := func(p storepath.StorePath) bool { ok, err := st.IsValidPath(ctx, p); return err == nil && ok }
			rs, err := roots.Find(ctx, gcroots.FindOptions{Valid: valid, Log: logf})
			if err != nil {
				return nil, err
			}
			rs = slices.DeleteFunc(rs, func(r gcroots.Root) bool { return local.IsTemporaries(r.Path) })
			names, err := gc.RuntimeRootsFor(cfg, settings.Bool("use-roots-daemon"))(ctx, dir)
			if err != nil {
				return nil, err
			}
			return append(rs, gc.RuntimeRootsOf(names, dir, valid)...), nil
		}
	default:
		return fmt.Errorf("%s: %w: garbage collection needs a local store or a daemon", cfg.URL, store.ErrUnsupported)
	}

	if printRoots {
		rs, err := findRoots()
		if err != nil {
			return err
		}
		gc.SortRoots(rs)
		for _, r := range rs {
			fmt.Fprintf(stdout, "%s -> %s\n", r.Link, r.Path)
		}
		return nil
	}
	if req.Action == protocol.GCDeleteSpecific {
		if req.Paths, err = argStorePaths(dir, args); err != nil {
			return err
		}
	}
	rep, err := collect(req)
	printFreed(stdout, req.Action, rep)
	if err != nil {
		return err
	}
	if req.Action == protocol.GCReturnLive || req.Action == protocol.GCReturnDead {
		for _, p := range rep.Paths {
			fmt.Fprintln(stdout, p)
		}
	}
	return nil
}

// printFreed prints Nix's summary after deleting (also after a failed
// --delete, as nix-store does).
func printFreed(w io.Writer, action protocol.GCAction, rep *protocol.GCReply) {
	if action != protocol.GCDeleteDead && action != protocol.GCDeleteSpecific {
		return
	}
	var n int
	var freed uint64
	if rep != nil {
		n, freed = len(rep.Paths), rep.BytesFreed
	}
	fmt.Fprintf(w, "%d store paths deleted, %.2f MiB freed\n", n, float64(freed)/(1024*1024))
}
