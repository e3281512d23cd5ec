package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"cairn/internal/build"
	"cairn/internal/config"
	"cairn/internal/daemon"
	"cairn/internal/gc"
	"cairn/internal/gcroots"
	"cairn/internal/protocol"
	"cairn/internal/remotebuild"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/store/remote"
	"cairn/internal/storepath"
	"cairn/internal/substitute"
)

func init() { register(newBuildCmd) }

const buildUsage = `Usage: cairn build [--store URL] [--option NAME VALUE]... [-K|--keep-failed] [-k|--keep-going]
       [-j|--max-jobs N] [--cores N] [--max-silent-time SECS] [--timeout SECS] [--check|--repair] TARGET...

Build the outputs of derivations into the store and print their paths, one a line.
A TARGET is a .drv store path (optionally with !out,dev), a plain store path (substituted
from the binary caches, with its closure, when missing), a .drv file anywhere (added to
the store first, its input derivations beside it), or derivations in nix show-derivation
JSON form (all added; those no other one depends on are built).

--check builds valid outputs again and fails (status 104) when one differs; with
--keep-failed the new output is left at OUT.check. --repair rebuilds outputs that are
missing or corrupt (and those of their input derivations) and swaps them into place.

Settings come from $NIX_CONF_DIR/nix.conf, $NIX_CONFIG and --option, as for the daemon:
e.g. --option sandbox-paths /bin/sh=/bin/busybox makes busybox the builders' /bin/sh.
`

// buildArgs are the parsed arguments of `cairn build`.
type buildArgs struct {
	store   string
	options [][2]string
	targets []string
	mode    build.Mode
	help    bool
}

// parseBuildArgs parses the command line by hand: cobra cannot take the
// two-valued --option.
func parseBuildArgs(args []string) (*buildArgs, error) {
	a := &buildArgs{}
	set := func(name, value string) { a.options = append(a.options, [2]string{name, value}) }
	for i := 0; i < len(args); i++ {
		arg := args[i]
		need := func(n int) ([]string, error) {
			if i+n >= len(args) {
				return nil, fmt.Errorf("flag '%s' requires %d argument(s)", arg, n)
			}
			v := args[i+1 : i+1+n]
			i += n
			return v, nil
		}
		one := func(name string) error {
			v, err := need(1)
			if err != nil {
				return err
			}
			set(name, v[0])
			return nil
		}
		var err error
		switch arg {
		case "--store":
			var v []string
			if v, err = need(1); err == nil {
				a.store = v[0]
			}
		case "--option":
			var v []string
			if v, err = need(2); err == nil {
				set(v[0], v[1])
			}
		case "-K", "--keep-failed":
			set("keep-failed", "true")
		case "-k", "--keep-going":
			set("keep-going", "true")
		case "-j", "--max-jobs":
			err = one("max-jobs")
		case "--cores":
			err = one("cores")
		case "--max-silent-time":
			err = one("max-silent-time")
		case "--timeout":
			err = one("timeout")
		case "--no-sandbox":
			set("sandbox", "false")
		case "--check":
			a.mode = build.Check
		case "--repair":
			a.mode = build.Repair
		case "-h", "--help":
			a.help = true
		default:
			if strings.HasPrefix(arg, "--store=") {
				a.store = strings.TrimPrefix(arg, "--store=")
			} else if strings.HasPrefix(arg, "-") && arg != "-" {
				err = fmt.Errorf("unrecognised flag '%s'", arg)
			} else {
				a.targets = append(a.targets, arg)
			}
		}
		if err != nil {
			return nil, err
		}
	}
	return a, nil
}

func newBuildCmd() *cobra.Command {
	return &cobra.Command{
		Use:                "build [flags] TARGET...",
		Short:              "Build derivations and print their output paths",
		Long:               buildUsage,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := parseBuildArgs(args)
			if err != nil {
				return err
			}
			if a.help {
				fmt.Fprint(cmd.OutOrStdout(), buildUsage)
				return nil
			}
			if len(a.targets) == 0 {
				return errors.New("nothing to build: give a .drv path, a .drv file or a JSON file")
			}
			return runBuild(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), a)
		},
	}
}

func runBuild(ctx context.Context, stdout, stderr io.Writer, a *buildArgs) error {
	warn := warnTo(stderr)
	settings, err := loadSettings(ctx, warn, a.options)
	if err != nil {
		return err
	}
	url, err := storeURL(a.store, settings, true)
	if err != nil {
		return err
	}
	cfg, err := parseStoreURL(url, warn)
	if err != nil {
		return err
	}
	if cfg.Scheme == store.SchemeDaemon || cfg.Scheme == store.SchemeSSHNG {
		return runBuildRemote(ctx, stdout, stderr, a, cfg, settings)
	}
	if cfg.Scheme != store.SchemeLocal {
		return fmt.Errorf("%s: %w: cairn build needs a local store", cfg.URL, store.ErrUnsupported)
	}
	st, err := local.Open(ctx, cfg, commandOptions(ctx, settings))
	if err != nil {
		return err
	}
	defer st.Close()
	// With min-free set, collect first if space is short, as Nix's local
	// builds do before they add anything.
	roots := gcroots.New(cfg.StateDir, cfg.StoreDir, cfg.RealStoreDir)
	gc.NewAuto(st, roots, settings, func(s string) { fmt.Fprintln(stderr, s) }).Check(ctx, true, nil)

	var targets []build.Target
	for _, arg := range a.targets {
		ts, err := resolveBuildTarget(ctx, st, arg)
		if err != nil {
			return err
		}
		targets = append(targets, ts...)
	}
	bcfg := build.ConfigFrom(settings)
	// Recursive Nix: a recursive-nix build's own daemon, on this store.
	rsrv := &daemon.Server{Store: st, Settings: settings}
	defer rsrv.Close()
	bcfg.ServeRecursive = rsrv.ServeRecursive
	b, err := build.NewWithConfig(st, bcfg)
	if err != nil {
		return err
	}
	defer b.Close()
	log := &cliBuildLog{w: stderr}
	opts := build.OptionsFrom(settings)
	opts.Subst = substitute.ConfigFrom(settings, warn)
	opts.Mode = a.mode
	// The builders' output is printed as it comes, so a failure quotes
	// none of it, as nix-build's does.
	opts.LogShown = true
	// Plain store paths are substituted (with their closures) when missing,
	// derivations built; plain paths print first, as they are realised first.
	var drvs []build.Target
	var plain []storepath.StorePath
	for _, t := range targets {
		if t.Drv.IsDerivation() {
			drvs = append(drvs, t)
		} else {
			plain = append(plain, t.Drv)
		}
	}
	if mi, err := b.Missing(ctx, targets, opts); err == nil {
		printMissing(ctx, st, mi, log)
	}
	if len(plain) > 0 {
		if err := b.EnsurePaths(ctx, plain, opts, log); err != nil {
			var ne *substitute.NotFoundError
			if errors.As(err, &ne) {
				return fmt.Errorf("path '%s' is required, but there is no substituter that can build it", ne.Path)
			}
			return err
		}
		for _, p := range plain {
			fmt.Fprintln(stdout, p)
		}
	}
	results, err := b.Build(ctx, drvs, opts, log)
	if err != nil {
		return err
	}
	for _, r := range results {
		if r.Status.Success() {
			for _, name := range sortedOutputNames(r.Outputs) {
				fmt.Fprintln(stdout, r.Outputs[name])
			}
		}
	}
	failed, status, err := build.Failure(results)
	if err == nil {
		return nil
	}
	if len(failed) > 1 {
		for _, r := range failed {
			log.Error(r.Err.Error())
		}
	}
	return &exitError{status: status, err: err}
}

// printMissing says what will be built and fetched, as nix-build and
// nix-store -r do before they start (Nix's printMissing).
func printMissing(ctx context.Context, st *local.Store, mi *protocol.MissingInfo, log *cliBuildLog) {
	if n := len(mi.WillBuild); n > 0 {
		if n == 1 {
			log.printf("this derivation will be built:\n")
		} else {
			log.printf("these %d derivations will be built:\n", n)
		}
		// Dependencies first, as Nix lists them.
		infos, _ := st.QueryPathInfos(ctx, mi.WillBuild)
		refs := map[storepath.StorePath][]storepath.StorePath{}
		for _, info := range infos {
			refs[info.Path] = info.References
		}
		sorted, err := store.TopoSort(mi.WillBuild, func(p storepath.StorePath) []storepath.StorePath { return refs[p] })
		if err != nil {
			sorted = mi.WillBuild
		}
		for i := len(sorted) - 1; i >= 0; i-- {
			log.printf("  %s\n", sorted[i])
		}
	}
	if n := len(mi.WillSubstitute); n > 0 {
		dl, nar := float32(mi.DownloadSize)/(1024*1024), float32(mi.NarSize)/(1024*1024)
		if n == 1 {
			log.printf("this path will be fetched (%.2f MiB download, %.2f MiB unpacked):\n", dl, nar)
		} else {
			log.printf("these %d paths will be fetched (%.2f MiB download, %.2f MiB unpacked):\n", n, dl, nar)
		}
		for _, p := range mi.WillSubstitute {
			log.printf("  %s\n", p)
		}
	}
	if len(mi.Unknown) > 0 {
		log.printf("don't know how to build these paths:\n")
		for _, p := range mi.Unknown {
			log.printf("  %s\n", p)
		}
	}
}

func sortedOutputNames(m map[string]storepath.StorePath) []string {
	var names []string
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// resolveBuildTarget turns an argument into targets: a .drv store path
// (with !outputs), or a file to add first.
func resolveBuildTarget(ctx context.Context, st *local.Store, arg string) ([]build.Target, error) {
	path, outs, _ := strings.Cut(arg, "!")
	var outputs []string
	if outs != "" && outs != "*" {
		outputs = strings.Split(outs, ",")
	}
	if strings.HasPrefix(path, string(st.StoreDir())+"/") {
		p, err := argStorePath(st.StoreDir(), path)
		if err != nil {
			return nil, err
		}
		if !p.IsDerivation() {
			// A plain path: substituted when missing (Drv holds it).
			return []build.Target{{Drv: p, Outputs: nil}}, nil
		}
		return []build.Target{{Drv: p, Outputs: outputs}}, nil
	}
	paths, err := addDerivationFile(ctx, st, path)
	if err != nil {
		return nil, err
	}
	var ts []build.Target
	for _, p := range paths {
		ts = append(ts, build.Target{Drv: p, Outputs: outputs})
	}
	return ts, nil
}

// cliBuildLog prints builders' output on stderr as nix-build does.
type cliBuildLog struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *cliBuildLog) BuildStarted(drv storepath.StorePath) build.BuildLog {
	return l.BuildStartedMode(drv, build.Normal, 1, 1)
}
func (l *cliBuildLog) BuildStartedMode(drv storepath.StorePath, m build.Mode, round, rounds int) build.BuildLog {
	switch {
	case m == build.Check:
		l.printf("checking outputs of '%s'...\n", drv)
	case m == build.Repair:
		l.printf("repairing outputs of '%s'...\n", drv)
	case rounds > 1:
		l.printf("building '%s' (round %d/%d)...\n", drv, round, rounds)
	default:
		l.printf("building '%s'...\n", drv)
	}
	return l
}
func (l *cliBuildLog) BuildStartedOn(drv storepath.StorePath, machine string) build.BuildLog {
	l.printf("building '%s' on '%s'...\n", drv, machine)
	return l
}
func (l *cliBuildLog) Print(msg string, info bool) { l.printf("%s\n", msg) }

// Substituting prints what nix-build prints as a path is substituted.
func (l *cliBuildLog) Substituting(p storepath.StorePath, cacheURL string, narSize uint64) substitute.Activity {
	l.printf("copying path '%s' from '%s'...\n", p, cacheURL)
	return noActivity{}
}

func (l *cliBuildLog) Warn(msg string) { l.printf("warning: %s\n", msg) }

type noActivity struct{}

func (noActivity) Progress(done, expected uint64)                   {}
func (noActivity) Done()                                            {}
func (l *cliBuildLog) Progress(done, expected, running, failed int) {}
func (l *cliBuildLog) Error(msg string) {
	if strings.HasPrefix(msg, "note: ") {
		l.printf("%s\n", msg)
		return
	}
	l.printf("%s\n", errorText(msg))
}
func (l *cliBuildLog) Line(text string) { l.printf("%s\n", text) }
func (l *cliBuildLog) Done()            {}

// Message prints what a builder logs at the warning level or above (a
// builtin's warnings), as nix-build shows them.
func (l *cliBuildLog) Message(text string) {
	var m struct {
		Action string `json:"action"`
		Level  int    `json:"level"`
		Msg    string `json:"msg"`
	}
	if json.Unmarshal([]byte(text), &m) == nil && m.Action == "msg" && m.Level <= 1 {
		l.printf("%s\n", m.Msg)
	}
}

func (l *cliBuildLog) printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, format, args...)
}

// runBuildRemote builds through a daemon (BuildPaths), as nix-store -r does
// with NIX_REMOTE: the targets are store paths in the daemon's store (.drv
// paths, with !outputs, or plain paths to substitute) or derivation files,
// added through the daemon first. The daemon's log reaches stderr; the
// outputs are printed as for a local build.
func runBuildRemote(ctx context.Context, stdout, stderr io.Writer, a *buildArgs, cfg *store.Config, settings *config.Settings) error {
	log := &remoteBuildLog{w: stderr}
	var rs *remote.Store
	var err error
	if cfg.Scheme == store.SchemeSSHNG {
		c, err := remotebuild.DialDaemonWith(ctx, &remotebuild.Machine{StoreURI: cfg.URL}, cfg.StoreDir, stderr, remote.Options{Log: log.message})
		if err != nil {
			return fmt.Errorf("open store %s: %w", cfg.URL, err)
		}
		defer c.Close()
		rs = c.Store()
	} else {
		if rs, err = remote.Open(ctx, cfg, remote.Options{ClientOptions: clientOptions(settings), Log: log.message}); err != nil {
			return err
		}
		defer rs.Close()
	}
	var paths []protocol.DerivedPath
	for _, arg := range a.targets {
		path, outs, _ := strings.Cut(arg, "!")
		var ps []storepath.StorePath
		if strings.HasPrefix(path, string(rs.StoreDir())+"/") {
			p, err := argStorePath(rs.StoreDir(), path)
			if err != nil {
				return err
			}
			ps = append(ps, p)
		} else if ps, err = addDerivationFile(ctx, rs, path); err != nil {
			return err
		}
		for _, p := range ps {
			dp := protocol.DerivedPath{Path: p}
			if p.IsDerivation() {
				dp.Built, dp.All = true, outs == "" || outs == "*"
				if !dp.All {
					dp.Outputs = slices.Sorted(slices.Values(strings.Split(outs, ",")))
				}
			}
			paths = append(paths, dp)
		}
	}
	if err := rs.BuildPaths(ctx, paths, protocol.BuildMode(a.mode)); err != nil {
		var re *remote.Error
		if errors.As(err, &re) {
			return &exitError{status: max(int(re.Status), 1), err: errors.New(re.Message)}
		}
		return err
	}
	for _, dp := range paths {
		if !dp.Built {
			fmt.Fprintln(stdout, dp.Path)
			continue
		}
		outs, err := rs.QueryDerivationOutputs(ctx, dp.Path)
		if err != nil {
			return err
		}
		for _, name := range sortedOutputNames(outs) {
			if dp.All || slices.Contains(dp.Outputs, name) {
				fmt.Fprintln(stdout, outs[name])
			}
		}
	}
	return nil
}

// remoteBuildLog prints what a daemon says during a build as nix-store
// does on a terminal-less stderr: messages, the text of activities at the
// info level or below, and builders' log lines.
type remoteBuildLog struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *remoteBuildLog) message(m *protocol.Message) {
	var text string
	switch m.Code {
	case protocol.StderrNext:
		text = strings.TrimSuffix(m.Text, "\n")
	case protocol.StderrStartActivity:
		if m.Activity.Text == "" || m.Activity.Level > protocol.LvlInfo {
			return
		}
		text = m.Activity.Text + "..."
	case protocol.StderrResult:
		if m.Result != protocol.ResBuildLogLine || len(m.Fields) == 0 || !m.Fields[0].IsString {
			return
		}
		text = m.Fields[0].String
	default:
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintln(l.w, text)
}
