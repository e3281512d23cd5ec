package gc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"slices"
	"time"

	"cairn/internal/gcroots"
	"cairn/internal/store"
	"cairn/internal/storepath"
)

// The roots daemon. A store daemon that runs without root cannot read other
// users' /proc entries, so it cannot see the store paths their processes
// use. A small privileged process can: it listens on
// STATE/gc-roots-socket/socket (mode 0666) and answers each connection
// with the store paths running processes use, each followed by a NUL, then
// closes it. This is the protocol of `nix store roots-daemon` (newer Nix),
// so either serves either's collector. A local store whose URL says
// use-roots-daemon=true asks it rather than reading /proc.

// Limits on a roots daemon's answer.
const (
	// maxDaemonRoots bounds the paths one answer may hold.
	maxDaemonRoots = 1 << 20
	// maxDaemonRootLen bounds one path.
	maxDaemonRootLen = 4096
	// daemonRootsTimeout bounds waiting for the answer.
	daemonRootsTimeout = 5 * time.Minute
)

// RootsSocketPath is where the roots daemon of the store with state dir
// stateDir listens.
func RootsSocketPath(stateDir string) string {
	return filepath.Join(stateDir, "gc-roots-socket", "socket")
}

// RuntimeRootsFor returns how the store cfg describes finds its runtime
// roots: from the roots daemon when its URL has use-roots-daemon=true or
// setting (the use-roots-daemon setting of nix.conf) says so, else from
// /proc.
func RuntimeRootsFor(cfg *store.Config, setting bool) RuntimeRoots {
	switch cfg.Params["use-roots-daemon"] {
	case "true", "1":
		setting = true
	case "false", "0":
		setting = false
	}
	if setting {
		return DaemonRoots(RootsSocketPath(cfg.StateDir))
	}
	return ProcRoots
}

// DaemonRoots asks the roots daemon listening on socket. The links of its
// roots are censored: the daemon names only the paths.
func DaemonRoots(socket string) RuntimeRoots {
	return func(ctx context.Context, dir storepath.StoreDir) ([]RuntimeRoot, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", socket)
		if err != nil {
			return nil, fmt.Errorf("ask roots daemon %s: %w", socket, err)
		}
		defer conn.Close()
		deadline := time.Now().Add(daemonRootsTimeout)
		if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
			deadline = dl
		}
		conn.SetReadDeadline(deadline)
		rs, err := readDaemonRoots(bufio.NewReader(conn))
		if err != nil {
			return nil, fmt.Errorf("ask roots daemon %s: %w", socket, err)
		}
		return rs, nil
	}
}

// readDaemonRoots reads NUL-terminated paths until the end of r (or an
// empty one).
func readDaemonRoots(r *bufio.Reader) ([]RuntimeRoot, error) {
	var out []RuntimeRoot
	var line []byte
	for {
		b, err := r.ReadByte()
		if errors.Is(err, io.EOF) {
			if len(line) > 0 {
				return nil, errors.New("answer ends inside a path")
			}
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if b != 0 {
			if len(line) >= maxDaemonRootLen {
				return nil, fmt.Errorf("a path longer than %d bytes", maxDaemonRootLen)
			}
			line = append(line, b)
			continue
		}
		if len(line) == 0 {
			return out, nil
		}
		if len(out) >= maxDaemonRoots {
			return nil, fmt.Errorf("more than %d paths", maxDaemonRoots)
		}
		out = append(out, RuntimeRoot{Link: gcroots.Censored, Target: string(line)})
		line = line[:0]
	}
}

// ServeRoots answers every connection on l with the store paths (of dir)
// that find reports running processes use, until ctx is done or l fails.
func ServeRoots(ctx context.Context, l net.Listener, dir storepath.StoreDir, find RuntimeRoots, warn func(string)) error {
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go func() {
			defer conn.Close()
			conn.SetWriteDeadline(time.Now().Add(daemonRootsTimeout))
			if err := answerRoots(ctx, conn, dir, find); err != nil && warn != nil {
				warn(fmt.Sprintf("roots daemon: %v", err))
			}
		}()
	}
}

// answerRoots writes the store paths find reports, each once, sorted, each
// followed by a NUL.
func answerRoots(ctx context.Context, w io.Writer, dir storepath.StoreDir, find RuntimeRoots) error {
	rs, err := find(ctx, dir)
	if err != nil {
		return err
	}
	var paths []string
	for _, r := range RuntimeRootsOf(rs, dir, nil) {
		paths = append(paths, r.Path.String())
	}
	slices.Sort(paths)
	paths = slices.Compact(paths)
	bw := bufio.NewWriter(w)
	for _, p := range paths {
		bw.WriteString(p)
		bw.WriteByte(0)
	}
	return bw.Flush()
}
