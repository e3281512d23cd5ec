package cli

import (
	"bufio"
	"errors"
	"io"
	"slices"
	"strconv"

	"github.com/spf13/cobra"

	"cairn/internal/store"
	"cairn/internal/storepath"
)

func init() { registerStoreVerb(newStorePathInfoCmd) }

func newStorePathInfoCmd() *cobra.Command {
	var asJSON, recursive bool
	cmd := &cobra.Command{
		Use:   "path-info [--json] [-r] PATH...",
		Short: "Show the metadata of store paths, like nix path-info",
		Long: "Print each PATH (with -r, its closure); with --json print exactly what\n" +
			"`nix path-info --json` of Nix 2.8 prints.",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			defer collectLate()()
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
			if recursive {
				if paths, err = s.QueryClosure(ctx, paths, false); err != nil {
					return err
				}
			}
			w := bufio.NewWriter(cmd.OutOrStdout())
			if !asJSON {
				// Nix prints the paths referenced first (a reversed
				// topological sort): only the references are needed.
				refs, err := s.QueryReferencesOf(ctx, paths)
				if err != nil {
					return err
				}
				for _, p := range paths {
					if _, valid := refs[p]; !valid {
						return store.NotValid(p)
					}
				}
				sorted, err := store.TopoSort(paths, func(p storepath.StorePath) []storepath.StorePath { return refs[p] })
				if err != nil {
					return err
				}
				slices.Reverse(sorted)
				for _, p := range sorted {
					w.WriteString(p.String())
					w.WriteByte('\n')
				}
				return w.Flush()
			}
			// Nix prints a set: sorted, without duplicates.
			sorted := slices.Clone(paths)
			storepath.SortPaths(sorted)
			sorted = slices.Compact(sorted)
			// All in one query; if some path is invalid, one query each.
			infos, err := s.QueryPathInfos(ctx, sorted)
			if err != nil {
				if !errors.Is(err, store.ErrNotFound) {
					return err
				}
				infos = make([]*store.PathInfo, len(sorted))
				for i, p := range sorted {
					info, err := s.QueryPathInfo(ctx, p)
					if err != nil && !errors.Is(err, store.ErrNotFound) {
						return err
					}
					infos[i] = info
				}
			}
			writePathInfoJSON(w, sorted, infos)
			return w.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON, as nix path-info --json")
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "apply to the closure of the paths")
	return cmd
}

// writePathInfoJSON prints infos as Nix 2.8's pathInfoToJSON with impure info
// and SRI hashes; a nil info prints as {"path":…,"valid":false}. Like Nix, no
// newline follows.
func writePathInfoJSON(w io.Writer, paths []storepath.StorePath, infos []*store.PathInfo) {
	// Room for a path's line without references or signatures, so that the
	// buffer grows by whole multiples rather than line by line.
	b := make([]byte, 0, 1+300*len(infos))
	b = append(b, '[')
	for i, info := range infos {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"path":`...)
		b = appendJSONString(b, paths[i].String())
		if info == nil {
			b = append(b, `,"valid":false}`...)
			continue
		}
		b = append(b, `,"narHash":`...)
		b = appendJSONString(b, info.NarHash.SRI())
		b = append(b, `,"narSize":`...)
		b = strconv.AppendUint(b, info.NarSize, 10)
		b = append(b, `,"references":[`...)
		for j, r := range info.References {
			if j > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, r.String())
		}
		b = append(b, ']')
		if !info.CA.IsZero() {
			b = append(b, `,"ca":`...)
			b = appendJSONString(b, info.CA.String())
		}
		if !info.Deriver.IsZero() {
			b = append(b, `,"deriver":`...)
			b = appendJSONString(b, info.Deriver.String())
		}
		if !info.RegistrationTime.IsZero() && info.RegistrationTime.Unix() != 0 {
			b = append(b, `,"registrationTime":`...)
			b = strconv.AppendInt(b, info.RegistrationTime.Unix(), 10)
		}
		if info.Ultimate {
			b = append(b, `,"ultimate":true`...)
		}
		if len(info.Signatures) > 0 {
			b = append(b, `,"signatures":[`...)
			for j, sig := range info.Signatures {
				if j > 0 {
					b = append(b, ',')
				}
				b = appendJSONString(b, sig)
			}
			b = append(b, ']')
		}
		b = append(b, '}')
	}
	b = append(b, ']')
	w.Write(b)
}

// appendJSONString quotes s as Nix's toJSON does: only '"', '\\' and control
// characters are escaped; other bytes go through as they are.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	// Paths, hashes and content addresses need no escaping: copy them whole.
	plain := true
	for i := 0; i < len(s) && plain; i++ {
		plain = s[i] >= 0x20 && s[i] != '"' && s[i] != '\\'
	}
	if plain {
		b = append(b, s...)
		return append(b, '"')
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c == '\n':
			b = append(b, '\\', 'n')
		case c == '\r':
			b = append(b, '\\', 'r')
		case c == '\t':
			b = append(b, '\\', 't')
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}
