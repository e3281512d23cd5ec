package cli

import (
	"compress/bzip2"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"cairn/internal/storepath"
)

func init() { register(newLogCmd) }

func newLogCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "log PATH",
		Short: "Print the build log of a derivation or of the output of one",
		Long: `Print the build log of PATH, as nix log does: PATH is a .drv path or a path built
from one (its deriver's log is printed). Logs are read from LOGDIR/drvs/XX/REST, plain
or .bz2, or LOGDIR/drvs/BASENAME. Through a daemon (--store daemon or unix://…), the
deriver is asked of the daemon and the log read from the store's log dir, as Nix does.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, _, err := storeConfig(cmd)
			if err != nil {
				return err
			}
			st, err := openStore(cmd)
			if err != nil {
				return err
			}
			defer st.Close()
			p, err := argStorePath(st.StoreDir(), args[0])
			if err != nil {
				return err
			}
			drvs := []storepath.StorePath{p}
			if !p.IsDerivation() {
				drvs = nil
				if info, err := st.QueryPathInfo(cmd.Context(), p); err == nil && !info.Deriver.IsZero() {
					drvs = append(drvs, info.Deriver)
				}
				if ds, err := st.QueryValidDerivers(cmd.Context(), p); err == nil {
					drvs = append(drvs, ds...)
				}
			}
			for _, d := range drvs {
				ok, err := printBuildLog(cmd.OutOrStdout(), cfg.LogDir, d)
				if err != nil {
					return err
				}
				if ok {
					return nil
				}
			}
			return fmt.Errorf("build log of '%s' is not available", p)
		},
	}
}

// printBuildLog copies drv's log to w, reporting whether there was one.
func printBuildLog(w io.Writer, logDir string, drv storepath.StorePath) (bool, error) {
	base := drv.Base()
	for _, name := range []string{
		filepath.Join(logDir, "drvs", base[:2], base[2:]),
		filepath.Join(logDir, "drvs", base[:2], base[2:]) + ".bz2",
		filepath.Join(logDir, "drvs", base),
		filepath.Join(logDir, "drvs", base) + ".bz2",
	} {
		f, err := os.Open(name)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return false, err
		}
		defer f.Close()
		var r io.Reader = f
		if filepath.Ext(name) == ".bz2" {
			r = bzip2.NewReader(f)
		}
		if _, err := io.Copy(w, r); err != nil {
			return false, fmt.Errorf("read build log %s: %w", name, err)
		}
		return true, nil
	}
	return false, nil
}
