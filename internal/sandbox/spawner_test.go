//go:build linux

package sandbox_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
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
	spawner := parentOf(t, p.Pid())
	if !slices.Contains(childrenOf(t, os.Getpid(), "CAIRN_SANDBOX_INIT=spawner"), spawner) {
		read()
		p.Kill()
		t.Fatalf("init %d's parent %d is not a spawner of this process", p.Pid(), spawner)
	}
	syscall.Kill(spawner, syscall.SIGKILL)
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
	if got := childrenOf(t, os.Getpid(), "CAIRN_SANDBOX_INIT=spawner"); len(got) == 0 || slices.Contains(got, spawner) {
		t.Errorf("spawners after: %v (the dead one was %d)", got, spawner)
	}
}

// parentOf is pid's parent.
func parentOf(t *testing.T, pid int) int {
	t.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		t.Fatal(err)
	}
	return ppid
}
