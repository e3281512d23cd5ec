// Command record runs the reference nix-daemon (Nix 2.8) on a throwaway chroot
// store behind a recording Unix-socket proxy, drives it with Nix 2.8 clients
// (nix-store, nix, nix-instantiate), and writes what went over each connection
// into golden files for package protocol's tests:
//
//	<step>.<n>.c2d.bin   bytes the client sent to the daemon on connection n
//	<step>.<n>.d2c.bin   bytes the daemon answered
//
// It also lists the steps (command line and connection count) in steps.txt.
// Usage (as root; the daemon runs with sandbox and build users off):
//
//	go run ./internal/protocol/internal/record -out internal/protocol/testdata
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

type recorder struct {
	dir    string // temp dir
	out    string // testdata dir
	daemon string // daemon socket
	proxy  string // proxy socket

	mu    sync.Mutex
	step  string
	n     int
	wg    sync.WaitGroup
	steps []string
}

func main() {
	out := flag.String("out", "testdata", "directory for the recorded files")
	keep := flag.Bool("keep", false, "keep the temp dir")
	splice := flag.String("splice", "", "internal: connect stdin/stdout to this socket (the ssh-ng remote program)")
	flag.Parse()
	if *splice != "" {
		if err := spliceStdio(*splice); err != nil {
			log.Fatal(err)
		}
		return
	}
	if err := run(*out, *keep); err != nil {
		log.Fatal(err)
	}
}

func run(out string, keep bool) error {
	dir, err := os.MkdirTemp("", "cairn-record-")
	if err != nil {
		return err
	}
	if !keep {
		defer os.RemoveAll(dir)
	} else {
		log.Printf("temp dir %s", dir)
	}
	rec := &recorder{dir: dir, out: out, daemon: filepath.Join(dir, "daemon.sock"), proxy: filepath.Join(dir, "proxy.sock")}
	for _, d := range []string{"conf", "home", "files", "other"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	conf := "experimental-features = nix-command\nsubstituters =\n"
	if err := os.WriteFile(filepath.Join(dir, "conf", "nix.conf"), []byte(conf), 0o644); err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	daemon := exec.CommandContext(ctx, "nix-daemon", "--store", "local?root="+filepath.Join(dir, "root"),
		"--option", "sandbox", "false", "--option", "build-users-group", "",
		"--option", "sandbox-paths", "/bin/sh=/bin/busybox")
	daemon.Env = append(rec.env(), "NIX_DAEMON_SOCKET_PATH="+rec.daemon)
	daemon.Stderr = io.Discard
	if err := daemon.Start(); err != nil {
		return err
	}
	defer func() { cancel(); daemon.Wait() }()
	for i := 0; ; i++ {
		if _, err := os.Stat(rec.daemon); err == nil {
			break
		}
		if i > 100 {
			return fmt.Errorf("nix-daemon did not create its socket")
		}
		time.Sleep(50 * time.Millisecond)
	}
	ln, err := net.Listen("unix", rec.proxy)
	if err != nil {
		return err
	}
	defer ln.Close()
	go rec.serve(ln)

	if err := rec.script(); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(out, "steps.txt"), []byte(strings.Join(rec.steps, "")), 0o644)
}

func (rec *recorder) env() []string {
	return []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + filepath.Join(rec.dir, "home"),
		"NIX_CONF_DIR=" + filepath.Join(rec.dir, "conf"),
		"XDG_CACHE_HOME=" + filepath.Join(rec.dir, "home", ".cache"),
		"NIX_STATE_DIR=" + filepath.Join(rec.dir, "state"),
		"NIX_LOG_DIR=" + filepath.Join(rec.dir, "log"),
	}
}

// serve accepts client connections and relays them to the daemon, recording.
func (rec *recorder) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		rec.mu.Lock()
		name := fmt.Sprintf("%s.%d", rec.step, rec.n)
		rec.n++
		rec.wg.Add(1)
		rec.mu.Unlock()
		go rec.relay(c, name)
	}
}

func (rec *recorder) relay(c net.Conn, name string) {
	defer rec.wg.Done()
	defer c.Close()
	d, err := net.Dial("unix", rec.daemon)
	if err != nil {
		log.Printf("%s: %v", name, err)
		return
	}
	defer d.Close()
	var c2d, d2c bytes.Buffer
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		io.Copy(io.MultiWriter(d, &c2d), c)
		d.(*net.UnixConn).CloseWrite()
	}()
	go func() {
		defer wg.Done()
		io.Copy(io.MultiWriter(c, &d2c), d)
		c.(*net.UnixConn).CloseWrite()
	}()
	wg.Wait()
	base := filepath.Join(rec.out, name)
	if err := os.WriteFile(base+".c2d.bin", c2d.Bytes(), 0o644); err != nil {
		log.Print(err)
	}
	if err := os.WriteFile(base+".d2c.bin", d2c.Bytes(), 0o644); err != nil {
		log.Print(err)
	}
}

// do runs one client command as a named step and waits for its connections to
// be written out. A failing command is fine when wantFail is set.
func (rec *recorder) do(step string, wantFail bool, stdin []byte, name string, args ...string) (string, error) {
	rec.mu.Lock()
	rec.step, rec.n = step, 0
	rec.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = rec.env()
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	rec.wg.Wait()
	rec.mu.Lock()
	n := rec.n
	rec.mu.Unlock()
	line := fmt.Sprintf("%s\t%d\t%s %s\n", step, n, name, strings.ReplaceAll(strings.Join(args, " "), "\n", " "))
	line = strings.ReplaceAll(line, rec.dir, "$TMP")
	rec.steps = append(rec.steps, line)
	log.Print(strings.TrimSpace(line))
	if (err != nil) != wantFail {
		return "", fmt.Errorf("%s: %v (want failure %v)\n%s", step, err, wantFail, stderr.String())
	}
	return strings.TrimSpace(stdout.String()), nil
}

func (rec *recorder) store() string { return "unix://" + rec.proxy }

// rootStore is the proxy with the daemon's chroot as the client's local view,
// for commands that read .drv files straight from the file system.
func (rec *recorder) rootStore() string {
	return rec.store() + "?root=" + filepath.Join(rec.dir, "root")
}

// sshStore reaches the proxy as ssh-ng://localhost, whose remote program is this
// binary splicing to the proxy socket: a client that is not a LocalFSStore, so
// NarFromPath goes over the wire.
func (rec *recorder) sshStore() string {
	self, err := os.Executable()
	if err != nil {
		log.Fatal(err)
	}
	script := filepath.Join(rec.dir, "remote-program")
	text := fmt.Sprintf("#!/bin/sh\nexec %s -splice %s\n", self, rec.proxy)
	if err := os.WriteFile(script, []byte(text), 0o755); err != nil {
		log.Fatal(err)
	}
	return "ssh-ng://localhost?remote-program=" + script
}

func (rec *recorder) file(name, content string) string {
	p := filepath.Join(rec.dir, "files", name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		log.Fatal(err)
	}
	return p
}

const bogus = "/nix/store/00000000000000000000000000000000-bogus"

const drvExpr = `derivation { name = "hello"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo building; echo out > $out" ]; }`

const failExpr = `derivation { name = "fails"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo about to fail; exit 3" ]; }`

func (rec *recorder) script() error {
	s := rec.store()
	must := func(out string, err error) string {
		if err != nil {
			log.Fatal(err)
		}
		return out
	}
	f := rec.file("hello.txt", "hello\n")
	dirTree := filepath.Join(rec.dir, "files", "tree")
	os.MkdirAll(filepath.Join(dirTree, "sub"), 0o755)
	os.WriteFile(filepath.Join(dirTree, "sub", "a"), []byte("aaa"), 0o755)
	os.Symlink("sub/a", filepath.Join(dirTree, "link"))

	added := must(rec.do("add", false, nil, "nix-store", "--store", s, "--add", f))
	must(rec.do("add-fixed-flat", false, nil, "nix-store", "--store", s, "--add-fixed", "sha256", f))
	must(rec.do("add-fixed-sha1-tree", false, nil, "nix-store", "--store", s, "--add-fixed", "--recursive", "sha1", dirTree))
	must(rec.do("is-valid", false, nil, "nix-store", "--store", s, "--check-validity", added))
	must(rec.do("is-valid-invalid", true, nil, "nix-store", "--store", s, "--check-validity", bogus))
	must(rec.do("path-info", false, nil, "nix", "--store", s, "path-info", "--json", added))
	must(rec.do("path-info-invalid", true, nil, "nix", "--store", s, "path-info", bogus))
	must(rec.do("query-hash", false, nil, "nix-store", "--store", s, "-q", "--hash", added))
	must(rec.do("instantiate", false, nil, "nix-instantiate", "--store", s, "-E", drvExpr))
	must(rec.do("referrers", false, nil, "nix-store", "--store", s, "-q", "--referrers", added))
	drv := must(rec.do("instantiate-build", false, nil, "nix-instantiate", "--store", s, "-E", drvExpr))
	must(rec.do("build", false, nil, "nix-store", "--store", rec.rootStore(), "-r", drv))
	failDrv := must(rec.do("instantiate-fail", false, nil, "nix-instantiate", "--store", s, "-E", failExpr))
	must(rec.do("build-fail", true, nil, "nix-store", "--store", rec.rootStore(), "-r", failDrv))
	must(rec.do("dump", false, nil, "nix", "--store", rec.sshStore(), "store", "dump-path", added))
	must(rec.do("dump-invalid", true, nil, "nix", "--store", rec.sshStore(), "store", "dump-path", bogus))
	must(rec.do("all-valid", false, nil, "nix", "--store", s, "path-info", "--all"))
	must(rec.do("add-root", false, nil, "nix-store", "--store", s, "--add-root", filepath.Join(rec.dir, "home", "root"), "-r", added))
	must(rec.do("find-roots", false, nil, "nix-store", "--store", s, "--gc", "--print-roots"))
	must(rec.do("gc-print-dead", false, nil, "nix-store", "--store", s, "--gc", "--print-dead"))
	must(rec.do("verify", false, nil, "nix-store", "--store", s, "--verify", "--check-contents"))
	must(rec.do("optimise", false, nil, "nix-store", "--store", s, "--optimise"))

	// Paths to copy in from a second (local, chroot) store.
	other := "local?root=" + filepath.Join(rec.dir, "other")
	o1 := must(rec.do("other-add", false, nil, "nix-store", "--store", other, "--add", rec.file("copied.txt", "copied by nix copy\n")))
	o2 := must(rec.do("other-add2", false, nil, "nix-store", "--store", other, "--add", rec.file("imported.txt", "imported\n")))
	must(rec.do("copy", false, nil, "nix", "copy", "--from", other, "--to", s, o1))
	export := must(rec.do("other-export", false, nil, "sh", "-c", fmt.Sprintf("nix-store --store '%s' --export %s | base64 -w0", other, o2)))
	exportBytes, err := decodeBase64(export)
	if err != nil {
		return err
	}
	must(rec.do("import", false, exportBytes, "nix-store", "--store", s, "--import"))
	must(rec.do("delete", false, nil, "nix-store", "--store", s, "--delete", o2))
	return rec.ownClient(added, drv)
}
