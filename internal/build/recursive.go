package build

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"golang.org/x/sys/unix"

	"cairn/internal/protocol"
	"cairn/internal/storepath"
)

// Recursive Nix (Nix 2.8's experimental recursive-nix). A derivation whose
// requiredSystemFeatures name "recursive-nix" gets a daemon of its own: a
// socket in its build dir, NIX_REMOTE pointing at it from inside the
// sandbox, served by the daemon that builds it (Config.ServeRecursive) as
// an untrusted client of a restricted store. That store shows only the
// build's input closure and what the build added through it (added paths,
// and the outputs, with their closures, of what it built through it); what
// it adds appears in the sandbox's store dir at once, and may be referred
// to by the outputs.

// RecursiveSocket is the socket's name in the build dir, as Nix names it.
const RecursiveSocket = ".nix-socket"

// Recursion is what one build's recursive daemon may show and what it added.
type Recursion struct {
	mu      sync.Mutex
	inputs  map[storepath.StorePath]bool
	added   []storepath.StorePath
	isAdded map[storepath.StorePath]bool
	// materialise makes an added path appear in the sandbox.
	materialise func(p storepath.StorePath) error
	// outer is the logger of the request that runs the build.
	outer Logger
}

// Logger is where the builds the builder asks for log: the logger of the
// request that runs the build, as in Nix 2.8, whose recursive daemon leaves
// the global logger alone, so that "building '…'" and the nested build's
// log reach the outer client and not the builder's own client. The outer
// request's progress counts only its own builds.
func (r *Recursion) Logger() Logger { return nestedLogger{r.outer} }

type nestedLogger struct{ outer Logger }

func (l nestedLogger) BuildStarted(drv storepath.StorePath) BuildLog {
	return l.outer.BuildStarted(drv)
}
func (l nestedLogger) Progress(done, expected, running, failed int) {}
func (l nestedLogger) Error(msg string)                             { l.outer.Error(msg) }

func (l nestedLogger) BuildStartedMode(drv storepath.StorePath, m Mode, round, rounds int) BuildLog {
	if ml, ok := l.outer.(ModeLogger); ok {
		return ml.BuildStartedMode(drv, m, round, rounds)
	}
	return l.outer.BuildStarted(drv)
}

func (l nestedLogger) Print(msg string, info bool) {
	if ml, ok := l.outer.(ModeLogger); ok {
		ml.Print(msg, info)
	}
}

func (l nestedLogger) StartActivity(typ protocol.ActivityType, text string) func() {
	if al, ok := l.outer.(ActivityLogger); ok {
		return al.StartActivity(typ, text)
	}
	l.Print(text+"...", true)
	return func() {}
}

func (l nestedLogger) BuildStartedOn(drv storepath.StorePath, machine string) BuildLog {
	if rl, ok := l.outer.(RemoteLogger); ok {
		return rl.BuildStartedOn(drv, machine)
	}
	return l.BuildStartedMode(drv, Normal, 1, 1)
}

// Allowed reports whether the build may see p.
func (r *Recursion) Allowed(p storepath.StorePath) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.inputs[p] || r.isAdded[p]
}

// AllowedPaths are the paths the build may see, sorted.
func (r *Recursion) AllowedPaths() []storepath.StorePath {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]storepath.StorePath, 0, len(r.inputs)+len(r.added))
	for p := range r.inputs {
		out = append(out, p)
	}
	out = append(out, r.added...)
	storepath.SortPaths(out)
	return out
}

// Added are the paths the build added, in order.
func (r *Recursion) Added() []storepath.StorePath {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.added)
}

// Add makes the valid path p visible to the build (Nix's addDependency).
func (r *Recursion) Add(p storepath.StorePath) error {
	r.mu.Lock()
	if r.inputs[p] || r.isAdded[p] {
		r.mu.Unlock()
		return nil
	}
	r.isAdded[p] = true
	r.added = append(r.added, p)
	m := r.materialise
	r.mu.Unlock()
	if m != nil {
		return m(p)
	}
	return nil
}

// usesRecursiveNix reports whether the derivation asks for a daemon.
func usesRecursiveNix(features []string) bool { return slices.Contains(features, "recursive-nix") }

// startRecursive listens on the build dir's socket and has the daemon serve
// it; the returned stop ends the serving once the builder is gone.
func (b *Builder) startRecursive(ctx context.Context, opts Options, log Logger, dirs *buildDirs, sandboxed bool, inputs []storepath.StorePath) (*Recursion, func(), error) {
	if !slices.Contains(opts.ExperimentalFeatures, "recursive-nix") {
		return nil, nil, errors.New("experimental Nix feature 'recursive-nix' is disabled; use '--extra-experimental-features recursive-nix' to override")
	}
	if b.cfg.ServeRecursive == nil {
		return nil, nil, errors.New("recursive Nix is not available here: no daemon serves this store")
	}
	rec := &Recursion{inputs: make(map[storepath.StorePath]bool, len(inputs)), isAdded: map[storepath.StorePath]bool{}, outer: log}
	for _, p := range inputs {
		rec.inputs[p] = true
	}
	if sandboxed {
		st := b.store
		rec.materialise = func(p storepath.StorePath) error {
			// A copy in the sandbox's store dir: its own, so the
			// builder can change nothing of the store's.
			dst := filepath.Join(dirs.store, p.Base())
			if _, err := os.Lstat(dst); err == nil {
				return fmt.Errorf("store path '%s' already exists in the sandbox", p)
			}
			src := st.RealPath(p)
			fi, err := os.Lstat(src)
			if err == nil && fi.Mode().IsRegular() {
				// With build users the builder owns neither the
				// inode nor the dir: a link is safe, as Nix's.
				if dirs.count > 0 && dirs.uid != os.Geteuid() && os.Link(src, dst) == nil {
					return nil
				}
				err = copyFile(src, dst, fi.Mode()&0o100 != 0)
			} else if err == nil {
				err = copyTree(src, dst)
			}
			if err != nil {
				return fmt.Errorf("could not add path '%s' to sandbox: %w", p, err)
			}
			return nil
		}
	}
	sock := filepath.Join(dirs.build, RecursiveSocket)
	ln, err := listenLong(dirs.build, RecursiveSocket)
	if err != nil {
		return nil, nil, fmt.Errorf("recursive Nix: %w", err)
	}
	// Removed with the build dir: the name it was made under may be
	// the descriptor's, gone by then.
	ln.SetUnlinkOnClose(false)
	// Only the builder may connect.
	os.Chmod(sock, 0o600)
	if dirs.count > 0 && dirs.uid != os.Geteuid() {
		if err := unix.Lchown(sock, dirs.uid, dirs.gid); err != nil {
			ln.Close()
			return nil, nil, fmt.Errorf("recursive Nix: %w", err)
		}
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.cfg.ServeRecursive(sctx, ln, rec)
	}()
	return rec, func() {
		cancel()
		ln.Close()
		<-done
		os.Remove(sock)
	}, nil
}

// maxSocketPath is what a sockaddr_un holds, its final NUL included.
const maxSocketPath = 108

// listenLong listens on the Unix socket name in dir, whatever the length of
// the path: a long one is named through the directory's descriptor (a
// socket address holds 107 bytes; build dirs can be deeper).
func listenLong(dir, name string) (*net.UnixListener, error) {
	path := filepath.Join(dir, name)
	if len(path) < maxSocketPath {
		ln, err := net.Listen("unix", path)
		if err != nil {
			return nil, err
		}
		return ln.(*net.UnixListener), nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	ln, err := net.Listen("unix", fmt.Sprintf("/proc/self/fd/%d/%s", d.Fd(), name))
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	return ln.(*net.UnixListener), nil
}
