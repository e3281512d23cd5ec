package gc

import (
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"cairn/internal/gcroots"
	"cairn/internal/storepath"
)

// TestRootServer speaks the roots socket's protocol: a root is answered "1"
// and recorded, garbage is answered "1" and logged, an over-long line closes
// the connection, and a root for the path being deleted waits for the end of
// the deletion.
func TestRootServer(t *testing.T) {
	state := t.TempDir()
	var mu sync.Mutex
	var logs []string
	s, err := startServer(state, "/nix/store", func(m string) { mu.Lock(); logs = append(logs, m); mu.Unlock() })
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	dial := func() net.Conn {
		c, err := net.Dial("unix", filepath.Join(state, gcroots.GCSocketName))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ask := func(c net.Conn, line string) (string, error) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte(line + "\n")); err != nil {
			return "", err
		}
		var b [1]byte
		_, err := c.Read(b[:])
		return string(b[:]), err
	}
	p, _ := storepath.StoreDir("/nix/store").Parse("/nix/store/ab3li50xq0nl4q5lxdyinb8w8y13my9s-f")
	c := dial()
	defer c.Close()
	for _, tc := range []struct{ name, line string }{{"root", p.String()}, {"garbage", "not a path"}} {
		t.Run(tc.name, func(t *testing.T) {
			if got, err := ask(c, tc.line); got != "1" || err != nil {
				t.Fatalf("answer %q, %v", got, err)
			}
		})
	}
	if !s.isTemp(p.HashPart()) {
		t.Error("root not recorded")
	}
	mu.Lock()
	if len(logs) != 1 || !strings.Contains(logs[0], "garbage") {
		t.Errorf("logs %q", logs)
	}
	mu.Unlock()
	t.Run("long line", func(t *testing.T) {
		c := dial()
		defer c.Close()
		if _, err := ask(c, strings.Repeat("x", maxRootLine+10)); err == nil {
			t.Error("over-long line answered")
		}
	})
	t.Run("pending", func(t *testing.T) {
		q, _ := storepath.StoreDir("/nix/store").Parse("/nix/store/cb3li50xq0nl4q5lxdyinb8w8y13my9s-g")
		if !s.claim(q.HashPart()) {
			t.Fatal("claim refused")
		}
		answered := make(chan struct{})
		go func() {
			ask(c, q.String())
			close(answered)
		}()
		select {
		case <-answered:
			t.Fatal("answered while the path was being deleted")
		case <-time.After(100 * time.Millisecond):
		}
		s.release()
		<-answered
		if s.claim(q.HashPart()) {
			t.Error("claimed a path a temporary root names")
		}
	})
}
