// Package escape helps tests check that a fixed-output build cannot pass a
// descriptor out of its sandbox through an abstract Unix socket (the hole
// of CVE-2024-27297 in Nix): Listen opens an abstract socket in the test's
// network namespace, and Binary builds a static program that a build runs
// as its builder (bound in with sandbox-paths) to connect to it.
//
// The program, run as `escape NAME`, connects to the abstract socket
// "@NAME"; when that works it sends a descriptor of $out over it
// (SCM_RIGHTS) and writes "escaped" to $out, else it writes "no escape".
// It prints what connect said either way and exits 0.
package escape

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// Output is what the program writes to $out when the socket is out of
// reach; a fixed-output derivation expecting it has this content's hash.
const Output = "no escape\n"

// Binary builds the program (static: CGO_ENABLED=0) into a new temp dir
// anyone may read, and returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds a probe program")
	}
	dir, err := os.MkdirTemp("", "cairn-escape-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "escape")
	cmd := exec.Command("go", "build", "-o", bin, "cairn/internal/testutil/escape/cmd/escape")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build escape: %v\n%s", err, out)
	}
	return bin
}

// Listener is an abstract Unix socket that records what connects to it.
type Listener struct {
	Name string // without the leading "@"
	ln   net.Listener
	mu   sync.Mutex
	got  []string
	done chan struct{}
}

// Listen opens an abstract socket with a fresh name, closed when the test
// ends.
func Listen(t testing.TB) *Listener {
	t.Helper()
	name := fmt.Sprintf("cairn-escape-%d-%d", os.Getpid(), time.Now().UnixNano())
	ln, err := net.Listen("unix", "@"+name)
	if err != nil {
		t.Fatal(err)
	}
	l := &Listener{Name: name, ln: ln, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			buf := make([]byte, 64)
			n, _ := c.Read(buf)
			c.Close()
			l.mu.Lock()
			l.got = append(l.got, string(buf[:n]))
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-l.done
	})
	// The socket works from here: a control connection.
	c, err := net.Dial("unix", "@"+name)
	if err != nil {
		t.Fatalf("connect to our own abstract socket: %v", err)
	}
	c.Write([]byte("control"))
	c.Close()
	return l
}

// Connections returns what each connection so far sent, the control
// connection's "control" included.
func (l *Listener) Connections() []string {
	time.Sleep(50 * time.Millisecond) // let the last accept finish its read
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.got)
}
