//go:build linux

package sandbox_test

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"cairn/internal/sandbox"
)

// TestSpawnerGone: pooled inits are the spawner's children; when the
// spawner dies they die with it, their Wait says so, and the next sandbox
// gets a new spawner.
func TestSpawnerGone(t *testing.T) {
	m := modes()[0]
	pool := &sandbox.Pool{}
	defer pool.Close()
	f := newFixture(t, m, "/bin/busybox", "sleep", "60")
	read := logPipe(t, f.spec)
	p, err := pool.Start(context.Background(), f.spec)
	if err != nil {
		read()
		t.Fatal(err)
	}
	spawners := childrenOf(t, os.Getpid(), "CAIRN_SANDBOX_INIT=spawner")
	if len(spawners) != 1 {
		read()
		t.Fatalf("%d spawners, want 1", len(spawners))
	}
	if kids := childrenOf(t, spawners[0], "CAIRN_SANDBOX_INIT=1"); len(kids) == 0 {
		t.Errorf("the spawner has no inits")
	}
	syscall.Kill(spawners[0], syscall.SIGKILL)
	done := make(chan struct{})
	var st sandbox.Status
	go func() {
		st, err = p.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		p.Kill()
		t.Fatal("Wait did not return after the spawner died")
	}
	read()
	if st.Success() || err == nil || !strings.Contains(err.Error(), "spawner") {
		t.Errorf("Wait after the spawner died: %v, %v", st, err)
	}

	// The next build gets a new spawner.
	g := newFixture(t, m, "/bin/busybox", "true")
	log := runPooled(t, pool, g, 1)
	if len(log) != 0 {
		t.Errorf("log: %q", log)
	}
	if got := childrenOf(t, os.Getpid(), "CAIRN_SANDBOX_INIT=spawner"); len(got) != 1 || got[0] == spawners[0] {
		t.Errorf("spawners after: %v (the dead one was %d)", got, spawners[0])
	}
}
