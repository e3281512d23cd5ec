package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultIdle is how long a Pool keeps an unused init.
const DefaultIdle = 30 * time.Second

// DefaultSpares is how many inits of a shape a Pool keeps ready. Starting one
// takes longer than a trivial build, so with one the next build would often
// find it still starting.
const DefaultSpares = 2

// Pool starts sandboxes as Start does, but keeps inits of each shape (ids,
// cgroup parent) started ahead of need. Starting init is most of a sandbox's
// cost: cloning the caller (a full fork, since the namespaces include a user
// namespace), executing the binary and starting its runtime. A pooled init has
// done all that and waits for its spec, which carries the log's descriptor, so
// a build pays only for the mounts and the command's exec, while the next
// init starts on another core during the build. A spare that waits longer
// than Idle is dropped.
//
// An init knows only its shape until the spec arrives: it holds the mounts
// every sandbox of the shape has (see initSandbox), no ids but the shape's,
// and reads only from its channel.
type Pool struct {
	Idle   time.Duration // 0: DefaultIdle
	Spares int           // inits kept ready per shape; 0: DefaultSpares

	mu       sync.Mutex
	spares   map[string][]*spare
	starting map[string]int
	closed   bool
	adding   sync.WaitGroup // spares being started; Close waits for them
}

type spare struct {
	p     *Process
	ch    *os.File
	timer *time.Timer
}

// shape is what an init must be started with: everything spawn reads.
type shape struct {
	Early     early    `json:"early"`
	Init      string   `json:"init"`
	UIDMap    []IDMap  `json:"uid_map"`
	GIDMap    []IDMap  `json:"gid_map"`
	Setgroups bool     `json:"setgroups"`
	Cgroup    Cgroup   `json:"cgroup"`
	Args      []string `json:"args"`
	// Net: a spare of a shape with a network has its stack attached while
	// it waits (pasta takes 20-30 ms to start); only specs asking for the
	// same network get it.
	Net *Net `json:"net,omitempty"`
}

func shapeOf(spec *Spec) string {
	b, _ := json.Marshal(shape{Early: earlyOf(spec), Init: InitPath, Args: InitArgs, UIDMap: spec.UIDMap, GIDMap: spec.GIDMap,
		Setgroups: spec.Setgroups, Cgroup: spec.Cgroup, Net: spec.Net})
	return string(b)
}

// Start runs spec's command as the package's Start does, with a pooled init
// when one of spec's shape is ready.
func (pl *Pool) Start(ctx context.Context, spec *Spec) (*Process, error) {
	log, isFile := spec.Log.(*os.File)
	if (spec.Log != nil && !isFile) || spec.Cgroup.Name != "" {
		return Start(ctx, spec) // the log must travel as a descriptor; a named cgroup is one of a kind
	}
	payload, err := prepare(spec, log != nil)
	if err != nil {
		return nil, err
	}
	key := shapeOf(spec)
	sp := pl.take(key)
	pl.refill(key, spec)
	if sp == nil {
		p, ch, err := spawn(context.Background(), spec, nil)
		if err != nil {
			return nil, err
		}
		sp = &spare{p: p, ch: ch}
	}
	p, err := sp.begin(ctx, spec, payload, log)
	if errors.Is(err, errInitGone) && ctx.Err() == nil {
		// A spare that died waiting (alive saw it a moment before): once
		// more with a fresh init.
		p, ch, err := spawn(context.Background(), spec, nil)
		if err != nil {
			return nil, err
		}
		return (&spare{p: p, ch: ch}).begin(ctx, spec, payload, log)
	}
	return p, err
}

// begin hands the spare its build.
func (sp *spare) begin(ctx context.Context, spec *Spec, payload []byte, log *os.File) (*Process, error) {
	p := sp.p
	p.ctx = ctx
	p.unwatch = context.AfterFunc(ctx, func() { p.Kill() })
	return p.begin(ctx, spec, sp.ch, payload, log)
}

// take removes and returns a live spare of the shape, or nil.
func (pl *Pool) take(key string) *spare {
	for {
		pl.mu.Lock()
		list := pl.spares[key]
		if len(list) == 0 {
			pl.mu.Unlock()
			return nil
		}
		sp := list[0]
		pl.spares[key] = list[1:]
		pl.mu.Unlock()
		sp.timer.Stop()
		if alive(sp.ch) {
			return sp
		}
		go sp.drop()
	}
}

// alive reports whether init is still at the other end of ch: a dead one's
// end reads as closed.
func alive(ch *os.File) bool {
	fds := []unix.PollFd{{Fd: int32(ch.Fd()), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n == 0
}

// refill starts spares of the shape in the background, up to Spares ready
// or on their way.
func (pl *Pool) refill(key string, spec *Spec) {
	want := pl.Spares
	if want == 0 {
		want = DefaultSpares
	}
	pl.mu.Lock()
	n := 0
	if !pl.closed {
		n = want - len(pl.spares[key]) - pl.starting[key]
	}
	if n <= 0 {
		pl.mu.Unlock()
		return
	}
	if pl.starting == nil {
		pl.starting = map[string]int{}
	}
	pl.starting[key] += n
	pl.adding.Add(n)
	pl.mu.Unlock()
	shaped := spec.shape()
	for range n {
		go pl.add(key, shaped)
	}
}

// shape is the part of spec a spare is started with (see shapeOf): what
// spawn and init's early steps read.
func (spec *Spec) shape() *Spec {
	return &Spec{Root: spec.Root, RootSize: spec.RootSize, ShmSize: spec.ShmSize, Hostname: spec.Hostname, Domainname: spec.Domainname,
		UID: spec.UID, GID: spec.GID, UIDMap: spec.UIDMap, GIDMap: spec.GIDMap, Setgroups: spec.Setgroups,
		Cgroup: spec.Cgroup, Net: spec.Net}
}

// add starts one spare.
func (pl *Pool) add(key string, shaped *Spec) {
	defer pl.adding.Done()
	p, ch, err := spawn(context.Background(), shaped, nil)
	if err == nil && shaped.Net != nil {
		if p.net, err = shaped.Net.start(context.Background(), p.Pid()); err != nil {
			ch.Close()
			p.Kill()
			p.Wait()
		}
	}
	pl.mu.Lock()
	defer pl.mu.Unlock()
	pl.starting[key]--
	if err != nil {
		return
	}
	sp := &spare{p: p, ch: ch}
	if pl.closed {
		defer sp.drop() // before Done: Close waits for it
		return
	}
	if pl.spares == nil {
		pl.spares = map[string][]*spare{}
	}
	idle := pl.Idle
	if idle == 0 {
		idle = DefaultIdle
	}
	sp.timer = time.AfterFunc(idle, func() {
		pl.mu.Lock()
		list := pl.spares[key]
		i := slices.Index(list, sp)
		if i < 0 {
			pl.mu.Unlock()
			return
		}
		pl.spares[key] = slices.Delete(list, i, i+1)
		pl.mu.Unlock()
		sp.drop()
	})
	pl.spares[key] = append(pl.spares[key], sp)
}

// drop ends an unused init.
func (sp *spare) drop() {
	sp.ch.Close()
	sp.p.Kill()
	sp.p.Wait()
}

// Close ends the spares, those still starting included; Start still works
// afterwards, without them.
func (pl *Pool) Close() {
	pl.mu.Lock()
	pl.closed = true
	spares := pl.spares
	pl.spares = nil
	pl.mu.Unlock()
	for _, list := range spares {
		for _, sp := range list {
			sp.timer.Stop()
			sp.drop()
		}
	}
	pl.adding.Wait()
}
