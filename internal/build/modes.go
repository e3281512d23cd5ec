package build

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"

	"cairn/internal/fsnar"
	"cairn/internal/nixhash"
	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/storepath"
)

// Check and repair, as Nix 2.8 does them:
//
//	check    every output must be valid before and after the output locks
//	         are taken; the builder runs as usual, the new outputs are
//	         hashed where they are left and compared with the registered
//	         NAR hashes. A difference fails the build (NotDeterministic)
//	         and, with keep-failed, leaves the new output at <out>.check.
//	         Equal outputs are marked ultimate; nothing else is registered.
//	repair   an output is bad when it is not valid, missing on disk, or its
//	         NAR no longer hashes to the registered hash. With bad outputs
//	         the goal repairs its input derivations, rebuilds, and swaps the
//	         new outputs into place (renameat2 RENAME_EXCHANGE, so a reader
//	         sees the old files or the new, never neither), then registers
//	         them again. With none, it looks at the rest of the outputs'
//	         closure and repairs the derivations of the bad paths there.
//
// Both need the sandbox: without one the outputs would be built where the
// valid ones are (Nix rewrites hashes for that; Cairn does not yet).

// logf prints a plain message (Nix's printError, or printInfo with info)
// to every request following g whose Logger can.
func (g *goal) logf(info bool, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	g.forEach(func(r *request) {
		if ml, ok := r.log.(ModeLogger); ok {
			ml.Print(msg, info)
		}
	})
}

// activity starts an activity of typ with text for every request following
// g (ActivityLogger); stop ends them.
func (g *goal) activity(typ protocol.ActivityType, text string) (stop func()) {
	var stops []func()
	g.forEach(func(r *request) {
		if al, ok := r.log.(ActivityLogger); ok {
			stops = append(stops, al.StartActivity(typ, text))
		} else if ml, ok := r.log.(ModeLogger); ok {
			ml.Print(text+"...", true)
		}
	})
	return func() {
		for _, stop := range stops {
			stop()
		}
	}
}

// buildStarted opens r's log of g's build, telling a ModeLogger the mode.
// Called with g.mu held, or by g's own goroutine (the only writer of
// g.machine).
func (r *request) buildStarted(g *goal) BuildLog {
	if rl, ok := r.log.(RemoteLogger); ok && g.machine != "" {
		return rl.BuildStartedOn(g.drvPath, g.machine)
	}
	if ml, ok := r.log.(ModeLogger); ok {
		return ml.BuildStartedMode(g.drvPath, g.mode, max(g.round, 1), max(g.rounds, 1))
	}
	return r.log.BuildStarted(g.drvPath)
}

// contentsGood reports whether the valid path p is on disk and hashes to its
// registered NAR hash, as Nix's Worker::pathContentsGood (answers are kept
// for the request).
func (b *Builder) contentsGood(ctx context.Context, r *request, g *goal, p storepath.StorePath) (bool, error) {
	r.mu.Lock()
	good, seen := r.good[p]
	r.mu.Unlock()
	if seen {
		return good, nil
	}
	g.logf(true, "checking path '%s'...", p)
	info, err := b.store.QueryPathInfo(ctx, p)
	if err != nil {
		return false, err
	}
	good = false
	if _, err := os.Lstat(b.store.RealPath(p)); err == nil {
		h := nixhash.NewHasher(info.NarHash.Algorithm())
		if err := fsnar.DumpDirect(ctx, h, b.store.RealPath(p)); err != nil {
			if ctx.Err() != nil {
				return false, ctx.Err()
			}
		} else {
			good = h.Sum() == info.NarHash
		}
	}
	if !good {
		g.logf(false, "path '%s' is corrupted or missing!", p)
	}
	r.mu.Lock()
	r.good[p] = good
	r.mu.Unlock()
	return good, nil
}

// badOutputs returns the outputs of drv that are not valid or whose
// contents are not good.
func (b *Builder) badOutputs(ctx context.Context, r *request, g *goal) (map[storepath.StorePath]bool, error) {
	bad := map[storepath.StorePath]bool{}
	for _, name := range g.drv.OutputNames() {
		p := g.drv.Outputs[name].Path
		if p.IsZero() {
			return nil, fmt.Errorf("%w: repairing floating content-addressed or impure derivations", store.ErrUnsupported)
		}
		ok, err := b.store.IsValidPath(ctx, p)
		if err != nil {
			return nil, err
		}
		if ok {
			if ok, err = b.contentsGood(ctx, r, g, p); err != nil {
				return nil, err
			}
		}
		if !ok {
			bad[p] = true
		}
	}
	return bad, nil
}

// repairClosure repairs the derivations whose outputs in the closure of
// g's (good) outputs are bad, as Nix's DerivationGoal::repairClosure.
func (b *Builder) repairClosure(g *goal, r *request) (Status, error) {
	ctx := g.ctx
	st := b.store
	own := map[storepath.StorePath]bool{}
	var outs []storepath.StorePath
	for _, o := range g.drv.Outputs {
		own[o.Path] = true
		outs = append(outs, o.Path)
	}
	closure, err := st.QueryClosure(ctx, outs, false)
	if err != nil {
		return MiscFailure, err
	}
	// Which derivation made which path: the derivations in g's closure.
	madeBy := map[storepath.StorePath]storepath.StorePath{}
	if ok, err := st.IsValidPath(ctx, g.drvPath); err != nil {
		return MiscFailure, err
	} else if ok {
		drvs, err := st.QueryClosure(ctx, []storepath.StorePath{g.drvPath}, false)
		if err != nil {
			return MiscFailure, err
		}
		for _, d := range drvs {
			if !d.IsDerivation() {
				continue
			}
			m, err := st.QueryDerivationOutputs(ctx, d)
			if err != nil {
				return MiscFailure, err
			}
			for _, o := range m {
				madeBy[o] = d
			}
		}
	}
	failed := 0
	var subs []*goal
	defer func() {
		for _, s := range subs {
			if b.release(s) {
				<-s.done
			}
		}
	}()
	for _, p := range closure {
		if own[p] {
			continue
		}
		good, err := b.contentsGood(ctx, r, g, p)
		if err != nil {
			return MiscFailure, err
		}
		if good {
			continue
		}
		g.logf(false, "found corrupted or missing path '%s' in the output closure of '%s'", p, g.drvPath)
		d, ok := madeBy[p]
		if !ok {
			failed++ // no substituters
			continue
		}
		drv, err := b.readDrv(ctx, d)
		if err != nil {
			return MiscFailure, err
		}
		subs = append(subs, b.acquire(r, d, drv, Repair, nil))
	}
	for _, s := range subs {
		select {
		case <-s.done:
		case <-ctx.Done():
			return MiscFailure, ctx.Err()
		}
		if !s.status.Success() {
			failed++
		}
	}
	if failed > 0 {
		return MiscFailure, fmt.Errorf("some paths in the output closure of derivation '%s' could not be repaired", hl(g.drvPath.String()))
	}
	return AlreadyValid, nil
}

// compareOutputs is the end of a check: each new output against the valid
// one, as Nix 2.8's registerOutputs in check mode. srcs are where the new
// outputs are; delayed is a fixed output's hash mismatch.
func (b *Builder) compareOutputs(ctx context.Context, g *goal, r *request, dirs *buildDirs, infos []*store.PathInfo, srcs []string, delayed error) (Status, error) {
	st := b.store
	for i, info := range infos {
		old, err := st.QueryPathInfo(ctx, info.Path)
		if errors.Is(err, store.ErrNotFound) {
			continue // a fixed output that got another hash
		}
		if err != nil {
			return MiscFailure, err
		}
		real := st.RealPath(info.Path)
		if old.NarHash != info.NarHash {
			if !r.opts.KeepFailed && !r.opts.RunDiffHook {
				return NotDeterministic, fmt.Errorf("derivation '%s' may not be deterministic: output '%s' differs",
					hl(g.drvPath.String()), hl(real))
			}
			dst := real + checkSuffix
			if err := removeAll(dst); err != nil {
				return MiscFailure, err
			}
			if err := moveTree(srcs[i], dst); err != nil {
				return MiscFailure, fmt.Errorf("keep output %s: %w", dst, err)
			}
			b.runDiffHook(ctx, g, r, dirs, info.Path.String(), dst)
			return NotDeterministic, fmt.Errorf("derivation '%s' may not be deterministic: output '%s' differs from '%s'",
				hl(g.drvPath.String()), hl(real), hl(dst))
		}
		// Built again and the same: ultimately trusted.
		if !old.Ultimate {
			old = old.Clone()
			old.Ultimate = true
			// Signed now, as Nix signs a path it has built and checked.
			if err := signOutputs([]*store.PathInfo{old}, r.opts.SecretKeyFiles); err != nil {
				return MiscFailure, err
			}
			if err := st.RegisterValidPaths(ctx, []*store.PathInfo{old}); err != nil {
				return MiscFailure, err
			}
		}
	}
	if delayed != nil {
		return OutputRejected, delayed
	}
	return Built, nil
}

// runDiffHook runs diff-hook, with run-diff-hook set, on two outputs that
// differ, as Nix 2.8: found through PATH, with a and b, the .drv and the
// build dir as arguments, as the builder's ids, in "/". Its stdout is
// logged as an error; it failing is logged too, and changes nothing else.
func (b *Builder) runDiffHook(ctx context.Context, g *goal, r *request, dirs *buildDirs, a, bPath string) {
	hook := r.opts.DiffHook
	if hook == "" || !r.opts.RunDiffHook {
		return
	}
	cmd := exec.CommandContext(ctx, hook, a, bPath, g.drvPath.String(), dirs.build)
	cmd.Dir = "/"
	cmd.Stderr = os.Stderr
	if dirs.uid != os.Geteuid() || dirs.gid != os.Getegid() {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(dirs.uid), Gid: uint32(dirs.gid)}}
	}
	var out bytes.Buffer
	cmd.Stdout = &limitedWriter{w: &out, n: maxPreBuildHookOutput}
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		g.logf(false, "diff hook execution failed: diff-hook program '%s' %s", hook, statusString(ee.ExitCode(), exitSignal(ee)))
		return
	case err != nil:
		g.logf(false, "diff hook execution failed: %v", err)
		return
	}
	if text := strings.TrimRight(out.String(), " \t\n\r"); text != "" {
		g.logf(false, "%s", text)
	}
}

// limitedWriter keeps the first n bytes written to it and drops the rest.
type limitedWriter struct {
	w io.Writer
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}

// checkSuffix names the kept output of a check that differs.
const checkSuffix = ".check"

// RepairPath restores the valid path p by rebuilding its deriver in Repair
// mode, as Nix 2.8's LocalStore::repairPath does when no substituter has p
// (none does here). It is local.VerifyOptions.RepairPath's builder.
func (b *Builder) RepairPath(ctx context.Context, p storepath.StorePath, opts Options, log Logger) error {
	info, err := b.store.QueryPathInfo(ctx, p)
	if err != nil {
		return err
	}
	if info.Deriver.IsZero() {
		return fmt.Errorf("cannot repair path '%s'", hl(p.String()))
	}
	if ok, err := b.store.IsValidPath(ctx, info.Deriver); err != nil {
		return err
	} else if !ok {
		return fmt.Errorf("cannot repair path '%s'", hl(p.String()))
	}
	opts.Mode = Repair
	res, err := b.Build(ctx, []Target{{Drv: info.Deriver}}, opts, log)
	if err != nil {
		return err
	}
	if !res[0].Status.Success() {
		return res[0].Err
	}
	return nil
}

// compareRound handles the rounds of repeat, as Nix 2.8: each round's
// outputs are compared with the last round's; a difference fails the build
// (enforce-determinism) or is logged and this round's outputs are kept.
// The outputs of round 1 are kept at OUT.check with keep-failed; the last
// round removes them. done says the round ends here (without registering).
func (b *Builder) compareRound(ctx context.Context, g *goal, r *request, dirs *buildDirs, infos []*store.PathInfo, srcs []string) (Status, error, bool) {
	st := b.store
	if g.round > 1 {
		for i, info := range infos {
			if i < len(g.prev) && sameOutput(g.prev[i], info) {
				continue
			}
			g.nonDet = true
			prev := info.Path.String() + checkSuffix
			var err error
			if _, serr := os.Lstat(st.RealPath(info.Path) + checkSuffix); serr == nil && (r.opts.KeepFailed || r.opts.RunDiffHook) {
				err = fmt.Errorf("output '%s' of '%s' differs from '%s' from previous round", hl(info.Path.String()), hl(g.drvPath.String()), hl(prev))
			} else {
				err = fmt.Errorf("output '%s' of '%s' differs from previous round", hl(info.Path.String()), hl(g.drvPath.String()))
			}
			b.runDiffHook(ctx, g, r, dirs, prev, info.Path.String())
			if r.opts.EnforceDeterminism {
				return NotDeterministic, err, true
			}
			g.logf(false, "%s", err.Error())
			g.round = g.rounds // enough known: this round's outputs stay
			break
		}
	}
	if g.round == 1 && g.round < g.rounds && (r.opts.KeepFailed || r.opts.RunDiffHook) {
		for i, info := range infos {
			dst := st.RealPath(info.Path) + checkSuffix
			if err := removeAll(dst); err != nil {
				return MiscFailure, err, true
			}
			if err := moveTree(srcs[i], dst); err != nil {
				return MiscFailure, fmt.Errorf("keep output %s: %w", dst, err), true
			}
		}
	}
	if g.round < g.rounds {
		g.prev = infos
		return Built, nil, true
	}
	for _, info := range infos {
		if err := removeAll(st.RealPath(info.Path) + checkSuffix); err != nil {
			return MiscFailure, err, true
		}
	}
	return Built, nil, false
}

// sameOutput compares what two rounds made of one output.
func sameOutput(a, b *store.PathInfo) bool {
	return a.Path == b.Path && a.NarHash == b.NarHash && a.NarSize == b.NarSize && a.CA == b.CA &&
		slices.Equal(a.References, b.References)
}
