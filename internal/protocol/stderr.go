package protocol

import (
	"errors"
	"fmt"
	"io"

	"cairn/internal/wire"
)

// Codes of the messages on the stderr channel, which the daemon sends after an
// op's arguments and before its reply.
const (
	StderrNext          = 0x6f6c6d67 // string: a log line
	StderrRead          = 0x64617461 // u64 max: the daemon wants upload data
	StderrWrite         = 0x64617416 // string: data for the client's sink
	StderrLast          = 0x616c7473 // the reply follows
	StderrError         = 0x63787470 // an error; the op failed
	StderrStartActivity = 0x53545254
	StderrStopActivity  = 0x53544f50
	StderrResult        = 0x52534c54
)

// MaxFields bounds the fields of an activity or result.
const MaxFields = 1024

// MaxTraces bounds the traces of an error.
const MaxTraces = 1024

// ActivityType is the kind of an activity.
type ActivityType uint64

const (
	ActUnknown       ActivityType = 0
	ActCopyPath      ActivityType = 100
	ActFileTransfer  ActivityType = 101
	ActRealise       ActivityType = 102
	ActCopyPaths     ActivityType = 103
	ActBuilds        ActivityType = 104
	ActBuild         ActivityType = 105 // fields: drvPath, machine, curRound, nrRounds
	ActOptimiseStore ActivityType = 106
	ActVerifyPaths   ActivityType = 107
	ActSubstitute    ActivityType = 108 // fields: path, substituter uri
	ActQueryPathInfo ActivityType = 109
	ActPostBuildHook ActivityType = 110
	ActBuildWaiting  ActivityType = 111
	ActFetchTree     ActivityType = 112
	ActFetchToStore  ActivityType = 113
)

// ResultType is the kind of an activity result.
type ResultType uint64

const (
	ResFileLinked       ResultType = 100
	ResBuildLogLine     ResultType = 101 // fields: line
	ResUntrustedPath    ResultType = 102
	ResCorruptedPath    ResultType = 103
	ResSetPhase         ResultType = 104 // fields: phase
	ResProgress         ResultType = 105 // fields: done, expected, running, failed
	ResSetExpected      ResultType = 106 // fields: actType, n
	ResPostBuildLogLine ResultType = 107
	ResFetchStatus      ResultType = 108
	ResFetchToStore     ResultType = 109
)

// A Field is an activity or result field: an integer or a string.
type Field struct {
	IsString bool
	Int      uint64
	String   string
}

// IntField and StringField make Fields.
func IntField(v uint64) Field    { return Field{Int: v} }
func StringField(s string) Field { return Field{IsString: true, String: s} }

// Activity is a STDERR_START_ACTIVITY message.
type Activity struct {
	ID     uint64
	Level  Verbosity
	Type   ActivityType
	Text   string
	Fields []Field
	Parent uint64
}

// Error is the error a daemon reports with STDERR_ERROR. Since 1.26 (Nix, not
// Guix) it is structured and carries no exit status; before, and for Guix, it
// is a message and an exit status.
type Error struct {
	Level   Verbosity
	Name    string // "Error" on the wire; kept for round trips
	Message string
	Status  uint64 // exit status (<1.26 and Guix only)
	Traces  []string
}

func (e *Error) Error() string { return e.Message }

// ErrProtocol marks a peer that broke the protocol (as opposed to an op that
// failed with an *Error).
var ErrProtocol = errors.New("protocol violation")

// Message is one message of the stderr channel. Code says which fields are set.
type Message struct {
	Code     uint64
	Text     string     // Next
	Data     []byte     // Write
	ReadLen  uint64     // Read
	Activity Activity   // StartActivity
	ID       uint64     // StopActivity, Result
	Result   ResultType // Result
	Fields   []Field    // Result
	Err      *Error     // Error
}

func readFields(r *wire.Reader) []Field {
	n := r.Int("fields", MaxFields)
	if r.Err() != nil {
		return nil
	}
	fs := make([]Field, 0, n)
	for range n {
		switch tag := r.Uint64(); tag {
		case 0:
			fs = append(fs, IntField(r.Uint64()))
		case 1:
			fs = append(fs, StringField(r.String(wire.MaxStringLen)))
		default:
			r.Failf("read field: tag %d: %w", tag, ErrProtocol)
		}
		if r.Err() != nil {
			return nil
		}
	}
	return fs
}

func writeFields(w *wire.Writer, fs []Field) {
	w.Uint64(uint64(len(fs)))
	for _, f := range fs {
		if f.IsString {
			w.Uint64(1)
			w.String(f.String)
		} else {
			w.Uint64(0)
			w.Uint64(f.Int)
		}
	}
}

// ReadError reads the payload of a STDERR_ERROR.
func ReadError(r *wire.Reader, p Params) *Error {
	if !p.nix(26) {
		e := &Error{Message: r.String(wire.MaxStringLen), Status: r.Uint64()}
		return e
	}
	e := &Error{}
	if typ := r.String(wire.MaxStringLen); r.Err() == nil && typ != "Error" {
		r.Failf("read error: type %q: %w", typ, ErrProtocol)
	}
	e.Level = Verbosity(r.Uint64())
	e.Name = r.String(wire.MaxStringLen)
	e.Message = r.String(wire.MaxStringLen)
	if pos := r.Uint64(); pos != 0 {
		r.Failf("read error: position: %w", ErrProtocol)
	}
	n := r.Int("traces", MaxTraces)
	for i := uint64(0); i < n && r.Err() == nil; i++ {
		if pos := r.Uint64(); pos != 0 {
			r.Failf("read error: trace position: %w", ErrProtocol)
		}
		e.Traces = append(e.Traces, r.String(wire.MaxStringLen))
	}
	if r.Err() != nil {
		return nil
	}
	return e
}

// WriteError writes the payload of a STDERR_ERROR in the form p calls for.
func WriteError(w *wire.Writer, p Params, e *Error) {
	if !p.nix(26) {
		w.String(e.Message)
		status := e.Status
		if status == 0 {
			status = 1
		}
		w.Uint64(status)
		return
	}
	name := e.Name
	if name == "" {
		name = "Error"
	}
	w.String("Error")
	w.Uint64(uint64(e.Level))
	w.String(name)
	w.String(e.Message)
	w.Uint64(0)
	w.Uint64(uint64(len(e.Traces)))
	for _, t := range e.Traces {
		w.Uint64(0)
		w.String(t)
	}
}

// ReadMessage reads one stderr message.
func ReadMessage(r *wire.Reader, p Params) (*Message, error) {
	m := &Message{Code: r.Uint64()}
	if err := r.Err(); err != nil {
		return nil, fmt.Errorf("read stderr: %w", eofUnexpected(err))
	}
	switch m.Code {
	case StderrLast:
	case StderrNext:
		m.Text = r.String(wire.MaxStringLen)
	case StderrWrite:
		m.Data = append([]byte(nil), r.Bytes(wire.MaxFrameSize)...)
	case StderrRead:
		m.ReadLen = r.Uint64()
	case StderrError:
		m.Err = ReadError(r, p)
	case StderrStartActivity, StderrStopActivity, StderrResult:
		if !p.nix(20) {
			return nil, fmt.Errorf("read stderr: activity message at %v: %w", p.Version, ErrProtocol)
		}
		switch m.Code {
		case StderrStartActivity:
			a := &m.Activity
			a.ID = r.Uint64()
			a.Level = Verbosity(r.Uint64())
			a.Type = ActivityType(r.Uint64())
			a.Text = r.String(wire.MaxStringLen)
			a.Fields = readFields(r)
			a.Parent = r.Uint64()
		case StderrStopActivity:
			m.ID = r.Uint64()
		case StderrResult:
			m.ID = r.Uint64()
			m.Result = ResultType(r.Uint64())
			m.Fields = readFields(r)
		}
	default:
		return nil, fmt.Errorf("read stderr: unknown message %#x: %w", m.Code, ErrProtocol)
	}
	if err := r.Err(); err != nil {
		return nil, fmt.Errorf("read stderr: %w", eofUnexpected(err))
	}
	return m, nil
}

func eofUnexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// WriteMessage writes one stderr message as it is, without downgrading (see
// Logger for that).
func WriteMessage(w *wire.Writer, p Params, m *Message) {
	w.Uint64(m.Code)
	switch m.Code {
	case StderrNext:
		w.String(m.Text)
	case StderrWrite:
		w.Bytes(m.Data)
	case StderrRead:
		w.Uint64(m.ReadLen)
	case StderrError:
		WriteError(w, p, m.Err)
	case StderrStartActivity:
		a := &m.Activity
		w.Uint64(a.ID)
		w.Uint64(uint64(a.Level))
		w.Uint64(uint64(a.Type))
		w.String(a.Text)
		writeFields(w, a.Fields)
		w.Uint64(a.Parent)
	case StderrStopActivity:
		w.Uint64(m.ID)
	case StderrResult:
		w.Uint64(m.ID)
		w.Uint64(uint64(m.Result))
		writeFields(w, m.Fields)
	}
}

// ProcessStderr reads stderr messages until STDERR_LAST (returning nil) or
// STDERR_ERROR (returning the *Error). Every other message goes to handle,
// which may be nil; a STDERR_READ with a nil handle or READ/WRITE at ≥1.23 is
// a protocol error. For STDERR_READ, handle must write the reply (a string of
// at most ReadLen bytes) itself.
func ProcessStderr(r *wire.Reader, p Params, handle func(*Message) error) error {
	for {
		m, err := ReadMessage(r, p)
		if err != nil {
			return err
		}
		switch m.Code {
		case StderrLast:
			return nil
		case StderrError:
			return m.Err
		case StderrRead:
			if handle == nil {
				return fmt.Errorf("read stderr: unexpected STDERR_READ: %w", ErrProtocol)
			}
		}
		if handle != nil {
			if err := handle(m); err != nil {
				return err
			}
		}
	}
}

// A Logger is the daemon's side of the stderr channel. It downgrades what an
// old client cannot read: below 1.20 (and for Guix) activities become plain
// log lines and only build log results survive, as log lines. It sends nothing
// until Flush, Last or Error.
type Logger struct {
	w *wire.Writer
	p Params
}

// NewLogger returns a Logger writing to w for a connection with parameters p.
func NewLogger(w *wire.Writer, p Params) *Logger { return &Logger{w: w, p: p} }

// Log sends a log line; text should end in "\n", as Nix's do.
func (l *Logger) Log(text string) {
	l.w.Uint64(StderrNext)
	l.w.String(text)
}

// StartActivity announces an activity.
func (l *Logger) StartActivity(a Activity) {
	if !l.p.nix(20) {
		if a.Text != "" {
			l.Log(a.Text + "\n")
		}
		return
	}
	WriteMessage(l.w, l.p, &Message{Code: StderrStartActivity, Activity: a})
}

// StopActivity ends an activity.
func (l *Logger) StopActivity(id uint64) {
	if !l.p.nix(20) {
		return
	}
	WriteMessage(l.w, l.p, &Message{Code: StderrStopActivity, ID: id})
}

// Result reports an activity result.
func (l *Logger) Result(id uint64, typ ResultType, fields []Field) {
	if !l.p.nix(20) {
		if (typ == ResBuildLogLine || typ == ResPostBuildLogLine) && len(fields) > 0 && fields[0].IsString {
			l.Log(fields[0].String + "\n")
		}
		return
	}
	WriteMessage(l.w, l.p, &Message{Code: StderrResult, ID: id, Result: typ, Fields: fields})
}

// Flush sends what is buffered.
func (l *Logger) Flush() error { return l.w.Flush() }

// Last ends the stderr channel successfully; the reply follows. It flushes.
func (l *Logger) Last() error {
	l.w.Uint64(StderrLast)
	return l.w.Flush()
}

// LastBuffered ends the stderr channel like Last but leaves flushing to the caller,
// so that LAST and the reply after it leave in one write.
func (l *Logger) LastBuffered() error {
	l.w.Uint64(StderrLast)
	return l.w.Err()
}

// Error ends the stderr channel with an error and flushes.
func (l *Logger) Error(e *Error) error {
	WriteMessage(l.w, l.p, &Message{Code: StderrError, Err: e})
	return l.w.Flush()
}
