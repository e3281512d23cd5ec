//go:build linux

package sandbox_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"strconv"
	"testing"
	"time"

	"cairn/internal/sandbox"
)

// logPipe gives the spec an *os.File log (what a pool needs) and returns
// what was written to it once the writer's copies are closed.
func logPipe(t *testing.T, spec *sandbox.Spec) func() []byte {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	spec.Log = w
	done := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(r)
		r.Close()
		done <- b
	}()
	return func() []byte {
		w.Close()
		return <-done
	}
}

// TestPool runs the probe three times through one pool: the first init is
// started on demand, the others were started ahead and get their log through
// the channel. Each must pass the same checks as a directly started sandbox.
func TestPool(t *testing.T) {
	probePooled(t, 3)
}

// probePooled runs the probe runs times through one pool in every mode and
// checks each report; after the first run it waits for a spare.
func probePooled(t *testing.T, runs int) {
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			pool := &sandbox.Pool{}
			defer pool.Close()
			for i := range runs {
				f := newFixture(t, m)
				log := runPooled(t, pool, f, i)
				var r probeReport
				if err := json.Unmarshal(log, &r); err != nil {
					t.Fatalf("run %d: probe report: %v\nlog:\n%s", i, err, log)
				}
				checkReport(t, m, f, &r)
				if i == 0 && runs > 1 {
					waitSpare(t)
				}
			}
		})
	}
}

// runPooled runs f's sandbox through pool, which must succeed, and returns its
// log; run numbers the messages.
func runPooled(t *testing.T, pool *sandbox.Pool, f *fixture, run int) []byte {
	t.Helper()
	read := logPipe(t, f.spec)
	p, err := pool.Start(context.Background(), f.spec)
	if err != nil {
		read()
		t.Fatalf("run %d: Start: %v", run, err)
	}
	st, err := p.Wait()
	log := read()
	if err != nil || !st.Success() {
		t.Fatalf("run %d: Wait: %v, %v\nlog:\n%s", run, st, err, log)
	}
	return log
}

// waitSpare waits until the pool's spare init has started.
func waitSpare(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); len(initsOf(t)) == 0; {
		if time.Now().After(deadline) {
			t.Fatal("no spare init after 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPoolCancel: a pooled build whose context ends is killed, and Wait says why.
func TestPoolCancel(t *testing.T) {
	m := modes()[0]
	pool := &sandbox.Pool{}
	defer pool.Close()
	warm := newFixture(t, m, "/bin/busybox", "true")
	read := logPipe(t, warm.spec)
	p, err := pool.Start(context.Background(), warm.spec)
	if err != nil {
		t.Fatal(err)
	}
	p.Wait()
	read()
	waitSpare(t)

	f := newFixture(t, m, "/bin/busybox", "sleep", "60")
	read = logPipe(t, f.spec)
	defer read()
	ctx, cancel := context.WithCancel(context.Background())
	p, err = pool.Start(ctx, f.spec)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	cancel()
	st, err := p.Wait()
	if err == nil || st.Success() || time.Since(t0) > 10*time.Second {
		t.Fatalf("canceled build: %v, %v after %v", st, err, time.Since(t0))
	}
}

// TestPoolSpareDies: a spare that died while waiting is noticed and replaced,
// and an idle spare goes away.
func TestPoolSpareDies(t *testing.T) {
	m := modes()[0]
	pool := &sandbox.Pool{Idle: 300 * time.Millisecond, Spares: 1}
	defer pool.Close()
	run := func() {
		t.Helper()
		f := newFixture(t, m, "/bin/busybox", "echo", "ran")
		read := logPipe(t, f.spec)
		p, err := pool.Start(context.Background(), f.spec)
		if err != nil {
			read()
			t.Fatal(err)
		}
		st, err := p.Wait()
		if log := read(); err != nil || !st.Success() || !bytes.Equal(log, []byte("ran\n")) {
			t.Fatalf("Wait: %v %v, log %q", st, err, log)
		}
	}
	run()
	waitSpare(t)
	inits := initsOf(t)
	if len(inits) != 1 {
		t.Fatalf("%d spare inits, want 1", len(inits))
	}
	if err := inits[0].Kill(); err != nil {
		t.Fatal(err)
	}
	inits[0].Wait()
	run()

	// The replacement goes away once idle.
	deadline := time.Now().Add(10 * time.Second)
	for len(initsOf(t)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("spares still there: %d", len(initsOf(t)))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// initsOf lists the sandbox inits this process started: its children, or
// its spawner's.
func initsOf(t *testing.T) []*os.Process {
	t.Helper()
	var out []*os.Process
	for _, sp := range childrenOf(t, os.Getpid(), "CAIRN_SANDBOX_INIT=spawner") {
		out = append(out, processes(childrenOf(t, sp, "CAIRN_SANDBOX_INIT=1"))...)
	}
	return append(out, processes(childrenOf(t, os.Getpid(), "CAIRN_SANDBOX_INIT=1"))...)
}

func processes(pids []int) []*os.Process {
	var out []*os.Process
	for _, pid := range pids {
		p, _ := os.FindProcess(pid)
		out = append(out, p)
	}
	return out
}

// childrenOf lists the live (running or sleeping) children of parent whose
// environment holds the variable setting env.
func childrenOf(t *testing.T, parent int, env string) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	ppid := []byte(" " + strconv.Itoa(parent) + " ")
	for _, e := range ents {
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 || !bytes.HasPrefix(stat[i+2:], []byte("S")) && !bytes.HasPrefix(stat[i+2:], []byte("R")) {
			continue
		}
		if !bytes.HasPrefix(stat[i+3:], ppid) {
			continue
		}
		environ, _ := os.ReadFile("/proc/" + e.Name() + "/environ")
		if !bytes.Contains(environ, append([]byte(env), 0)) {
			continue
		}
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, pid)
		}
	}
	return out
}
