package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"cairn/internal/daemon"
	"cairn/internal/gc"
	"cairn/internal/gcroots"
	"cairn/internal/metrics"
	"cairn/internal/store/local"
)

func init() { register(newDaemonCmd) }

const daemonUsage = `Usage: cairn daemon [--store URL] [--option NAME VALUE]... [--stdio] [--force-trusted | --force-untrusted]

Serve a store over the Nix worker protocol, as nix-daemon does (everything but building).

  --store URL             the store to serve (default: the store setting, $NIX_REMOTE, else local)
  --option NAME VALUE     set a nix.conf setting (after $NIX_CONF_DIR/nix.conf and $NIX_CONFIG)
  --stdio                 serve one connection on stdin/stdout; with a daemon store (daemon,
                          unix://PATH), relay it to that daemon's socket instead
  --force-trusted         trust every client
  --force-untrusted       trust no client (--stdio trusts its client by default)
  --spin-wait DURATION    after a reply, poll the socket this long for the client's next operation
                          while the daemon is otherwise idle (default 50µs; 0: sleep at once)
  --metrics-listen ADDR   serve Prometheus metrics at http://ADDR/metrics (connections, operations
                          by name, result and duration, builds by result, what collections
                          deleted, min-free's included); port 0 picks one, and the address is logged
  --version               print the version (as nix-daemon's: field 3 is the Nix release reproduced)

The socket is $NIX_DAEMON_SOCKET_PATH, else $NIX_STATE_DIR/daemon-socket/socket, or the one systemd
passes (LISTEN_FDS=1, LISTEN_PID).
`

// daemonArgs are the parsed arguments of `cairn daemon`.
type daemonArgs struct {
	store          string
	metricsListen  string
	options        [][2]string
	stdio          bool
	forceTrusted   bool
	forceUntrusted bool
	version        bool
	help           bool
	spinWait       time.Duration
}

// parseDaemonArgs parses nix-daemon's command line (cobra cannot take the
// two-valued --option).
func parseDaemonArgs(args []string) (*daemonArgs, error) {
	a := &daemonArgs{spinWait: daemon.DefaultSpinWait}
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
		switch {
		case arg == "--store":
			v, err := need(1)
			if err != nil {
				return nil, err
			}
			a.store = v[0]
		case strings.HasPrefix(arg, "--store="):
			a.store = strings.TrimPrefix(arg, "--store=")
		case arg == "--option":
			v, err := need(2)
			if err != nil {
				return nil, err
			}
			a.options = append(a.options, [2]string{v[0], v[1]})
		case arg == "--stdio":
			a.stdio = true
		case arg == "--spin-wait":
			v, err := need(1)
			if err != nil {
				return nil, err
			}
			d, err := time.ParseDuration(v[0])
			if err != nil || d < 0 {
				return nil, fmt.Errorf("--spin-wait: invalid duration '%s'", v[0])
			}
			a.spinWait = d
		case arg == "--metrics-listen":
			v, err := need(1)
			if err != nil {
				return nil, err
			}
			a.metricsListen = v[0]
		case arg == "--daemon": // ignored, as by nix-daemon
		case arg == "--force-trusted":
			a.forceTrusted = true
		case arg == "--force-untrusted":
			a.forceUntrusted = true
		case arg == "--default-trust":
			a.forceTrusted, a.forceUntrusted = false, false
		case arg == "--version":
			a.version = true
		case arg == "--help" || arg == "-h":
			a.help = true
		default:
			return nil, fmt.Errorf("unrecognised flag '%s'", arg)
		}
	}
	if a.forceTrusted && a.forceUntrusted {
		return nil, errors.New("--force-trusted and --force-untrusted are mutually exclusive")
	}
	return a, nil
}

// VersionText is what `cairn daemon --version` prints: nix-daemon's form, whose
// third field scripts parse, then Cairn's own version.
func daemonVersionText() string {
	return fmt.Sprintf("nix-daemon (Nix) %s (Cairn %s)\n", daemon.NixVersion, daemon.CairnVersion)
}

func newDaemonCmd() *cobra.Command {
	return &cobra.Command{
		Use:                "daemon [--store URL] [--option NAME VALUE]... [--stdio] [--force-trusted | --force-untrusted]",
		Short:              "Serve a store over the Nix daemon protocol (a drop-in nix-daemon, without building)",
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := parseDaemonArgs(args)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if a.help {
				fmt.Fprint(out, daemonUsage)
				return nil
			}
			if a.version {
				fmt.Fprint(out, daemonVersionText())
				return nil
			}
			return runDaemon(cmd.Context(), a, cmd.InOrStdin(), out, cmd.ErrOrStderr())
		},
	}
}

func runDaemon(ctx context.Context, a *daemonArgs, stdin io.Reader, stdout, stderr io.Writer) error {
	var mu sync.Mutex
	logf := func(s string) {
		mu.Lock()
		fmt.Fprintln(stderr, s)
		mu.Unlock()
	}
	warn := func(msg string) { logf("warning: " + msg) }
	settings, err := loadSettings(ctx, warn, a.options)
	if err != nil {
		return err
	}
	url := a.store
	if url == "" {
		url = settings.Get("store")
	}
	if url == "" {
		url = os.Getenv("NIX_REMOTE")
	}
	if sock, ok := daemonSocket(url); ok {
		if !a.stdio {
			return fmt.Errorf("cannot serve the daemon store '%s': give a local store with --store", url)
		}
		if a.forceUntrusted {
			return errors.New("--force-untrusted with a daemon store is not supported yet")
		}
		return daemon.Splice(ctx, sock, stdin, stdout)
	}
	cfg, err := parseStoreURL(url, warn)
	if err != nil {
		return err
	}
	st, err := local.Open(ctx, cfg, localOptions(settings))
	if err != nil {
		return err
	}
	defer st.Close()
	policy := daemon.PolicyFromSettings(settings)
	srv := &daemon.Server{
		Store:    st,
		Settings: settings,
		Roots:    gcroots.New(cfg.StateDir, cfg.StoreDir, cfg.RealStoreDir),
		LogDir:   cfg.LogDir,
		ErrorLog: logf,
		SpinWait: a.spinWait,
	}
	srv.AutoGC = gc.NewAuto(st, srv.Roots, settings, logf)
	if a.metricsListen != "" {
		srv.Metrics = metrics.New()
		if srv.AutoGC != nil {
			srv.AutoGC.Collected = srv.Metrics.Collected
		}
		addr, err := srv.Metrics.Serve(ctx, a.metricsListen)
		if err != nil {
			return err
		}
		logf(fmt.Sprintf("serving metrics at http://%s/metrics", addr))
	}
	if a.stdio {
		d := daemon.Decision{Allowed: true, Trusted: !a.forceUntrusted, UID: uint32(os.Geteuid())}
		d.User = strconv.Itoa(os.Geteuid())
		if u, err := user.Current(); err == nil {
			d.User = u.Username
		}
		// A read of stdin cannot be interrupted: on SIGTERM/SIGINT return at
		// once and let the process end.
		done := make(chan error, 1)
		go func() { done <- srv.ServeStream(ctx, stdin, stdout, d) }()
		select {
		case err := <-done:
			return err
		case <-ctx.Done():
			return nil
		}
	}
	srv.Auth = func(ctx context.Context, peer daemon.Peer) (daemon.Decision, error) {
		d, err := policy.Authorize(ctx, peer)
		if err == nil && d.Allowed {
			d.Trusted = (d.Trusted || a.forceTrusted) && !a.forceUntrusted
		}
		return d, err
	}
	ln, err := daemon.SystemdListener(os.Getenv)
	if err != nil {
		return err
	}
	if ln == nil {
		path := daemon.SocketPath(os.Getenv)
		if ln, err = daemon.Listen(path); err != nil {
			return fmt.Errorf("cannot create the daemon socket: %w", err)
		}
		defer os.Remove(path)
	}
	if err := os.Chdir("/"); err != nil {
		return err
	}
	return srv.Serve(ctx, ln)
}

// daemonSocket returns the socket a daemon store URL names.
func daemonSocket(url string) (string, bool) {
	base, _, _ := strings.Cut(url, "?")
	switch {
	case base == "daemon":
		return daemon.SocketPath(os.Getenv), true
	case strings.HasPrefix(base, "unix://"):
		return strings.TrimPrefix(base, "unix://"), true
	}
	return "", false
}
