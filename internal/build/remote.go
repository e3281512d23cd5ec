package build

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"cairn/internal/derivation"
	"cairn/internal/protocol"
	"cairn/internal/remotebuild"
	"cairn/internal/store"
	"cairn/internal/storepath"
	"cairn/internal/substitute"
)

// Remote builds. A build that need not run here is first offered to the
// remote builders of the builders setting, as Nix 2.8 offers it to its build
// hook: not in check or repair mode, not a derivation that prefers a local
// build and can have one, not one that came as a basic derivation
// (BuildDerivation). A machine is chosen through Nix's slot locks; the
// input closure is copied there, the derivation built with the serve
// protocol's BuildDerivation, and the missing outputs copied back. The
// machine's stderr is the build's log.
//
// The outputs are locked from the connection on, and copied back under
// those locks, as Nix's hook copies them under the goal's.

// uploadLockWait is how long a build waits for another to finish copying
// to the same machine before it copies anyway, as Nix's hook.
const uploadLockWait = 15 * time.Minute

// remotePoll is how often a build waiting for a machine looks again when no
// build of this process frees one (Nix's hook waits build-poll-interval, 5
// s, whatever happens).
const remotePoll = time.Second

// remoteScheduler returns r's machines, parsed on first use; nil when there
// are none.
func (r *request) remoteScheduler(stateDir string) (*remotebuild.Scheduler, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.remoteParsed {
		r.remoteParsed = true
		if strings.TrimSpace(r.opts.Builders) != "" {
			ms, err := remotebuild.Parse(r.opts.Builders, r.opts.System)
			r.remoteErr = err
			if len(ms) > 0 {
				r.remote = remotebuild.NewScheduler(ms, stateDir)
			}
		}
	}
	return r.remote, r.remoteErr
}

// requiredFeatures are the derivation's requiredSystemFeatures (a plain or
// a structured attribute), sorted and unique.
func requiredFeatures(drv *derivation.Derivation) []string {
	var fs []string
	if text, ok := drv.Env["__json"]; ok {
		var attrs map[string]json.RawMessage
		if len(text) <= MaxStructuredAttrs && json.Unmarshal([]byte(text), &attrs) == nil {
			json.Unmarshal(attrs["requiredSystemFeatures"], &fs)
		}
	} else {
		fs = strings.Fields(drv.Env["requiredSystemFeatures"])
	}
	slices.Sort(fs)
	return slices.Compact(fs)
}

// platformHere reports whether this machine builds for drv's system.
func platformHere(drv *derivation.Derivation, opts Options) bool {
	return drv.Platform == opts.System || slices.Contains(opts.ExtraPlatforms, drv.Platform)
}

// featuresHere reports whether this machine has every feature in fs.
func featuresHere(fs []string, opts Options) bool {
	return !slices.ContainsFunc(fs, func(f string) bool { return !slices.Contains(opts.SystemFeatures, f) })
}

// remoteFreed wakes the builds waiting for a machine when one of this
// process's remote builds ends.
func (b *Builder) remoteFreed() {
	b.mu.Lock()
	if b.freed != nil {
		close(b.freed)
		b.freed = nil
	}
	b.mu.Unlock()
}

// waitRemote waits until a remote build of this process ends, or a while.
func (b *Builder) waitRemote(ctx context.Context) error {
	b.mu.Lock()
	if b.freed == nil {
		b.freed = make(chan struct{})
	}
	ch := b.freed
	b.mu.Unlock()
	t := time.NewTimer(remotePoll)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-ch:
	case <-t.C:
	}
	return nil
}

// tryRemote offers g to the remote builders. With handled false the build
// is to run here.
func (b *Builder) tryRemote(g *goal, r *request) (handled bool, status Status, err error) {
	if r.noRemote {
		return false, 0, nil
	}
	sched, err := r.remoteScheduler(b.store.StateDir())
	if err != nil {
		return true, MiscFailure, err
	}
	if sched == nil {
		return false, 0, nil
	}
	drv, opts := g.drv, r.opts
	features := requiredFeatures(drv)
	here := (platformHere(drv, opts) || isBuiltin(drv)) && featuresHere(features, opts)
	if (g.mode != Normal || boolAttr(drv, "preferLocalBuild") && here) && opts.MaxJobs != 0 {
		return false, 0, nil
	}
	var outs []storepath.StorePath
	for _, name := range drv.OutputNames() {
		outs = append(outs, drv.Outputs[name].Path)
	}
	st := b.store
	waiting := false
	for {
		// As Nix's goal: the outputs locked (and the collector kept
		// waiting) while a machine is chosen and while it builds; given
		// up while waiting for a machine, or to build here.
		releaseGC, err := st.HoldGC(g.ctx)
		if err != nil {
			return true, MiscFailure, err
		}
		locks, err := st.LockStorePaths(g.ctx, outs)
		if err != nil {
			releaseGC()
			return true, MiscFailure, err
		}
		unlock := func(built bool) {
			locks.Unlock(built)
			releaseGC()
		}
		if _, missing, err := b.missing(g.ctx, drv, nil); err != nil || !missing {
			unlock(err == nil)
			if err != nil {
				return true, MiscFailure, err
			}
			return true, AlreadyValid, nil // another process built them meanwhile
		}
		willing := opts.MaxJobs > 0 && (r.jobs == nil || len(r.jobs) < cap(r.jobs))
		req := remotebuild.Request{System: drv.Platform, Features: features,
			CanBuildLocally: willing && platformHere(drv, opts) && featuresHere(features, opts)}
		slot, d, msg, err := sched.Choose(g.ctx, g.drvPath.Base(), req)
		if err != nil || d != remotebuild.Accept {
			unlock(false)
		}
		if err != nil {
			return true, MiscFailure, err
		}
		switch d {
		case remotebuild.Decline:
			if msg != "" && !req.CanBuildLocally {
				g.logf(false, "%s", msg)
			}
			return false, 0, nil
		case remotebuild.Postpone:
			if !waiting {
				waiting = true
				g.logf(true, "waiting for a machine to build '%s'", g.drvPath)
			}
			if err := b.waitRemote(g.ctx); err != nil {
				return true, MiscFailure, err
			}
			continue
		}
		status, err, connected := b.buildRemote(g, r, slot.Machine)
		slot.Release()
		b.remoteFreed()
		unlock(status.Success())
		if connected {
			return true, status, err
		}
		if g.ctx.Err() != nil {
			return true, MiscFailure, g.ctx.Err()
		}
		g.logf(false, "cannot build on '%s': error: %s", slot.Machine.StoreURI, err)
		sched.Disable(slot.Machine)
	}
}

// remoteLog is a remote build's log: the log file and the goal's sinks.
type remoteLog struct {
	mu   sync.Mutex
	file *logFile
	lw   *lineWriter
}

func (l *remoteLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file != nil {
		l.file.Write(p)
	}
	return l.lw.Write(p)
}

// buildRemote builds g on m, its caller holding the GC lock shared and the
// outputs' locks. connected false says m could not be reached (err says
// why) and nothing was done there.
func (b *Builder) buildRemote(g *goal, r *request, m *remotebuild.Machine) (status Status, err error, connected bool) {
	ctx, drv, opts, st := g.ctx, g.drv, r.opts, b.store
	log := &remoteLog{lw: newLineWriter(opts.LogLines, g.emit)}
	conn, err := remotebuild.Open(ctx, m, st.StoreDir(), log)
	if err != nil {
		return MiscFailure, err, false
	}
	defer func() {
		conn.Close() // the machine's last words are in the log now
		log.mu.Lock()
		log.lw.Flush()
		if log.file != nil {
			if cerr := log.file.Close(); cerr != nil && err == nil {
				status, err = MiscFailure, cerr
			}
		}
		log.mu.Unlock()
	}()
	if !opts.DiscardLog {
		f, err := b.openLogFile(g.drvPath, opts.CompressLog)
		if err != nil {
			return MiscFailure, err, true
		}
		log.mu.Lock()
		log.file = f
		log.mu.Unlock()
	}
	g.mu.Lock()
	g.machine = m.StoreURI
	g.mu.Unlock()
	g.timesBuilt++
	b.started(g)
	defer b.finished(g)
	// As Nix's hook fails: its message logged, and the build failed with
	// the hook's exit code.
	failed := func(msg string) (Status, error, bool) {
		if ctx.Err() != nil {
			return MiscFailure, ctx.Err(), true // cancelled: the machine's side went with it
		}
		g.forEach(func(r *request) {
			if r.log != nil {
				r.log.Error(msg)
			}
		})
		log.mu.Lock()
		log.lw.Flush()
		tail := slices.Clone(log.lw.Tail())
		log.mu.Unlock()
		text := fmt.Sprintf("builder for '%s' failed with exit code 1", hl(g.drvPath.String()))
		if len(tail) > 0 && !opts.LogShown {
			text += fmt.Sprintf(";\nlast %d log lines:\n", len(tail))
			for _, l := range tail {
				text += "> " + l + "\n"
			}
			text += fmt.Sprintf("For full logs, run '\x1b[1mnix log %s\x1b[0m'.", g.drvPath)
		}
		return MiscFailure, fmt.Errorf("%s", text), true
	}

	inputs, err := b.inputClosure(ctx, drv)
	if err != nil {
		return MiscFailure, err, true
	}
	release, hogged, err := remotebuild.UploadLock(ctx, st.StateDir(), m.StoreURI, uploadLockWait)
	if err != nil {
		return failed(err.Error())
	}
	if hogged {
		g.logf(false, "somebody is hogging the upload lock for '%s', continuing...", m.StoreURI)
	}
	// Nix's copyPaths activity, for as long as the copy lasts.
	copied := func() {}
	copying := func(n int) { copied = g.activity(protocol.ActCopyPaths, fmt.Sprintf("copying %d paths", n)) }
	_, err = remotebuild.CopyTo(ctx, conn, st, inputs, opts.BuildersUseSubstitutes, copying)
	copied()
	release()
	if err != nil {
		return failed(err.Error())
	}

	// A basic derivation: the inputs are all sources there.
	basic := *drv
	if len(drv.InputDrvs) > 0 {
		basic.InputSrcs = inputs
	}
	basic.InputDrvs = nil
	res, err := conn.Build(ctx, g.drvPath, &basic, protocol.ServeBuildOptions{
		MaxSilentTime:      uint64(opts.MaxSilentTime / time.Second),
		BuildTimeout:       uint64(opts.Timeout / time.Second),
		MaxLogSize:         uint64(max(opts.MaxLogSize, 0)),
		NrRepeats:          uint64(opts.Repeat),
		EnforceDeterminism: opts.EnforceDeterminism,
		KeepFailed:         opts.KeepFailed,
	})
	if err != nil {
		return failed(err.Error())
	}
	if res.Status > protocol.AlreadyValid {
		return failed(fmt.Sprintf("build of '%s' on '%s' failed: %s", hl(g.drvPath.String()), m.StoreURI, res.ErrorMsg))
	}

	var missing []storepath.StorePath
	for _, name := range drv.OutputNames() {
		p := drv.Outputs[name].Path
		if ok, err := st.IsValidPath(ctx, p); err != nil {
			return MiscFailure, err, true
		} else if !ok {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		copying(len(missing))
		uri := conn.URI()
		_, err := remotebuild.CopyFrom(ctx, conn, st, missing, true, func(info *store.PathInfo) func() {
			var acts []substitute.Activity
			g.forEach(func(r *request) {
				if l := r.substLogger(); l != nil {
					acts = append(acts, l.Substituting(info.Path, uri, info.NarSize))
				}
			})
			return func() {
				for _, a := range acts {
					a.Done()
				}
			}
		})
		copied()
		if err != nil {
			return failed(err.Error())
		}
	}
	if err := b.postBuild(g, r); err != nil {
		return MiscFailure, err, true
	}
	return Built, nil, true
}
