package sandbox

import (
	"errors"
	"os"
	"strconv"
	"syscall"
)

// InitPath and InitArgs are the program Start runs as the sandbox's init: the
// current binary, as `cairn sandbox-init`. Whatever runs must call Init (a
// test binary does so from TestMain when IsInit reports true).
var (
	InitPath = "/proc/self/exe"
	InitArgs = []string{"cairn", "sandbox-init"}
)

// IsInit reports whether this process was started by Start as a sandbox
// init, so a main function may call Init before anything else.
func IsInit() bool { return os.Getenv(initEnv) != "" }

var errNotInit = errors.New("sandbox-init: not started by sandbox.Start")

// Status is how the command ended.
type Status struct {
	Code   int            // exit code; -1 when killed by a signal
	Signal syscall.Signal // the signal, when Code is -1
}

// Success reports exit code 0.
func (s Status) Success() bool { return s.Code == 0 }

func (s Status) String() string {
	if s.Code < 0 {
		return "killed by signal " + strconv.Itoa(int(s.Signal)) + " (" + s.Signal.String() + ")"
	}
	return "exit status " + strconv.Itoa(s.Code)
}
