// Command loadgen drives a Nix-protocol daemon with N concurrent clients for D
// seconds (mixed adds, queries and NAR reads, or QueryPathInfo only) and
// reports ops/s, errors, latency median/p99 and the daemon's peak RSS.
//
//	loadgen -socket PATH [-pid PID] [-clients 64] [-duration 60s] [-mix mixed|query]
//	loadgen -daemon 'nix-daemon' …          start the daemon on a throwaway chroot store
//	loadgen -daemon '/path/to/cairn daemon' …
//
// With -daemon the daemon gets the flags sbs.py gives it (sandbox off here:
// nothing is built) and its socket in a temp dir; its RSS is sampled over its
// process tree. -json prints the result as JSON.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"cairn/internal/protocol"
	"cairn/internal/store/remote/loadgen"
	"cairn/internal/wire"
)

func main() {
	var cfg loadgen.Config
	flag.StringVar(&cfg.Socket, "socket", "", "the daemon's socket")
	flag.IntVar(&cfg.PID, "pid", 0, "the daemon's pid, to sample its RSS")
	flag.IntVar(&cfg.Clients, "clients", 64, "concurrent clients (connections)")
	flag.DurationVar(&cfg.Duration, "duration", 60*time.Second, "how long to run")
	flag.StringVar(&cfg.Mix, "mix", "mixed", "mixed, or query (QueryPathInfo only)")
	flag.IntVar(&cfg.Seed, "seed", 500, "paths to add before the clock starts")
	flag.IntVar(&cfg.AddSize, "addsize", 4096, "size of each added file")
	daemon := flag.String("daemon", "", "start this daemon command on a throwaway chroot store")
	asJSON := flag.Bool("json", false, "print the result as JSON")
	keep := flag.Bool("keep", false, "with -daemon, keep its directory")
	flag.Parse()

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	stop := func() {}
	if *daemon != "" {
		var err error
		if stop, err = startDaemon(*daemon, &cfg, *keep); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(1)
		}
	}
	if cfg.Socket == "" {
		fmt.Fprintln(os.Stderr, "loadgen: -socket or -daemon is required")
		os.Exit(2)
	}
	res, err := loadgen.Run(ctx, cfg)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if *asJSON {
		json.NewEncoder(os.Stdout).Encode(res)
	} else {
		if *daemon != "" {
			fmt.Printf("daemon: %s\n", *daemon)
		}
		fmt.Print(res)
	}
	if res.Errors > 0 {
		os.Exit(1)
	}
}

func startDaemon(command string, cfg *loadgen.Config, keep bool) (func(), error) {
	dir, err := os.MkdirTemp("", "loadgen-")
	if err != nil {
		return nil, err
	}
	cfg.Socket = filepath.Join(dir, "daemon.sock")
	argv := append(strings.Fields(command), "--store", "local?root="+filepath.Join(dir, "root"),
		"--option", "sandbox", "false", "--option", "build-users-group", "",
		"--option", "substituters", "")
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + filepath.Join(dir, "home"),
		"NIX_CONF_DIR=" + filepath.Join(dir, "conf"),
		"NIX_STATE_DIR=" + filepath.Join(dir, "state"),
		"NIX_LOG_DIR=" + filepath.Join(dir, "log"),
		"NIX_DAEMON_SOCKET_PATH=" + cfg.Socket,
	}
	if v := os.Getenv("CAIRN_CPUPROFILE"); v != "" {
		cmd.Env = append(cmd.Env, "CAIRN_CPUPROFILE="+v)
	}
	log, err := os.Create(filepath.Join(dir, "daemon.log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	cfg.PID = cmd.Process.Pid
	stop := func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		log.Close()
		if !keep {
			os.RemoveAll(dir)
		} else {
			fmt.Fprintln(os.Stderr, "kept", dir)
		}
	}
	for i := 0; ; i++ {
		// The socket file appears at bind(), before listen(), and nix-daemon
		// creates the store in the first connections' children: wait for one
		// whole handshake.
		if c, err := net.Dial("unix", cfg.Socket); err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			_, err := protocol.ClientHandshake(wire.NewReader(c), wire.NewWriter(c), protocol.ClientConfig{Version: protocol.Nix28}, nil)
			c.Close()
			if err == nil {
				return stop, nil
			}
		}
		if i > 500 {
			stop()
			return nil, fmt.Errorf("%s: no socket after 5s; see %s/daemon.log", command, dir)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
