// Command cairn-roots is the roots daemon: the one part of Cairn that needs
// root when the store daemon runs without it. It tells whoever connects to
// STATE/gc-roots-socket/socket the store paths that an unprivileged daemon
// may not be able to see are in use, each followed by a NUL, then closes the
// connection (the protocol of `nix store roots-daemon`):
//
//   - those running processes use (/proc/PID/exe, cwd, fd/*, maps, environ,
//     which only root may read for other users' processes), as Nix's
//     roots daemon does;
//   - those the links in STATE/gcroots and STATE/profiles lead to, indirect
//     roots included, whose second link (a `result` in a home directory) the
//     daemon may not be allowed to read.
//
// A store opened as local?use-roots-daemon=true asks it when it collects
// garbage or lists roots.
//
//	cairn-roots [--store URL]
//
// It changes nothing: it reads /proc and the roots' links, and writes only
// its socket; systemd may pass the socket (LISTEN_FDS).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"cairn/internal/daemon"
	"cairn/internal/gc"
	"cairn/internal/gcroots"
	"cairn/internal/store"
	"cairn/internal/storepath"
)

func main() {
	storeURL := flag.String("store", "local", "the `URL` of the local store whose roots to serve")
	flag.Parse()
	if err := run(*storeURL); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run(storeURL string) error {
	cfg, err := store.ParseURL(storeURL, nil)
	if err != nil {
		return err
	}
	if cfg.Scheme != store.SchemeLocal {
		return fmt.Errorf("the roots daemon serves a local store, not %q", storeURL)
	}
	ln, err := daemon.SystemdListener(os.Getenv)
	if err != nil {
		return err
	}
	if ln == nil {
		if ln, err = daemon.Listen(gc.RootsSocketPath(cfg.StateDir)); err != nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	warn := func(msg string) { fmt.Fprintln(os.Stderr, "warning:", msg) }
	links := gcroots.New(cfg.StateDir, cfg.StoreDir, cfg.RealStoreDir)
	find := func(ctx context.Context, dir storepath.StoreDir) ([]gc.RuntimeRoot, error) {
		rs, err := gc.ProcRoots(ctx, dir)
		if err != nil {
			return nil, err
		}
		roots, err := links.Find(ctx, gcroots.FindOptions{LinksOnly: true})
		if err != nil {
			return nil, err
		}
		for _, r := range roots {
			rs = append(rs, gc.RuntimeRoot{Link: r.Link, Target: r.Path.String()})
		}
		return rs, nil
	}
	return gc.ServeRoots(ctx, ln, cfg.StoreDir, find, warn)
}
