package cli

import (
	"bufio"
	"fmt"
	"slices"

	"github.com/spf13/cobra"

	"cairn/internal/store"
	"cairn/internal/storepath"
)

func init() { registerStoreVerb(newStoreQueryCmd) }

// queryKinds are the query flags, in the order help lists them.
var queryKinds = []struct{ flag, short, help string }{
	{"references", "", "print the paths each PATH refers to"},
	{"referrers", "", "print the paths that refer to each PATH"},
	{"requisites", "R", "print the closure of the PATHs"},
	{"deriver", "d", "print the derivation each PATH was built from, or unknown-deriver"},
	{"hash", "", "print the NAR hash of each PATH"},
	{"size", "", "print the NAR size of each PATH"},
	{"valid-derivers", "", "print the valid derivations that have each PATH as an output"},
}

func newStoreQueryCmd() *cobra.Command {
	set := make([]bool, len(queryKinds))
	cmd := &cobra.Command{
		Use:   "query (--references|--referrers|--requisites|--deriver|--hash|--size|--valid-derivers) PATH...",
		Short: "Query store paths, printing what nix-store -q prints",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			defer collectLate()()
			kind := ""
			for i, on := range set {
				if on {
					if kind != "" {
						return fmt.Errorf("query type '--%s' conflicts with earlier flag", queryKinds[i].flag)
					}
					kind = queryKinds[i].flag
				}
			}
			if kind == "" {
				return fmt.Errorf("no query type given")
			}
			s, err := openStore(cmd)
			if err != nil {
				return err
			}
			defer s.Close()
			ctx := cmd.Context()
			paths, err := argStorePaths(s.StoreDir(), args)
			if err != nil {
				return err
			}
			w := bufio.NewWriter(cmd.OutOrStdout())
			switch kind {
			case "references", "referrers", "requisites":
				var result []storepath.StorePath
				var infos []*store.PathInfo
				if kind == "references" {
					if infos, err = s.QueryPathInfos(ctx, paths); err != nil {
						return err
					}
				}
				for i, p := range paths {
					var ps []storepath.StorePath
					switch kind {
					case "references":
						ps = infos[i].References
					case "referrers":
						if ps, err = s.QueryReferrers(ctx, p); err != nil {
							return err
						}
					case "requisites":
						if ps, err = s.QueryClosure(ctx, []storepath.StorePath{p}, false); err != nil {
							return err
						}
					}
					result = append(result, ps...)
				}
				refs, err := s.QueryReferencesOf(ctx, result)
				if err != nil {
					return err
				}
				sorted, err := store.TopoSort(result, func(p storepath.StorePath) []storepath.StorePath { return refs[p] })
				if err != nil {
					return err
				}
				slices.Reverse(sorted)
				for _, p := range sorted {
					fmt.Fprintln(w, p)
				}
			case "valid-derivers":
				for _, p := range paths {
					ds, err := s.QueryValidDerivers(ctx, p)
					if err != nil {
						return err
					}
					for _, d := range ds {
						fmt.Fprintln(w, d)
					}
				}
			default:
				infos, err := s.QueryPathInfos(ctx, paths)
				if err != nil {
					return err
				}
				for _, info := range infos {
					switch kind {
					case "deriver":
						if info.Deriver.IsZero() {
							fmt.Fprintln(w, "unknown-deriver")
						} else {
							fmt.Fprintln(w, info.Deriver)
						}
					case "hash":
						fmt.Fprintln(w, info.NarHash)
					case "size":
						fmt.Fprintln(w, info.NarSize)
					}
				}
			}
			return w.Flush()
		},
	}
	for i, k := range queryKinds {
		cmd.Flags().BoolVarP(&set[i], k.flag, k.short, false, k.help)
	}
	return cmd
}
