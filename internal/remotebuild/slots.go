package remotebuild

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Slots: each machine has MaxJobs slot lock files under STATE/current-load,
// named as Nix's build hook names them ("<uri with / as _>-<n>"); a build on
// the machine holds one flock'ed. Choosing a machine happens under
// current-load/main-lock, so Cairn and Nix on one state dir share the
// machines' slots.

// Decision is the answer to a request for a machine, as Nix's hook gives it.
type Decision int

const (
	// Decline: build locally (no machine of the right type has a free slot,
	// and building here is possible, or no machine is of the right type).
	Decline Decision = iota
	// Postpone: a machine of the right type is busy, and this machine
	// cannot build the derivation; ask again later.
	Postpone
	// Accept: the slot returned is the build's.
	Accept
)

// Request is what the choice of a machine depends on.
type Request struct {
	System   string
	Features []string // required system features, sorted
	// CanBuildLocally says the local machine could take the build now (a
	// free job and the right system and features): then a lack of remote
	// slots means building here, and the message is not worth a warning.
	CanBuildLocally bool
}

// Slot is one machine's build place, held until Release.
type Slot struct {
	Machine *Machine
	lock    *os.File
}

// Release gives the place back.
func (s *Slot) Release() {
	if s != nil && s.lock != nil {
		s.lock.Close()
		s.lock = nil
	}
}

// Scheduler chooses machines for one build request, as one run of Nix's hook
// does: a machine that could not be reached is not tried again.
type Scheduler struct {
	Machines []*Machine
	dir      string // STATE/current-load

	mu       sync.Mutex
	disabled map[*Machine]bool
}

// NewScheduler returns a Scheduler whose locks live in stateDir/current-load.
func NewScheduler(machines []*Machine, stateDir string) *Scheduler {
	return &Scheduler{Machines: machines, dir: filepath.Join(stateDir, "current-load"), disabled: map[*Machine]bool{}}
}

// Disable takes m out of this request's choices (it could not be reached).
func (s *Scheduler) Disable(m *Machine) {
	s.mu.Lock()
	s.disabled[m] = true
	s.mu.Unlock()
}

func (s *Scheduler) enabled(m *Machine) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.disabled[m]
}

// escapeURI is Nix's escapeUri: '/' becomes '_'.
func escapeURI(uri string) string { return strings.ReplaceAll(uri, "/", "_") }

func openLock(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
}

// Choose picks the least loaded machine of the right type with a free slot
// (load over speed factor, then the faster machine, then the lower load). With
// Decline, msg says why no machine was found (Nix's "Failed to find a machine
// for remote build!").
func (s *Scheduler) Choose(ctx context.Context, drvName string, req Request) (slot *Slot, d Decision, msg string, err error) {
	os.MkdirAll(s.dir, 0o777) // an error shows when the lock is opened
	main, err := openLock(filepath.Join(s.dir, "main-lock"))
	if err != nil {
		return nil, Decline, "", fmt.Errorf("lock %s: %w", s.dir, err)
	}
	defer main.Close()
	if err := flockWait(ctx, main); err != nil {
		return nil, Decline, "", fmt.Errorf("lock %s: %w", main.Name(), err)
	}
	rightType := false
	var best *Machine
	var bestLock *os.File
	var bestLoad uint64
	for _, m := range s.Machines {
		if !s.enabled(m) || !m.canBuild(req.System, req.Features) {
			continue
		}
		rightType = true
		var free *os.File
		var load uint64
		for n := uint64(0); n < m.MaxJobs; n++ {
			f, err := openLock(filepath.Join(s.dir, fmt.Sprintf("%s-%d", escapeURI(m.StoreURI), n)))
			if err != nil {
				closeLock(bestLock)
				closeLock(free)
				return nil, Decline, "", err
			}
			if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
				load++ // busy (here too: a flock is per open file)
			} else if free == nil {
				free = f
				continue
			}
			f.Close()
		}
		if free == nil {
			continue
		}
		better := best == nil
		if !better {
			// A Machine made without Parse may have 0: Nix's is at least 1.
			sf, bsf := max(m.SpeedFactor, 1), max(best.SpeedFactor, 1)
			a, b := load/sf, bestLoad/bsf
			better = a < b || a == b && (sf > bsf || sf == bsf && load < bestLoad)
		}
		if better {
			closeLock(bestLock)
			best, bestLock, bestLoad = m, free, load
		} else {
			free.Close()
		}
	}
	if best == nil {
		if rightType && !req.CanBuildLocally {
			return nil, Postpone, "", nil
		}
		return nil, Decline, s.notFound(drvName, req), nil
	}
	now := time.Now()
	os.Chtimes(bestLock.Name(), now, now) // Nix's futimens: when the slot was last taken
	return &Slot{Machine: best, lock: bestLock}, Accept, "", nil
}

func closeLock(f *os.File) {
	if f != nil {
		f.Close()
	}
}

// notFound is Nix 2.8's message when no machine can take a build.
func (s *Scheduler) notFound(drvName string, req Request) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Failed to find a machine for remote build!\nderivation: %s\nrequired (system, features): (%s, %s)",
		drvName, req.System, strings.Join(req.Features, ", "))
	fmt.Fprintf(&b, "\n%d available machines:\n(systems, maxjobs, supportedFeatures, mandatoryFeatures)", len(s.Machines))
	for _, m := range s.Machines {
		fmt.Fprintf(&b, "\n(%s, %d, %s, %s)", strings.Join(m.Systems, ", "), m.MaxJobs,
			strings.Join(m.SupportedFeatures, ", "), strings.Join(m.MandatoryFeatures, ", "))
	}
	return b.String()
}

// flockWait takes an exclusive flock on f, polling so that ctx can end the
// wait.
func flockWait(ctx context.Context, f *os.File) error {
	delay := time.Millisecond
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if err != unix.EWOULDBLOCK && err != unix.EINTR {
			return err
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		delay = min(delay*2, 50*time.Millisecond)
	}
}

// UploadLock takes the lock that keeps two builds from copying to one
// machine at once (current-load/<uri>.upload-lock, as Nix's hook names it),
// waiting at most wait. hogged says the wait ran out: the copy goes ahead
// without the lock, as Nix's does.
func UploadLock(ctx context.Context, stateDir, uri string, wait time.Duration) (release func(), hogged bool, err error) {
	dir := filepath.Join(stateDir, "current-load")
	os.MkdirAll(dir, 0o777) // an error shows when the lock is opened
	f, err := openLock(filepath.Join(dir, escapeURI(uri)+".upload-lock"))
	if err != nil {
		return nil, false, fmt.Errorf("lock the upload to '%s': %w", uri, err)
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if err := flockWait(wctx, f); err != nil {
		if ctx.Err() != nil || wctx.Err() == nil {
			f.Close()
			return nil, false, fmt.Errorf("lock the upload to '%s': %w", uri, err)
		}
		hogged = true
	}
	return func() { f.Close() }, hogged, nil
}
