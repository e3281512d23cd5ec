package daemon

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"cairn/internal/build"
	"cairn/internal/protocol"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
)

// builders holds one build.Builder per Server, made on first use, so that
// every connection of a daemon shares goals (one build per output).
var builders sync.Map // *Server → *builderOnce

type builderOnce struct {
	once sync.Once
	b    *build.Builder
	err  error
}

// builder returns the daemon's Builder; building needs a local store.
func (c *conn) builder() (*build.Builder, error) {
	st, ok := c.s.Store.(*local.Store)
	if !ok {
		return nil, errNotSupported("building")
	}
	v, _ := builders.LoadOrStore(c.s, &builderOnce{})
	bo := v.(*builderOnce)
	bo.once.Do(func() {
		// Build users and cgroups are the daemon's settings alone: no
		// client's reach them.
		var cfg build.Config
		if c.s.Settings != nil {
			cfg = build.ConfigFrom(c.s.Settings)
		}
		cfg.ServeRecursive = c.s.ServeRecursive
		bo.b, bo.err = build.NewWithConfig(st, cfg)
	})
	return bo.b, bo.err
}

// Close ends what a Server that is not serving (one used only for
// ServeRecursive, say) keeps: its Builder's spare sandboxes.
func (s *Server) Close() { s.closeBuilder() }

// closeBuilder ends what the Server's Builder keeps between builds.
func (s *Server) closeBuilder() {
	if v, ok := builders.LoadAndDelete(s); ok {
		if bo := v.(*builderOnce); bo.b != nil {
			bo.b.Close()
		}
	}
}

// buildOptions are the daemon's settings with the client's on top: its
// overrides (through c.settings) and the fixed SetOptions fields, which Nix
// 2.8 applies for every client.
func (c *conn) buildOptions() build.Options {
	o := build.OptionsFrom(&c.settings)
	o.Subst = c.substConfig()
	co := c.options
	if c.optionsSent() {
		o.KeepFailed = co.KeepFailed
		o.KeepGoing = co.KeepGoing
		o.MaxJobs = int(min(co.MaxBuildJobs, 1<<16))
		o.MaxSilentTime = secondsOf(co.MaxSilentTime)
		o.Cores = int(min(co.BuildCores, 1<<16))
		o.Fallback = co.TryFallback
	}
	return o
}

// maxSeconds bounds a duration a client sends, in seconds (about 68 years).
const maxSeconds = 1 << 31

func secondsOf(n uint64) time.Duration {
	return time.Duration(min(n, maxSeconds)) * time.Second
}

// result sends a STDERR_RESULT.
func (l *connLogger) result(id uint64, typ protocol.ResultType, fields ...protocol.Field) {
	l.emit(func(pl *protocol.Logger) { pl.Result(id, typ, fields) })
}

// startChild starts an activity under parent.
func (l *connLogger) startChild(level protocol.Verbosity, typ protocol.ActivityType, text string, parent uint64, fields ...protocol.Field) uint64 {
	l.mu.Lock()
	id := l.nextID
	l.nextID++
	l.mu.Unlock()
	a := protocol.Activity{ID: id, Level: level, Type: typ, Text: text, Fields: fields, Parent: parent}
	l.emit(func(pl *protocol.Logger) { pl.StartActivity(a) })
	return id
}

// buildLogger turns a request's builds into Nix's activities: Realise,
// Builds (with Progress and SetExpected) and CopyPaths for the request, a
// Build activity per build whose log lines are BuildLogLine results, and
// what builders say with "@nix {…}" lines.
type buildLogger struct {
	c                          *conn
	realise, builds, copyPaths uint64
	mu                         sync.Mutex
	lastProgress               [4]int
	counts                     substCounts
}

func newBuildLogger(c *conn) *buildLogger {
	l := &buildLogger{c: c}
	l.realise = c.log.StartActivity(protocol.LvlError, protocol.ActRealise, "")
	l.builds = c.log.StartActivity(protocol.LvlError, protocol.ActBuilds, "")
	l.copyPaths = c.log.StartActivity(protocol.LvlError, protocol.ActCopyPaths, "")
	return l
}

func (l *buildLogger) stop() {
	l.c.log.StopActivity(l.copyPaths)
	l.c.log.StopActivity(l.builds)
	l.c.log.StopActivity(l.realise)
}

func (l *buildLogger) Progress(done, expected, running, failed int) {
	l.mu.Lock()
	p := [4]int{done, expected, running, failed}
	same := p == l.lastProgress
	l.lastProgress = p
	l.mu.Unlock()
	if same {
		return
	}
	l.c.log.result(l.builds, protocol.ResSetExpected, protocol.IntField(uint64(protocol.ActBuild)), protocol.IntField(uint64(expected)))
	l.c.log.result(l.builds, protocol.ResProgress, protocol.IntField(uint64(done)), protocol.IntField(uint64(expected)),
		protocol.IntField(uint64(running)), protocol.IntField(uint64(failed)))
}

func (l *buildLogger) Error(msg string) {
	if !strings.HasPrefix(msg, "note: ") {
		msg = "\x1b[31;1merror:\x1b[0m " + msg
	}
	l.c.log.Log(protocol.LvlError, msg)
}

func (l *buildLogger) BuildStarted(drv storepath.StorePath) build.BuildLog {
	return l.BuildStartedMode(drv, build.Normal, 1, 1)
}

// BuildStartedMode starts the Build activity with Nix 2.8's text for the
// mode and round.
func (l *buildLogger) BuildStartedMode(drv storepath.StorePath, m build.Mode, round, rounds int) build.BuildLog {
	text := fmt.Sprintf("building '%s'", drv)
	switch {
	case m == build.Repair:
		text = fmt.Sprintf("repairing outputs of '%s'", drv)
	case m == build.Check:
		text = fmt.Sprintf("checking outputs of '%s'", drv)
	case rounds > 1:
		text = fmt.Sprintf("building '%s' (round %d/%d)", drv, round, rounds)
	}
	id := l.c.log.StartActivity(protocol.LvlInfo, protocol.ActBuild, text,
		protocol.StringField(drv.String()), protocol.StringField(""), protocol.IntField(uint64(round)), protocol.IntField(uint64(rounds)))
	return &buildActivity{c: l.c, id: id, children: map[uint64]uint64{}}
}

// BuildStartedOn starts the Build activity of a build on a remote builder.
func (l *buildLogger) BuildStartedOn(drv storepath.StorePath, machine string) build.BuildLog {
	id := l.c.log.StartActivity(protocol.LvlInfo, protocol.ActBuild, fmt.Sprintf("building '%s' on '%s'", drv, machine),
		protocol.StringField(drv.String()), protocol.StringField(machine), protocol.IntField(1), protocol.IntField(1))
	return &buildActivity{c: l.c, id: id, children: map[uint64]uint64{}}
}

// StartActivity starts one of Nix's activities other than a build (copying
// paths to or from a remote builder), at the info level as Nix's.
func (l *buildLogger) StartActivity(typ protocol.ActivityType, text string) func() {
	id := l.c.log.StartActivity(protocol.LvlInfo, typ, text)
	return func() { l.c.log.StopActivity(id) }
}

// Print logs a message as Nix's printError or printInfo.
func (l *buildLogger) Print(msg string, info bool) {
	lvl := protocol.LvlError
	if info {
		lvl = protocol.LvlInfo
	}
	l.c.log.Log(lvl, msg)
}

// buildActivity is one build's Build activity.
type buildActivity struct {
	c        *conn
	id       uint64
	mu       sync.Mutex
	children map[uint64]uint64 // the builder's activity ids → ours
}

func (a *buildActivity) Line(text string) {
	a.c.log.result(a.id, protocol.ResBuildLogLine, protocol.StringField(text))
}

// maxChildren bounds the activities one builder may keep open.
const maxChildren = 1024

// Message handles an "@nix" message as Nix's handleJSONLogMessage does for
// an untrusted builder: only file-transfer activities may be started.
func (a *buildActivity) Message(text string) {
	var m struct {
		Action string            `json:"action"`
		ID     uint64            `json:"id"`
		Type   uint64            `json:"type"`
		Level  uint64            `json:"level"`
		Text   string            `json:"text"`
		Fields []json.RawMessage `json:"fields"`
		Phase  string            `json:"phase"`
		Msg    string            `json:"msg"`
	}
	if err := json.Unmarshal([]byte(text), &m); err != nil {
		a.c.log.Log(protocol.LvlError, "\x1b[31;1merror:\x1b[0m bad JSON log message from builder: "+err.Error())
		return
	}
	switch m.Action {
	case "start":
		if protocol.ActivityType(m.Type) != protocol.ActFileTransfer {
			return
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		if _, dup := a.children[m.ID]; dup || len(a.children) >= maxChildren {
			return
		}
		a.children[m.ID] = a.c.log.startChild(protocol.Verbosity(min(m.Level, 7)), protocol.ActivityType(m.Type), m.Text, a.id, jsonFields(m.Fields)...)
	case "stop":
		a.mu.Lock()
		id, ok := a.children[m.ID]
		delete(a.children, m.ID)
		a.mu.Unlock()
		if ok {
			a.c.log.StopActivity(id)
		}
	case "result":
		a.mu.Lock()
		id, ok := a.children[m.ID]
		a.mu.Unlock()
		if ok {
			a.c.log.result(id, protocol.ResultType(m.Type), jsonFields(m.Fields)...)
		}
	case "setPhase":
		a.c.log.result(a.id, protocol.ResSetPhase, protocol.StringField(m.Phase))
	case "msg":
		a.c.log.Log(protocol.Verbosity(min(m.Level, 7)), m.Msg)
	}
}

func (a *buildActivity) Done() {
	a.mu.Lock()
	ids := a.children
	a.children = map[uint64]uint64{}
	a.mu.Unlock()
	for _, id := range ids {
		a.c.log.StopActivity(id)
	}
	a.c.log.StopActivity(a.id)
}

// jsonFields converts "@nix" fields: numbers and strings.
func jsonFields(raw []json.RawMessage) []protocol.Field {
	var fs []protocol.Field
	for _, r := range raw {
		var n uint64
		if json.Unmarshal(r, &n) == nil {
			fs = append(fs, protocol.IntField(n))
			continue
		}
		var s string
		if json.Unmarshal(r, &s) == nil {
			fs = append(fs, protocol.StringField(s))
		}
	}
	return fs
}

// buildFailure is the error BuildPaths ends with (build.Failure), after
// logging the first failure's own when there are several.
func (c *conn) buildFailure(log build.Logger, results []build.Result) error {
	failed, status, err := build.Failure(results)
	if err == nil {
		return nil
	}
	if len(failed) > 1 {
		log.Error(failed[0].Err.Error())
	}
	return &protocol.Error{Level: protocol.LvlError, Name: "Error", Message: err.Error(), Status: uint64(status)}
}

// optionsSent reports whether the client sent SetOptions (every Nix client
// does, with a non-zero useBuildHook, maxBuildJobs or buildCores).
func (c *conn) optionsSent() bool {
	co := c.options
	return co.UseBuildHook || co.MaxBuildJobs != 0 || co.BuildCores != 0
}
