package gc

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"cairn/internal/config"
	"cairn/internal/gcroots"
	"cairn/internal/protocol"
	"cairn/internal/store/local"
)

// Auto is Nix 2.8's automatic collection (min-free, max-free,
// min-free-check-interval): when the file system of the store has less than
// MinFree bytes available, a collection in the background deletes dead paths
// until MaxFree bytes would be available. Check looks at most once per
// CheckInterval; after a collection it runs again only once the space
// available has fallen by 3% more. One collection runs at a time; Check with
// wait waits for a running one, which is what adds do before writing.
type Auto struct {
	Store *local.Store
	Roots *gcroots.Roots
	// MinFree and MaxFree are the settings; MinFree 0 turns Auto off.
	MinFree, MaxFree uint64
	CheckInterval    time.Duration
	// Options gives the collection's other options (keep-outputs, …).
	Options func() Options
	// Log receives "running auto-GC to free N bytes" and failures; nil
	// discards them. (The collection's own messages, a line per path
	// deleted, go where Options says.)
	Log func(string)
	// Collected, when not nil, is told what each collection deleted.
	Collected func(paths int, bytes uint64)

	mu         sync.Mutex
	lastCheck  time.Time
	availAfter uint64        // the space available after the last collection
	running    chan struct{} // closed when the running collection ends
}

// NewAuto is the automatic collection the settings ask for (min-free,
// max-free, min-free-check-interval), with their keep-* settings and the
// store's runtime roots; nil when min-free is 0, as by default.
func NewAuto(st *local.Store, roots *gcroots.Roots, s *config.Settings, log func(string)) *Auto {
	if s.Int("min-free") <= 0 {
		return nil
	}
	return &Auto{
		Store:         st,
		Roots:         roots,
		MinFree:       uint64(s.Int("min-free")),
		MaxFree:       uint64(s.Int("max-free")),
		CheckInterval: time.Duration(s.Int("min-free-check-interval")) * time.Second,
		Options: func() Options {
			return Options{
				KeepOutputs:     s.Bool("keep-outputs"),
				KeepDerivations: s.Bool("keep-derivations"),
				RuntimeRoots:    RuntimeRootsFor(st.Config(), s.Bool("use-roots-daemon")),
			}
		},
		Log: log,
	}
}

// FreeSpaceFileEnv names a file holding the free space Auto sees instead of
// the file system's, as in Nix's tests.
const FreeSpaceFileEnv = "_NIX_TEST_FREE_SPACE_FILE"

// Check starts a collection if one is due; with wait it returns only once
// any collection running (or started now) has ended. Errors of the
// collection are logged, not returned: an add or build goes on regardless.
// tell, if not nil, also gets the line saying a collection starts (Nix's
// client sees it).
func (a *Auto) Check(ctx context.Context, wait bool, tell func(string)) {
	if a == nil || a.MinFree == 0 {
		return
	}
	done := a.start(ctx, tell)
	if wait && done != nil {
		select {
		case <-done:
		case <-ctx.Done():
		}
	}
}

// start returns the channel of the running collection, starting one if due.
func (a *Auto) start(ctx context.Context, tell func(string)) chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.running != nil {
		return a.running
	}
	now := time.Now()
	if now.Sub(a.lastCheck) < a.CheckInterval {
		return nil
	}
	a.lastCheck = now
	avail, err := a.avail()
	if err != nil {
		a.log(fmt.Sprintf("warning: auto-GC: %v", err))
		return nil
	}
	if avail >= a.MinFree || avail >= a.MaxFree {
		return nil
	}
	if a.availAfter != 0 && float64(avail) > float64(a.availAfter)*0.97 {
		return nil
	}
	done := make(chan struct{})
	a.running = done
	opts := Options{}
	if a.Options != nil {
		opts = a.Options()
	}
	opts.Action = protocol.GCDeleteDead
	opts.MaxFreed = a.MaxFree - avail
	msg := fmt.Sprintf("running auto-GC to free %d bytes", opts.MaxFreed)
	a.log(msg)
	if tell != nil {
		tell(msg)
	}
	// The collection outlives the operation that started it, as Nix's
	// detached thread does.
	ctx = context.WithoutCancel(ctx)
	go func() {
		res, err := Collect(ctx, a.Store, a.Roots, opts)
		if err != nil {
			a.log(fmt.Sprintf("warning: auto-GC: %v", err))
		}
		if res != nil && a.Collected != nil {
			a.Collected(len(res.Paths), res.BytesFreed)
		}
		after, err := a.avail()
		a.mu.Lock()
		if err == nil {
			a.availAfter = max(after, 1)
		}
		a.lastCheck = time.Now()
		a.running = nil
		a.mu.Unlock()
		close(done)
	}()
	return done
}

func (a *Auto) log(s string) {
	if a.Log != nil {
		a.Log(s)
	}
}

// avail is the space available to unprivileged users on the store's file
// system (or what FreeSpaceFileEnv's file says).
func (a *Auto) avail() (uint64, error) {
	if f := os.Getenv(FreeSpaceFileEnv); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return 0, err
		}
		return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	}
	dir := a.Store.Config().RealStoreDir
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("getting file system info about %s: %w", dir, err)
	}
	return st.Bavail * uint64(st.Frsize), nil
}
