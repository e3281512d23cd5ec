package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"

	"cairn/internal/config"
	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/store/local"
)

// Every verb takes `--option NAME VALUE`, anywhere on its command line, as
// Nix's commands do. cobra's flags take one value, so Main takes the pairs
// off the command line before cobra parses it and hands them to the verbs in
// the context.

// optionsKey is the context key of the --option pairs Main took.
type optionsKey struct{}

// takeOptions removes every `--option NAME VALUE` before a `--` from args.
func takeOptions(args []string) (rest []string, options [][2]string, err error) {
	rest = make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "--":
			return append(rest, args[i:]...), options, nil
		case "--option":
			if i+2 >= len(args) {
				return nil, nil, errors.New("flag '--option' requires 2 argument(s)")
			}
			options = append(options, [2]string{args[i+1], args[i+2]})
			i += 2
		default:
			rest = append(rest, args[i])
		}
	}
	return rest, options, nil
}

// commandLineOptions returns the --option pairs Main took from the command line.
func commandLineOptions(ctx context.Context) [][2]string {
	o, _ := ctx.Value(optionsKey{}).([][2]string)
	return o
}

// loadSettings reads the settings as Nix does: the nix.conf files and
// NIX_CONFIG (whose unknown names are warnings), then the command
// line's --option pairs and the verb's own (extra), in order. An unknown
// name on the command line is an error; a value the setting cannot take is a
// warning, as in Nix, and the setting keeps its value.
func loadSettings(ctx context.Context, warn func(msg string), extra [][2]string) (*config.Settings, error) {
	settings, err := config.Load(os.Getenv, warn)
	if err != nil {
		return nil, err
	}
	for _, o := range append(commandLineOptions(ctx), extra...) {
		if err := settings.Set(o[0], o[1]); err != nil {
			switch {
			case errors.Is(err, config.ErrUnknown):
				return nil, fmt.Errorf("unknown setting '%s'", o[0])
			case errors.Is(err, config.ErrInvalid):
				// Nix 2.8 warns and keeps the value it had.
				warn("error: " + err.Error())
			default:
				return nil, err
			}
		}
	}
	return settings, nil
}

// warnTo returns a warn function for loadSettings that writes Nix's
// "warning: …" lines to w.
func warnTo(w io.Writer) func(string) {
	return func(msg string) { fmt.Fprintf(w, "warning: %s\n", msg) }
}

// localOptions are the local store's options the settings choose.
func localOptions(settings *config.Settings) local.Options {
	// build-users-group holds root's default (nixbld) unless set; set
	// empty, the store dir keeps its owner and mode, as in Nix.
	// gc-reserved-space = 0 keeps no db/reserved (Nix leaves an empty one).
	reserved := settings.Int("gc-reserved-space")
	if reserved == 0 {
		reserved = -1
	}
	return local.Options{
		NoFsync:         !settings.Bool("fsync-metadata"),
		AutoOptimise:    settings.Bool("auto-optimise-store"),
		BuildUsersGroup: settings.Get("build-users-group"),
		ReservedSize:    reserved,
		IgnoredACLs:     append([]string{}, strings.Fields(settings.Get("ignored-acls"))...), // empty: keep none
		NoWAL:           !settings.Bool("use-sqlite-wal"),
	}
}

// clientOptions are what a verb sends a daemon store in SetOptions, as
// nix-store 2.8 sends them: the fixed fields from the settings (verbosity
// info, build logs verbose), and as overrides the store settings that
// nix.conf, NIX_CONFIG or --option set.
func clientOptions(settings *config.Settings) *protocol.ClientOptions {
	count := func(name string) uint64 {
		if settings.Get(name) == "auto" {
			return uint64(runtime.NumCPU())
		}
		return uint64(max(settings.Int(name), 0))
	}
	return &protocol.ClientOptions{
		KeepFailed:     settings.Bool("keep-failed"),
		KeepGoing:      settings.Bool("keep-going"),
		TryFallback:    settings.Bool("fallback"),
		Verbosity:      protocol.LvlInfo,
		MaxBuildJobs:   count("max-jobs"),
		MaxSilentTime:  count("max-silent-time"),
		UseBuildHook:   true,
		BuildVerbosity: protocol.LvlError,
		BuildCores:     count("cores"),
		UseSubstitutes: settings.Bool("substitute"),
		Overrides:      settings.StoreOverrides(),
	}
}

// storeURL is the store a verb works on: the --store flag's, else the store
// setting's, else NIX_REMOTE's, else the default (store.DefaultURL; for a verb
// that needs a local store, store.DefaultLocalURL).
func storeURL(flag string, settings *config.Settings, localOnly bool) (string, error) {
	if flag != "" {
		return flag, nil
	}
	if u := settings.Get("store"); u != "" && u != "auto" {
		return u, nil
	}
	if localOnly {
		return store.DefaultLocalURL(nil)
	}
	return store.DefaultURL(nil)
}
