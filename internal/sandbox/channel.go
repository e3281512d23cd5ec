package sandbox

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// The channel between parent and init: a stream socket, fd 3 in init.
//
//	parent → child:  u32be length, Spec JSON (wireSpec), with the log's fd
//	                 attached (SCM_RIGHTS) when wireSpec.LogFD is set
//	                 'G' after Net and NetworkSetup, when wireSpec.Wait is set
//	child → parent:  'E' u32be length, report JSON   (setup failed)
//	                 'X'                             (exec is next)
const (
	initEnv   = "CAIRN_SANDBOX_INIT"
	earlyEnv  = "CAIRN_SANDBOX_EARLY" // init's shape (early, JSON)
	channelFD = 3

	msgExec  = 'X'
	msgError = 'E'
	msgGo    = 'G'
)

type wireSpec struct {
	Spec *Spec `json:"spec"`
	Wait bool  `json:"wait,omitempty"` // wait for msgGo before exec
	// LogFD says a descriptor came with the message (SCM_RIGHTS) to be the
	// command's stdout and stderr: init was started before its build was known.
	LogFD bool `json:"log_fd,omitempty"`
}

// sendSpec writes msg to the channel, with log's descriptor attached when
// log is not nil.
func sendSpec(ch *os.File, msg []byte, log *os.File) error {
	if log == nil {
		_, err := ch.Write(msg)
		return err
	}
	rc, err := ch.SyscallConn()
	if err != nil {
		return err
	}
	rights := unix.UnixRights(int(log.Fd()))
	var n int
	var serr error
	if err := rc.Write(func(fd uintptr) bool {
		n, serr = unix.SendmsgN(int(fd), msg, rights, nil, 0)
		return serr != unix.EAGAIN
	}); err != nil {
		return err
	}
	if serr != nil {
		return serr
	}
	if n == len(msg) {
		// Nothing more: init may already have executed the command, and
		// even an empty write to its closed end would fail.
		return nil
	}
	_, err = ch.Write(msg[n:])
	return err
}

// report is a SetupError on the wire.
type report struct {
	Step  string `json:"step"`
	Errno int    `json:"errno,omitempty"`
	Msg   string `json:"msg"`
}

// SetupError is a failure inside the sandbox before the command started.
// Err is a syscall.Errno when the kernel refused a step, so
// errors.Is(err, fs.ErrPermission) and the like work.
type SetupError struct {
	Step string // e.g. "mount /proc"
	Err  error
}

func (e *SetupError) Error() string { return "sandbox: " + e.Step + ": " + e.Err.Error() }
func (e *SetupError) Unwrap() error { return e.Err }

func encodeReport(err error) []byte {
	r := report{Step: "init", Msg: err.Error()}
	var se *SetupError
	if errors.As(err, &se) {
		r.Step, r.Msg = se.Step, se.Err.Error()
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		r.Errno = int(errno)
	}
	body, _ := json.Marshal(r)
	if len(body) > MaxMessageLen {
		body, _ = json.Marshal(report{Step: r.Step, Errno: r.Errno, Msg: r.Msg[:MaxMessageLen/2]})
	}
	msg := make([]byte, 5, 5+len(body))
	msg[0] = msgError
	binary.BigEndian.PutUint32(msg[1:], uint32(len(body)))
	return append(msg, body...)
}

// readReports reads the child's messages until EOF. It returns whether the
// child got as far as exec and the error it reported, if any.
func readReports(r io.Reader) (execd bool, err error) {
	var b [5]byte
	for {
		if _, err := io.ReadFull(r, b[:1]); err != nil {
			if err == io.EOF {
				return execd, nil
			}
			return execd, fmt.Errorf("sandbox: read from init: %w", err)
		}
		switch b[0] {
		case msgExec:
			execd = true
		case msgError:
			if _, err := io.ReadFull(r, b[1:5]); err != nil {
				return execd, fmt.Errorf("sandbox: read from init: %w", err)
			}
			n := binary.BigEndian.Uint32(b[1:5])
			if n > MaxMessageLen {
				return execd, fmt.Errorf("sandbox: read from init: report of %d bytes", n)
			}
			body := make([]byte, n)
			if _, err := io.ReadFull(r, body); err != nil {
				return execd, fmt.Errorf("sandbox: read from init: %w", err)
			}
			var rep report
			if err := json.Unmarshal(body, &rep); err != nil {
				return execd, fmt.Errorf("sandbox: read from init: %w", err)
			}
			se := &SetupError{Step: rep.Step, Err: errors.New(rep.Msg)}
			if rep.Errno != 0 {
				se.Err = syscall.Errno(rep.Errno)
			}
			return execd, se
		default:
			return execd, fmt.Errorf("sandbox: read from init: unexpected byte %#x", b[0])
		}
	}
}
