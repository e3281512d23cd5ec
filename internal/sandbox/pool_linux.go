package sandbox

import (
	"context"
	"encoding/json"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultIdle is how long a Pool keeps an unused init.
const DefaultIdle = 30 * time.Second

// Pool starts sandboxes as Start does, but keeps one init of each shape (ids,
// cgroup parent) started ahead of need. Starting init is most of a sandbox's
// cost: cloning the caller (a full fork, since the namespaces include a user
// namespace), executing the binary and starting its runtime. A pooled init has
// done all that and waits for its spec, which carries the log's descriptor, so
// a build pays only for the mounts and the command's exec, while the next
// init starts on another core during the build. A spare that waits longer
// than Idle is dropped.
//
// An init knows nothing about its build until the spec arrives: it holds no
// mounts, no ids but the shape's, and reads only from its channel.
type Pool struct {
	Idle time.Duration // 0: DefaultIdle

	mu       sync.Mutex
	spares   map[string]*spare
	starting map[string]bool
	closed   bool
}

type spare struct {
	p     *Process
	ch    *os.File
	timer *time.Timer
}

// shape is what an init must be started with: everything spawn reads.
type shape struct {
	Init      string   `json:"init"`
	UIDMap    []IDMap  `json:"uid_map"`
	GIDMap    []IDMap  `json:"gid_map"`
	Setgroups bool     `json:"setgroups"`
	Cgroup    Cgroup   `json:"cgroup"`
	Args      []string `json:"args"`
}

func shapeOf(spec *Spec) string {
	b, _ := json.Marshal(shape{Init: InitPath, Args: InitArgs, UIDMap: spec.UIDMap, GIDMap: spec.GIDMap,
		Setgroups: spec.Setgroups, Cgroup: spec.Cgroup})
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
	defer pl.refill(key, spec)
	if sp == nil {
		p, ch, err := spawn(context.Background(), spec, nil)
		if err != nil {
			return nil, err
		}
		sp = &spare{p: p, ch: ch}
	}
	defer sp.ch.Close()
	p := sp.p
	p.ctx = ctx
	p.unwatch = context.AfterFunc(ctx, func() { p.Kill() })
	return p.begin(ctx, spec, sp.ch, payload, log)
}

// take removes and returns a live spare of the shape, or nil.
func (pl *Pool) take(key string) *spare {
	pl.mu.Lock()
	sp := pl.spares[key]
	delete(pl.spares, key)
	pl.mu.Unlock()
	if sp == nil {
		return nil
	}
	sp.timer.Stop()
	if !alive(sp.ch) {
		go sp.drop()
		return nil
	}
	return sp
}

// alive reports whether init is still at the other end of ch: a dead one's
// end reads as closed.
func alive(ch *os.File) bool {
	fds := []unix.PollFd{{Fd: int32(ch.Fd()), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n == 0
}

// refill starts a spare of the shape in the background unless one is there
// or on its way.
func (pl *Pool) refill(key string, spec *Spec) {
	pl.mu.Lock()
	if pl.closed || pl.spares[key] != nil || pl.starting[key] {
		pl.mu.Unlock()
		return
	}
	if pl.starting == nil {
		pl.starting = map[string]bool{}
	}
	pl.starting[key] = true
	pl.mu.Unlock()
	shaped := &Spec{UIDMap: spec.UIDMap, GIDMap: spec.GIDMap, Setgroups: spec.Setgroups, Cgroup: spec.Cgroup}
	go func() {
		p, ch, err := spawn(context.Background(), shaped, nil)
		pl.mu.Lock()
		defer pl.mu.Unlock()
		delete(pl.starting, key)
		if err != nil {
			return
		}
		sp := &spare{p: p, ch: ch}
		if pl.closed || pl.spares[key] != nil {
			go sp.drop()
			return
		}
		if pl.spares == nil {
			pl.spares = map[string]*spare{}
		}
		idle := pl.Idle
		if idle == 0 {
			idle = DefaultIdle
		}
		sp.timer = time.AfterFunc(idle, func() {
			pl.mu.Lock()
			if pl.spares[key] != sp {
				pl.mu.Unlock()
				return
			}
			delete(pl.spares, key)
			pl.mu.Unlock()
			sp.drop()
		})
		pl.spares[key] = sp
	}()
}

// drop ends an unused init.
func (sp *spare) drop() {
	sp.ch.Close()
	sp.p.Kill()
	sp.p.Wait()
}

// Close ends the spares; Start still works afterwards, without them.
func (pl *Pool) Close() {
	pl.mu.Lock()
	pl.closed = true
	spares := pl.spares
	pl.spares = nil
	pl.mu.Unlock()
	for _, sp := range spares {
		sp.timer.Stop()
		sp.drop()
	}
}
