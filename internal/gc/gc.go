package gc

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"cairn/internal/gcroots"
	"cairn/internal/protocol"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
)

// NoLimit is MaxFreed for "no limit", as nix-store --gc sends it.
const NoLimit = math.MaxUint64

// Options says what a collection does.
type Options struct {
	Action protocol.GCAction
	// Paths are the paths to delete (DeleteSpecific).
	Paths []storepath.StorePath
	// IgnoreLiveness skips the permanent and runtime roots (temporary roots
	// still count); with DeleteSpecific it also turns keep-* off. The daemon
	// refuses it, as Nix's does.
	IgnoreLiveness bool
	// MaxFreed stops DeleteDead once more than this many bytes are freed.
	// 0 does nothing at all (Nix's rule); NoLimit has no limit.
	MaxFreed uint64
	// KeepOutputs and KeepDerivations are the keep-outputs and
	// keep-derivations settings (Nix's defaults: false and true).
	KeepOutputs, KeepDerivations bool
	// Log receives Nix's informational messages ("deleting '…'", …); nil
	// discards them.
	Log func(string)
	// RuntimeRoots finds the runtime roots; nil means the store's way
	// (RuntimeRootsFor).
	RuntimeRoots RuntimeRoots
}

// Result is what a collection reports.
type Result struct {
	// Paths are the live paths (ReturnLive), the dead ones (ReturnDead) or
	// the deleted ones, as strings, sorted (Nix's GCResults.paths).
	Paths []string
	// BytesFreed is what deleting freed, as Nix counts it.
	BytesFreed uint64
}

// AliveError: DeleteSpecific was asked to delete a live path.
type AliveError struct{ Path storepath.StorePath }

func (e *AliveError) Error() string {
	return fmt.Sprintf("Cannot delete path '%s' since it is still alive. To find out why, use: nix-store --query --roots", e.Path)
}

// collector is one collection.
type collector struct {
	st    *local.Store
	roots *gcroots.Roots
	opts  Options
	g     *local.GCGraph
	srv   *rootServer
	res   *Result
	sw    *local.Sweeper

	rootSet map[storepath.StorePath]bool // permanent, runtime and temporary roots
	alive   []bool                       // by graph index
	dead    []bool                       // deleted (or, when listing, found dead)
	// referrers and derivers are the graph's reverse edges, made on demand.
	referrers, derivers [][]int32
}

func (c *collector) logf(format string, args ...any) {
	if c.opts.Log != nil {
		c.opts.Log(fmt.Sprintf(format, args...))
	}
}

// errLimit ends a sweep once MaxFreed is passed.
var errLimit = errors.New("limit reached")

// Collect runs one collection of st, whose roots are roots.
func Collect(ctx context.Context, st *local.Store, roots *gcroots.Roots, opts Options) (*Result, error) {
	c := &collector{st: st, roots: roots, opts: opts, res: &Result{}, rootSet: map[storepath.StorePath]bool{}}
	shouldDelete := opts.Action == protocol.GCDeleteDead || opts.Action == protocol.GCDeleteSpecific
	switch opts.Action {
	case protocol.GCReturnLive, protocol.GCReturnDead, protocol.GCDeleteDead, protocol.GCDeleteSpecific:
	default:
		return nil, fmt.Errorf("collect garbage: unknown action %d", opts.Action)
	}
	if opts.Action == protocol.GCDeleteSpecific && opts.IgnoreLiveness {
		c.opts.KeepOutputs, c.opts.KeepDerivations = false, false
	}
	if shouldDelete {
		st.RemoveReserved()
	}
	lock, err := st.LockGC(ctx, func() { c.logf("waiting for the big garbage collector lock...") })
	if err != nil {
		return nil, fmt.Errorf("collect garbage: %w", err)
	}
	defer lock.Close()
	c.srv, err = startServer(roots.StateDir(), st.StoreDir(), opts.Log)
	if err != nil {
		return nil, fmt.Errorf("collect garbage: roots socket: %w", err)
	}
	defer c.srv.close()
	c.sw = st.NewSweeper()
	defer c.sw.Close()

	c.logf("finding garbage collector roots...")
	if c.g, err = st.LoadGCGraph(ctx); err != nil {
		return nil, fmt.Errorf("collect garbage: %w", err)
	}
	if err := c.findRoots(ctx); err != nil {
		return nil, fmt.Errorf("collect garbage: %w", err)
	}
	c.mark()
	c.dead = make([]bool, len(c.g.Paths))

	switch {
	case opts.Action == protocol.GCDeleteSpecific:
		err = c.deleteSpecific(ctx)
	case opts.MaxFreed > 0:
		if shouldDelete {
			c.logf("deleting garbage...")
		} else {
			c.logf("determining live/dead paths...")
		}
		err = c.sweep(ctx, shouldDelete)
		if errors.Is(err, errLimit) {
			err = nil
		}
	}
	slices.Sort(c.res.Paths)
	c.res.Paths = slices.Compact(c.res.Paths)
	if err != nil {
		return c.res, err
	}
	if !shouldDelete {
		return c.res, nil
	}
	c.logf("deleting unused links...")
	saved, err := st.RemoveUnusedLinks(ctx)
	if err != nil {
		return c.res, fmt.Errorf("collect garbage: %w", err)
	}
	c.logf("note: currently hard linking saves %.2f MiB", float64(saved)/(1024*1024))
	return c.res, nil
}

// findRoots fills rootSet: the permanent and runtime roots (unless
// IgnoreLiveness) and the temporary ones, whose hash parts the server keeps.
func (c *collector) findRoots(ctx context.Context) error {
	valid := func(p storepath.StorePath) bool { _, ok := c.g.Index[p]; return ok }
	found, err := c.roots.Find(ctx, gcroots.FindOptions{Valid: valid, Log: c.opts.Log})
	if err != nil {
		return err
	}
	for _, r := range found {
		temp := strings.HasPrefix(r.Link, "{temp:")
		if temp {
			c.srv.addTemp(r.Path.HashPart())
		} else if c.opts.IgnoreLiveness {
			continue
		}
		c.rootSet[r.Path] = true
	}
	if c.opts.IgnoreLiveness {
		return nil
	}
	runtime := c.opts.RuntimeRoots
	if runtime == nil {
		runtime = RuntimeRootsFor(c.st.Config(), false)
	}
	rs, err := runtime(ctx, c.st.StoreDir())
	if err != nil {
		return fmt.Errorf("find runtime roots: %w", err)
	}
	for _, r := range RuntimeRootsOf(rs, c.st.StoreDir(), valid) {
		c.rootSet[r.Path] = true
	}
	return nil
}

// mark sets alive for the closure of the roots (with keep-*'s edges).
func (c *collector) mark() {
	g := c.g
	c.alive = make([]bool, len(g.Paths))
	var stack []int32
	push := func(i int32) {
		if i >= 0 && !c.alive[i] {
			c.alive[i] = true
			stack = append(stack, i)
		}
	}
	for p := range c.rootSet {
		if i, ok := g.Index[p]; ok {
			push(i)
		}
	}
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, j := range g.Refs[i] {
			push(j)
		}
		if c.opts.KeepDerivations {
			push(g.Deriver[i])
		}
		if c.opts.KeepOutputs && g.Paths[i].IsDerivation() {
			for _, j := range g.Outputs[i] {
				push(j)
			}
		}
	}
}

// markAlive marks i and its closure alive: a temporary root for it arrived
// during the sweep, or it turned out to be in use.
func (c *collector) markAlive(i int32) {
	g := c.g
	stack := []int32{i}
	c.alive[i] = true
	for len(stack) > 0 {
		k := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		next := slices.Clone(g.Refs[k])
		if c.opts.KeepDerivations && g.Deriver[k] >= 0 {
			next = append(next, g.Deriver[k])
		}
		if c.opts.KeepOutputs && g.Paths[k].IsDerivation() {
			next = append(next, g.Outputs[k]...)
		}
		for _, j := range next {
			if !c.alive[j] {
				c.alive[j] = true
				stack = append(stack, j)
			}
		}
	}
}

// order returns the dead valid paths, referrers before what they refer to,
// visiting them from starts (the store dir's order, as Nix does), then the
// rest.
func (c *collector) order(deadSet []bool, starts []int32) []int32 {
	c.reverse()
	g := c.g
	var out []int32
	state := make([]uint8, len(g.Paths)) // 0 new, 1 on the stack, 2 done
	type frame struct {
		i int32
		k int
	}
	var stack []frame
	visit := func(start int32) {
		if !deadSet[start] || state[start] != 0 {
			return
		}
		stack = append(stack[:0], frame{i: start})
		state[start] = 1
		for len(stack) > 0 {
			f := &stack[len(stack)-1]
			refs := c.referrers[f.i]
			if f.k < len(refs) {
				j := refs[f.k]
				f.k++
				if deadSet[j] && state[j] == 0 {
					state[j] = 1
					stack = append(stack, frame{i: j})
				}
				continue
			}
			// Post-order over referrers: every referrer is out already.
			state[f.i] = 2
			out = append(out, f.i)
			stack = stack[:len(stack)-1]
		}
	}
	for _, i := range starts {
		visit(i)
	}
	for i := range g.Paths {
		visit(int32(i))
	}
	return out
}

// sweep lists (delete false) or deletes the dead: valid paths that are not
// alive, and the store dir's other entries no temporary root names.
func (c *collector) sweep(ctx context.Context, del bool) error {
	g := c.g
	names, err := c.st.StoreDirEntries()
	if err != nil {
		return fmt.Errorf("collect garbage: %w", err)
	}
	dir := c.st.StoreDir()
	// Entries that are not valid paths.
	var junk []string
	var liveJunk []string
	var starts []int32
	for _, n := range names {
		p, err := dir.FromBase(n)
		if err != nil {
			junk = append(junk, n)
			continue
		}
		if i, ok := g.Index[p]; ok {
			starts = append(starts, i)
			continue
		}
		if c.rootSet[p] || c.srv.isTemp(p.HashPart()) {
			liveJunk = append(liveJunk, p.String())
			continue
		}
		junk = append(junk, n)
	}
	deadSet := make([]bool, len(g.Paths))
	for i := range g.Paths {
		deadSet[i] = !c.alive[i] && !c.srv.isTemp(g.Paths[i].HashPart())
	}
	switch c.opts.Action {
	case protocol.GCReturnLive:
		for i, p := range g.Paths {
			if !deadSet[i] {
				c.res.Paths = append(c.res.Paths, p.String())
			}
		}
		c.res.Paths = append(c.res.Paths, liveJunk...)
		return nil
	case protocol.GCReturnDead:
		for i, p := range g.Paths {
			if deadSet[i] {
				c.res.Paths = append(c.res.Paths, p.String())
			}
		}
		for _, n := range junk {
			c.res.Paths = append(c.res.Paths, string(dir)+"/"+n)
		}
		return nil
	}
	if err := c.deleteValid(ctx, c.order(deadSet, starts)); err != nil {
		return err
	}
	for _, n := range junk {
		if err := ctx.Err(); err != nil {
			return err
		}
		if p, err := dir.FromBase(n); err == nil {
			if !c.srv.claim(p.HashPart()) {
				continue // a temporary root arrived
			}
		}
		c.logf("deleting '%s'", string(dir)+"/"+n)
		freed, err := c.sw.DeleteEntry(ctx, n)
		c.srv.release()
		if err != nil {
			return fmt.Errorf("collect garbage: %w", err)
		}
		if err := c.freed(string(dir)+"/"+n, freed); err != nil {
			return err
		}
	}
	return nil
}

// sweepBatch is how many paths one transaction invalidates; with a limit on
// the bytes freed, one (Nix stops right after the path that passes it).
const sweepBatch = 256

// deleteValid deletes the valid paths order (referrers first), in batches,
// except those for which a temporary root arrived meanwhile, or which gained
// a referrer: those stay, and so does what they refer to.
func (c *collector) deleteValid(ctx context.Context, order []int32) error {
	n := sweepBatch
	if c.opts.Action == protocol.GCDeleteDead && c.opts.MaxFreed != NoLimit {
		n = 1
	}
	for len(order) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		batch := order[:min(n, len(order))]
		order = order[len(batch):]
		var idx []int32
		var ps []storepath.StorePath
		for _, i := range batch {
			if c.alive[i] {
				continue // a referrer above stayed
			}
			if !c.srv.claim(c.g.Paths[i].HashPart()) {
				c.markAlive(i)
				continue
			}
			idx = append(idx, i)
			ps = append(ps, c.g.Paths[i])
		}
		if len(ps) == 0 {
			continue
		}
		res, err := c.sw.DeleteValid(ctx, ps)
		c.srv.release()
		if err != nil {
			return fmt.Errorf("collect garbage: %w", err)
		}
		for k, i := range idx {
			if res[k].Err != nil {
				c.markAlive(i)
				continue
			}
			c.logf("deleting '%s'", ps[k])
			c.dead[i] = true
			if err := c.freed(ps[k].String(), res[k].Freed); err != nil {
				return err
			}
		}
	}
	return nil
}

// freed records a deletion and stops the sweep past MaxFreed.
func (c *collector) freed(path string, n uint64) error {
	c.res.Paths = append(c.res.Paths, path)
	c.res.BytesFreed += n
	if c.opts.Action == protocol.GCDeleteDead && c.res.BytesFreed > c.opts.MaxFreed {
		c.logf("deleted more than %d bytes; stopping", c.opts.MaxFreed)
		return errLimit
	}
	return nil
}

// reverse makes the reverse edges of the graph.
func (c *collector) reverse() {
	if c.referrers != nil {
		return
	}
	g := c.g
	c.referrers = make([][]int32, len(g.Paths))
	c.derivers = make([][]int32, len(g.Paths))
	for i, refs := range g.Refs {
		for _, j := range refs {
			c.referrers[j] = append(c.referrers[j], int32(i))
		}
	}
	for i, outs := range g.Outputs {
		for _, j := range outs {
			c.derivers[j] = append(c.derivers[j], int32(i))
		}
	}
}

// deleteSpecific deletes the requested paths as Nix's gcDeleteSpecific: in
// sorted order, each with everything that would keep it alive (its
// referrers and, with keep-*, its deriver's or outputs' paths), which must
// all be requested and dead; the first path that is not stops the
// collection with an error.
func (c *collector) deleteSpecific(ctx context.Context) error {
	c.reverse()
	g := c.g
	want := map[storepath.StorePath]bool{}
	for _, p := range c.opts.Paths {
		want[p] = true
	}
	paths := slices.Clone(c.opts.Paths)
	slices.SortFunc(paths, func(a, b storepath.StorePath) int { return strings.Compare(a.Base(), b.Base()) })
	paths = slices.Compact(paths)
	for _, p := range paths {
		if err := ctx.Err(); err != nil {
			return err
		}
		i, valid := g.Index[p]
		if !valid {
			if c.rootSet[p] || !c.srv.claim(p.HashPart()) {
				return alive(p)
			}
			c.logf("deleting '%s'", p)
			freed, err := c.sw.DeleteEntry(ctx, p.Base())
			c.srv.release()
			if err != nil {
				return fmt.Errorf("collect garbage: %w", err)
			}
			c.res.Paths = append(c.res.Paths, p.String())
			c.res.BytesFreed += freed
			continue
		}
		if c.dead[i] {
			continue
		}
		// What keeps p alive: referrers, and with keep-derivations, a
		// derivation's outputs derived from it; with keep-outputs, derivers.
		group := []int32{i}
		seen := map[int32]bool{i: true}
		ok := true
		for k := 0; k < len(group) && ok; k++ {
			v := group[k]
			if c.alive[v] || c.srv.isTemp(g.Paths[v].HashPart()) || !want[g.Paths[v]] {
				ok = false
				break
			}
			next := slices.Clone(c.referrers[v])
			if c.opts.KeepDerivations && g.Paths[v].IsDerivation() {
				for _, o := range g.Outputs[v] {
					if g.Deriver[o] == v {
						next = append(next, o)
					}
				}
			}
			if c.opts.KeepOutputs {
				next = append(next, c.derivers[v]...)
			}
			for _, j := range next {
				if !seen[j] && !c.dead[j] {
					seen[j] = true
					group = append(group, j)
				}
			}
		}
		if !ok {
			return alive(p)
		}
		set := make([]bool, len(g.Paths))
		for _, j := range group {
			set[j] = true
		}
		if err := c.deleteValid(ctx, c.order(set, []int32{i})); err != nil {
			return err
		}
		if !c.dead[i] {
			return alive(p)
		}
	}
	return nil
}

func alive(p storepath.StorePath) error { return &AliveError{Path: p} }
