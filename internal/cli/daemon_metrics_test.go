package cli

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is a bytes.Buffer that a daemon may write while a test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestDaemonMetrics: cairn daemon --metrics-listen logs where its metrics
// are and serves them there until it stops.
func TestDaemonMetrics(t *testing.T) {
	dir := t.TempDir()
	// The daemon changes to / before it serves: the other tests need the
	// package's directory back.
	t.Chdir(dir)
	t.Setenv("NIX_CONF_DIR", dir)
	t.Setenv("NIX_USER_CONF_FILES", filepath.Join(dir, "none"))
	t.Setenv("NIX_DAEMON_SOCKET_PATH", filepath.Join(dir, "socket"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out lockedBuffer
	root := NewRoot()
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs([]string{"daemon", "--store", "local?root=" + filepath.Join(dir, "root"), "--metrics-listen", "127.0.0.1:0"})
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	logged := regexp.MustCompile(`serving metrics at (http://127\.0\.0\.1:\d+/metrics)\n`)
	var url string
	for deadline := time.Now().Add(10 * time.Second); url == ""; {
		if m := logged.FindStringSubmatch(out.String()); m != nil {
			url = m[1]
		} else if time.Now().After(deadline) {
			t.Fatalf("no metrics address logged: %q", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "cairn_daemon_connections_total 0\n") {
		t.Errorf("metrics:\n%s", body)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("daemon: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the daemon did not stop")
	}
}
