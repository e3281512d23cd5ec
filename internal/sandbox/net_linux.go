package sandbox

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// netSetupTimeout bounds the wait for a stack to report ready.
	netSetupTimeout = 30 * time.Second
	// maxNetLog is how much of a stack's output is kept for error messages.
	maxNetLog = 4 << 10
)

// netProc is a running network stack, attached to one sandbox.
type netProc struct {
	tool    string
	cmd     *exec.Cmd
	done    chan struct{} // closed once cmd has been waited for
	exitFD  *os.File      // slirp4netns: closing it tells it to exit
	out     *headBuffer
	stopped sync.Once
}

// start runs the stack for the network namespace of pid (init) and returns
// once it has configured the namespace, and the user namespace of init's
// when it has one.
func (n *Net) start(ctx context.Context, pid int) (*netProc, error) {
	ctx, cancel := context.WithTimeout(ctx, netSetupTimeout)
	defer cancel()
	if err := unix.Faccessat(unix.AT_FDCWD, "/dev/net/tun", unix.R_OK|unix.W_OK, unix.AT_EACCESS); err != nil {
		return nil, fmt.Errorf("%s needs /dev/net/tun readable and writable by uid %d (Debian's udev makes it 0666): %w", n.Tool, os.Geteuid(), err)
	}
	np := &netProc{tool: n.Tool, done: make(chan struct{}), out: &headBuffer{max: maxNetLog}}
	var ready *os.File
	var extra []*os.File
	var args []string
	switch n.Tool {
	case NetPasta:
		// pasta writes its pid to the --pid file once the namespace is
		// configured. A FIFO there is the ready signal; opened read-write,
		// neither our open nor pasta's blocks, and reads never see EOF.
		dir, err := os.MkdirTemp(n.Dir, "cairn-pasta-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		fifo := filepath.Join(dir, "ready")
		if err := unix.Mkfifo(fifo, 0o600); err != nil {
			return nil, fmt.Errorf("mkfifo %s: %w", fifo, err)
		}
		if ready, err = os.OpenFile(fifo, os.O_RDWR, 0); err != nil {
			return nil, err
		}
		args = pastaArgs(n.HostLoopback, fifo, pid)
	case NetSlirp4netns:
		// --ready-fd gets "1" once the namespace is configured; EOF
		// before that means slirp4netns failed. --exit-fd: slirp4netns
		// exits when its other end closes (Wait, or this process dying).
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		ready = r
		exitR, exitW, err := os.Pipe()
		if err != nil {
			r.Close()
			w.Close()
			return nil, err
		}
		np.exitFD = exitW
		extra = []*os.File{w, exitR} // fds 3 and 4
		defer w.Close()
		defer exitR.Close()
		args = []string{"--configure", "--mtu", strconv.Itoa(NetMTU), "--ready-fd", "3", "--exit-fd", "4"}
		if !n.HostLoopback {
			args = append(args, "--disable-host-loopback")
		}
		args = append(args, strconv.Itoa(pid), NetInterface)
	default:
		return nil, fmt.Errorf("unknown stack %q", n.Tool)
	}
	defer ready.Close()

	cmd := exec.Command(n.Path, args...)
	cmd.Stdout, cmd.Stderr = np.out, np.out
	cmd.ExtraFiles = extra
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = time.Second // a helper left holding the output pipe
	np.cmd = cmd
	if err := cmd.Start(); err != nil {
		if np.exitFD != nil {
			np.exitFD.Close()
		}
		return nil, fmt.Errorf("%s: %w", n.Tool, err)
	}
	go func() {
		cmd.Wait()
		close(np.done)
	}()
	for _, f := range extra {
		f.Close() // the child has them now
	}

	got := make(chan error, 1)
	go func() {
		var b [32]byte
		n, err := ready.Read(b[:])
		if n > 0 {
			err = nil
		}
		got <- err
	}()
	var err error
	select {
	case err = <-got:
		if err == io.EOF {
			<-np.done // it failed; its message is complete once it has exited
			err = np.failure()
		}
	case <-np.done:
		err = np.failure()
	case <-ctx.Done():
		err = fmt.Errorf("%s: not ready: %w", n.Tool, ctx.Err())
	}
	if err != nil {
		np.stop()
		return nil, err
	}
	return np, nil
}

// pastaArgs are pasta's options: foreground, quiet, the fixed layout, no
// port of the sandbox bound on the host (-t/-u none), and the host's
// listening loopback TCP ports bound on the sandbox's loopback (-T auto;
// UDP reaches the host's loopback through the gateway, and scanning for
// UDP ports costs pasta 10 ms at start) or, isolated, none and no gateway
// mapping.
func pastaArgs(hostLoopback bool, pidFile string, pid int) []string {
	args := []string{"--foreground", "--quiet", "--config-net",
		"--ns-ifname", NetInterface, "--address", NetAddress, "--netmask", "24",
		"--gateway", NetGateway, "--dns-forward", NetDNS,
		"--tcp-ports", "none", "--udp-ports", "none", "--pid", pidFile}
	if hostLoopback {
		args = append(args, "--tcp-ns", "auto", "--udp-ns", "none")
	} else {
		args = append(args, "--tcp-ns", "none", "--udp-ns", "none", "--no-map-gw")
	}
	if os.Geteuid() == 0 {
		// As root pasta would switch to nobody, who may not enter the
		// sandbox's user namespace (root owns it).
		args = append(args, "--runas", "0")
	}
	return append(args, strconv.Itoa(pid))
}

// syslogNoise is compiled on first use: every init links this package,
// and a package-level regexp would be compiled at each init's start.
var syslogNoise = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`(?m)^Failed to send \d+ bytes to syslog\n?`)
})

// failure describes a stack that exited before it was ready.
func (np *netProc) failure() error {
	msg := bytes.TrimSpace(syslogNoise().ReplaceAll(np.out.Bytes(), nil))
	st := "exited"
	if ps := np.cmd.ProcessState; ps != nil {
		st = ps.String()
	}
	if len(msg) == 0 {
		return fmt.Errorf("%s %s before it was ready", np.tool, st)
	}
	return fmt.Errorf("%s %s before it was ready: %s", np.tool, st, msg)
}

// stop ends the stack. It does not wait: a stack's exit takes its network
// device down, which the kernel makes slow (tens of milliseconds of RCU
// grace periods), and nothing needs it gone; a goroutine reaps it.
func (np *netProc) stop() {
	np.stopped.Do(func() {
		if np.exitFD != nil {
			np.exitFD.Close()
		}
		np.cmd.Process.Kill()
	})
}

// headBuffer keeps the first max bytes written to it.
type headBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (b *headBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.max - len(b.buf); room > 0 {
		b.buf = append(b.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (b *headBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf)
}
