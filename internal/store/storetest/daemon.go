package storetest

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cairn/internal/protocol"
	"cairn/internal/wire"
)

// Daemon is a daemon process serving a throwaway chroot store.
type Daemon struct {
	Dir    string // the daemon's scratch directory
	Root   string // the chroot store's root (the store is local?root=Root)
	Socket string // its Unix socket
	Cmd    *exec.Cmd
}

// StartDaemon runs argv (e.g. "nix-daemon", or "/path/to/cairn", "daemon") on
// a chroot store under t.TempDir(), with the socket in NIX_DAEMON_SOCKET_PATH,
// sandboxing and build users off and no substituters, as the protocol
// recorder runs nix-daemon. It waits for the socket and stops the daemon when
// the test ends.
func StartDaemon(t testing.TB, argv ...string) *Daemon {
	t.Helper()
	return StartDaemonWith(t, argv, nil)
}

// StartDaemonWith is StartDaemon with options ("--option", NAME, VALUE, …)
// after the defaults, so that they win (e.g. sandbox true).
func StartDaemonWith(t testing.TB, argv, options []string) *Daemon {
	t.Helper()
	dir := t.TempDir()
	d := &Daemon{Dir: dir, Root: filepath.Join(dir, "root"), Socket: filepath.Join(dir, "daemon.sock")}
	args := append(argv[1:len(argv):len(argv)], "--store", "local?root="+d.Root,
		"--option", "sandbox", "false", "--option", "build-users-group", "",
		"--option", "substituters", "")
	args = append(args, options...)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, argv[0], args...)
	cmd.Env = append(DaemonEnv(dir), "NIX_DAEMON_SOCKET_PATH="+d.Socket)
	log, err := os.Create(filepath.Join(dir, "daemon.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start %s: %v", argv[0], err)
	}
	d.Cmd = cmd
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cancel()
			<-done
		}
		cancel()
		log.Close()
	})
	for deadline := time.Now().Add(10 * time.Second); ; {
		// The socket file appears at bind(), before listen(); and nix-daemon
		// opens (and on first use creates) the store in each connection's
		// child, which concurrent first connections race on. So wait for one
		// whole handshake.
		if probe(d.Socket) == nil {
			return d
		}
		if time.Now().After(deadline) || cmd.ProcessState != nil {
			out, _ := os.ReadFile(filepath.Join(dir, "daemon.log"))
			t.Fatalf("%s did not create its socket: %s", strings.Join(argv, " "), out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// DaemonEnv is a clean environment for a daemon whose scratch directory is
// dir: PATH, and HOME, NIX_CONF_DIR, XDG_CACHE_HOME, NIX_STATE_DIR and
// NIX_LOG_DIR under dir.
func DaemonEnv(dir string) []string {
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + filepath.Join(dir, "home"),
		"NIX_CONF_DIR=" + filepath.Join(dir, "conf"),
		"XDG_CACHE_HOME=" + filepath.Join(dir, "home", ".cache"),
		"NIX_STATE_DIR=" + filepath.Join(dir, "state"),
		"NIX_LOG_DIR=" + filepath.Join(dir, "log"),
	}
	// Nix's test hook for the free space its automatic collection sees.
	if f := os.Getenv("_NIX_TEST_FREE_SPACE_FILE"); f != "" {
		env = append(env, "_NIX_TEST_FREE_SPACE_FILE="+f)
	}
	return env
}

// probe runs one client handshake on the socket.
func probe(socket string) error {
	c, err := net.Dial("unix", socket)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	_, err = protocol.ClientHandshake(wire.NewReader(c), wire.NewWriter(c), protocol.ClientConfig{Version: protocol.Nix28}, nil)
	return err
}
