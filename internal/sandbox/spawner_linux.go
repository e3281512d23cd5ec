package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// The spawner is a small long-lived process (init's binary, in spawnerMode)
// that clones inits for the caller. With a user namespace Go clones by a
// full fork, whose page-table copy, and the child's teardown of it at exec,
// grow with the caller's memory: a daemon's tens of MB cost ~1.5 ms a
// sandbox, the spawner's few MB little. Inits it clones are its children:
// it reaps them and reports how they ended. It dies with its caller (parent
// death signal), and they with it.
//
// The protocol, on a SOCK_SEQPACKET socket (fd 3 in the spawner), one JSON
// object per message:
//
//	caller → spawner:  spawnReq, with init's channel end and, when
//	                   spawnReq.Cgroup, the cgroup's directory (SCM_RIGHTS)
//	spawner → caller:  spawnMsg{ID, Pid} with init's pidfd, or {ID, Err};
//	                   later spawnMsg{ID, Exited, Status} when init is reaped
const spawnerMode = "spawner"

// maxSpawnMsg bounds one spawner message.
const maxSpawnMsg = 64 << 10

type spawnReq struct {
	ID     uint64 `json:"id"`
	Spec   *Spec  `json:"spec"` // its shape: what initAttr reads
	Cgroup bool   `json:"cgroup,omitempty"`
}

type spawnMsg struct {
	ID     uint64 `json:"id"`
	Pid    int    `json:"pid,omitempty"`
	Err    string `json:"err,omitempty"`
	Exited bool   `json:"exited,omitempty"`
	Status uint32 `json:"status,omitempty"` // a wait status
	pidfd  int
}

var errSpawnerGone = errors.New("sandbox: the spawner is gone")

// spawner is the caller's end of a spawner process.
type spawner struct {
	sock int
	// path and args are InitPath and InitArgs when it started: it clones
	// inits of its own binary.
	path string
	args []string

	mu     sync.Mutex
	next   uint64
	starts map[uint64]chan spawnMsg
	exits  map[uint64]chan spawnMsg
	gone   bool
}

var (
	spawnerMu sync.Mutex
	current   *spawner
	// SpawnerOff keeps inits cloned by the caller itself.
	spawnerOff bool
)

// spawnerFor returns the spawner to clone an init for spec with stdio as
// its output, starting it if need be, or nil when the caller must clone
// init itself: init writes to stdio from the start, or no spawner runs.
func spawnerFor(spec *Spec, stdio io.Writer) *spawner {
	if stdio != nil {
		return nil
	}
	spawnerMu.Lock()
	defer spawnerMu.Unlock()
	if spawnerOff {
		return nil
	}
	if current != nil && !current.isGone() && current.path == InitPath && slices.Equal(current.args, InitArgs) {
		return current
	}
	// None yet, gone, or of another init binary (InitPath changed): a new
	// one. An old one with no inits left is told to go (it reads the end
	// of its socket); one with inits lives on for them.
	if current != nil {
		current.retire()
	}
	sw, err := startSpawner()
	if err != nil {
		return nil
	}
	current = sw
	return sw
}

// retire ends the spawner if no init of its runs.
func (sw *spawner) retire() {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if !sw.gone && len(sw.exits) == 0 {
		unix.Shutdown(sw.sock, unix.SHUT_RDWR)
	}
}

func (sw *spawner) isGone() bool {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	return sw.gone
}

func startSpawner() (*spawner, error) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	childEnd := os.NewFile(uintptr(pair[1]), "spawner socket")
	defer childEnd.Close()
	cmd := exec.Command(InitPath)
	cmd.Args = InitArgs
	cmd.Env = []string{initEnv + "=" + spawnerMode, "GOMAXPROCS=1"}
	cmd.ExtraFiles = []*os.File{childEnd}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		unix.Close(pair[0])
		return nil, err
	}
	sw := &spawner{sock: pair[0], path: InitPath, args: slices.Clone(InitArgs),
		starts: map[uint64]chan spawnMsg{}, exits: map[uint64]chan spawnMsg{}}
	go func() {
		sw.read()
		cmd.Wait()
	}()
	return sw, nil
}

// read dispatches the spawner's messages until it is gone; then every
// init still waited for is reported killed, as its parent death signal
// killed it.
func (sw *spawner) read() {
	buf := make([]byte, maxSpawnMsg)
	oob := make([]byte, unix.CmsgSpace(4))
	for {
		n, oobn, _, _, err := unix.Recvmsg(sw.sock, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			break
		}
		fds := parseRights(oob[:oobn])
		var m spawnMsg
		if json.Unmarshal(buf[:n], &m) != nil {
			closeAll(fds)
			break
		}
		m.pidfd = -1
		if len(fds) > 0 {
			m.pidfd = fds[0]
			closeAll(fds[1:])
		}
		sw.mu.Lock()
		var ch chan spawnMsg
		if m.Exited {
			ch = sw.exits[m.ID]
			delete(sw.exits, m.ID)
		} else {
			ch = sw.starts[m.ID]
			delete(sw.starts, m.ID)
		}
		sw.mu.Unlock()
		if ch == nil {
			if m.pidfd >= 0 {
				unix.Close(m.pidfd)
			}
			continue
		}
		ch <- m
	}
	sw.mu.Lock()
	sw.gone = true
	starts, exits := sw.starts, sw.exits
	sw.starts, sw.exits = nil, nil
	sw.mu.Unlock()
	unix.Close(sw.sock)
	for _, ch := range starts {
		ch <- spawnMsg{Err: errSpawnerGone.Error(), pidfd: -1}
	}
	for _, ch := range exits {
		ch <- spawnMsg{Exited: true, Status: uint32(syscall.SIGKILL), Err: errSpawnerGone.Error()}
	}
}

// spawn has the spawner clone init for spec's shape, with channel as its
// fd 3 and in the cgroup whose directory is cgroupFD (-1: none).
func (sw *spawner) spawn(spec *Spec, channel *os.File, cgroupFD int) (initProc, error) {
	started, exited := make(chan spawnMsg, 1), make(chan spawnMsg, 1)
	sw.mu.Lock()
	if sw.gone {
		sw.mu.Unlock()
		return nil, errSpawnerGone
	}
	sw.next++
	id := sw.next
	sw.starts[id], sw.exits[id] = started, exited
	sw.mu.Unlock()
	req, err := json.Marshal(spawnReq{ID: id, Spec: spec.shape(), Cgroup: cgroupFD >= 0})
	if err == nil && len(req) > maxSpawnMsg {
		err = fmt.Errorf("sandbox: spawn request of %d bytes", len(req))
	}
	if err == nil {
		fds := []int{int(channel.Fd())}
		if cgroupFD >= 0 {
			fds = append(fds, cgroupFD)
		}
		err = unix.Sendmsg(sw.sock, req, unix.UnixRights(fds...), nil, 0)
	}
	if err != nil {
		sw.mu.Lock()
		if !sw.gone {
			delete(sw.starts, id)
			delete(sw.exits, id)
		}
		sw.mu.Unlock()
		return nil, err
	}
	m := <-started
	if m.Err != "" {
		sw.mu.Lock()
		if !sw.gone {
			delete(sw.exits, id)
		}
		sw.mu.Unlock()
		return nil, fmt.Errorf("sandbox: start init: %s", m.Err)
	}
	if m.pidfd < 0 {
		return nil, errors.New("sandbox: the spawner sent no pidfd")
	}
	return &spawnedProc{p: m.Pid, pidfd: m.pidfd, exited: exited}, nil
}

// spawnedProc is an init the spawner cloned.
type spawnedProc struct {
	p      int
	pidfd  int
	exited chan spawnMsg
	once   sync.Once
	mu     sync.Mutex // guards pidfd against kill after wait
}

func (s *spawnedProc) pid() int { return s.p }

func (s *spawnedProc) kill() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pidfd < 0 {
		return nil
	}
	if err := unix.PidfdSendSignal(s.pidfd, unix.SIGKILL, nil, 0); err != nil && err != unix.ESRCH {
		return err
	}
	return nil
}

func (s *spawnedProc) wait() (*syscall.WaitStatus, error) {
	m := <-s.exited
	s.mu.Lock()
	unix.Close(s.pidfd)
	s.pidfd = -1
	s.mu.Unlock()
	ws := syscall.WaitStatus(m.Status)
	if m.Err != "" {
		return &ws, errors.New(m.Err)
	}
	return &ws, nil
}

func parseRights(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for _, m := range msgs {
		if f, err := unix.ParseUnixRights(&m); err == nil {
			fds = append(fds, f...)
		}
	}
	return fds
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// runSpawner is the spawner process: it clones an init for each request
// until its caller is gone.
func runSpawner() error {
	sock := channelFD
	var wmu sync.Mutex
	send := func(m spawnMsg, fds ...int) {
		b, _ := json.Marshal(m)
		var oob []byte
		if len(fds) > 0 {
			oob = unix.UnixRights(fds...)
		}
		wmu.Lock()
		unix.Sendmsg(sock, b, oob, nil, 0)
		wmu.Unlock()
	}
	buf := make([]byte, maxSpawnMsg)
	oob := make([]byte, unix.CmsgSpace(2*4))
	for {
		n, oobn, _, _, err := unix.Recvmsg(sock, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			return nil // the caller is gone; so are the inits, by their parent death signal
		}
		fds := parseRights(oob[:oobn])
		var req spawnReq
		if err := json.Unmarshal(buf[:n], &req); err != nil || req.Spec == nil || len(fds) != 1+b2i(req.Cgroup) {
			closeAll(fds)
			send(spawnMsg{ID: req.ID, Err: fmt.Sprintf("bad spawn request (%v)", err)})
			continue
		}
		spawnOne(req, fds, send)
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// spawnOne clones the init req asks for, taking fds (its channel, its
// cgroup), and says so; a goroutine reports its end.
func spawnOne(req spawnReq, fds []int, send func(spawnMsg, ...int)) {
	defer closeAll(fds[1:])
	channel := os.NewFile(uintptr(fds[0]), "sandbox channel")
	defer channel.Close()
	attr, env, err := initAttr(req.Spec)
	if err != nil {
		send(spawnMsg{ID: req.ID, Err: err.Error()})
		return
	}
	if req.Cgroup {
		attr.UseCgroupFD, attr.CgroupFD = true, fds[1]
	}
	pidfd := -1
	attr.PidFD = &pidfd
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = os.Args
	cmd.Env = env
	cmd.ExtraFiles = []*os.File{channel}
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		send(spawnMsg{ID: req.ID, Err: err.Error()})
		return
	}
	if pidfd < 0 { // a kernel without pidfds: the caller clones its own
		cmd.Process.Kill()
		cmd.Wait()
		send(spawnMsg{ID: req.ID, Err: "no pidfd"})
		return
	}
	go func() {
		cmd.Wait()
		ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
		send(spawnMsg{ID: req.ID, Exited: true, Status: uint32(ws)})
	}()
	send(spawnMsg{ID: req.ID, Pid: cmd.Process.Pid}, pidfd)
	unix.Close(pidfd)
}
