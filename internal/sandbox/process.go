package sandbox

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// InitPath and InitArgs are the program Start runs as the sandbox's init: the
// current binary, as `cairn sandbox-init`, unless FindInit found the small
// init binary. Whatever runs must call Init (a test binary does so from
// TestMain when IsInit reports true).
var (
	InitPath = "/proc/self/exe"
	InitArgs = []string{"cairn", "sandbox-init"}
)

// InitBinary is the file name of cmd/cairn-sandbox-init, looked for next to
// the running executable.
const InitBinary = "cairn-sandbox-init"

// FindInit makes InitBinary, when it sits next to the running executable,
// the sandbox's init: a regular file owned by root or by this process's
// user, which nobody else may write (as trustworthy as the executable
// itself). It reports the path, or "" when it keeps InitPath as it is.
func FindInit() string {
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	exe, err = filepath.EvalSymlinks(exe)
	if err != nil {
		return ""
	}
	path := filepath.Join(filepath.Dir(exe), InitBinary)
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Mode&0o111 == 0 ||
		st.Mode&0o022 != 0 || (st.Uid != 0 && int(st.Uid) != os.Geteuid()) {
		return ""
	}
	InitPath, InitArgs = path, []string{InitBinary}
	return path
}

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
