package daemon

import (
	"sync"

	"cairn/internal/protocol"
	"cairn/internal/wire"
)

// maxPending bounds the messages queued while no operation runs; older ones
// are dropped beyond it.
const maxPending = 1024

// connLogger is a connection's stderr channel as Nix's TunnelLogger keeps
// it: between an op's start (startWork) and its end (last or fail) messages go
// straight to the client; at other times they are queued and sent when the
// next op starts. Log lines above the client's verbosity (SetOptions) are
// dropped; activities and results are not (the client filters those).
// It is safe for concurrent use.
type connLogger struct {
	mu        sync.Mutex
	w         *wire.Writer
	l         *protocol.Logger
	inWork    bool
	pending   []func(*protocol.Logger)
	verbosity protocol.Verbosity
	nextID    uint64
}

func newConnLogger(w *wire.Writer, p protocol.Params) *connLogger {
	return &connLogger{w: w, l: protocol.NewLogger(w, p), verbosity: protocol.LvlInfo, nextID: 1}
}

func (l *connLogger) emit(f func(*protocol.Logger)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.inWork {
		f(l.l)
		l.l.Flush()
		return
	}
	if len(l.pending) >= maxPending {
		l.pending = l.pending[1:]
	}
	l.pending = append(l.pending, f)
}

// Log sends a log line at level (text without its final newline).
func (l *connLogger) Log(level protocol.Verbosity, text string) {
	l.mu.Lock()
	drop := level > l.verbosity
	l.mu.Unlock()
	if drop {
		return
	}
	l.emit(func(pl *protocol.Logger) { pl.Log(text + "\n") })
}

// Warn logs a warning as Nix prints one.
func (l *connLogger) Warn(text string) {
	l.Log(protocol.LvlWarn, "\x1b[35;1mwarning:\x1b[0m "+text)
}

// StartActivity starts an activity and returns its id.
func (l *connLogger) StartActivity(level protocol.Verbosity, typ protocol.ActivityType, text string, fields ...protocol.Field) uint64 {
	l.mu.Lock()
	id := l.nextID
	l.nextID++
	l.mu.Unlock()
	a := protocol.Activity{ID: id, Level: level, Type: typ, Text: text, Fields: fields}
	l.emit(func(pl *protocol.Logger) { pl.StartActivity(a) })
	return id
}

// StopActivity ends an activity.
func (l *connLogger) StopActivity(id uint64) {
	l.emit(func(pl *protocol.Logger) { pl.StopActivity(id) })
}

func (l *connLogger) setVerbosity(v protocol.Verbosity) {
	l.mu.Lock()
	l.verbosity = v
	l.mu.Unlock()
}

// startWork opens the channel and sends what was queued.
func (l *connLogger) startWork() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.inWork = true
	for _, f := range l.pending {
		f(l.l)
	}
	l.pending = nil
	return l.l.Flush()
}

func (l *connLogger) working() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.inWork
}

// last ends the channel successfully; the reply follows.
func (l *connLogger) last() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.inWork = false
	return l.l.Last()
}

// lastBuffered ends the channel without flushing: the reply follows in the same write.
func (l *connLogger) lastBuffered() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.inWork = false
	return l.l.LastBuffered()
}

// fail ends the channel with an error.
func (l *connLogger) fail(e *protocol.Error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.inWork = false
	return l.l.Error(e)
}

// locked runs f with the channel to itself (for STDERR_READ/WRITE exchanges).
func (l *connLogger) locked(f func(w *wire.Writer) error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return f(l.w)
}
