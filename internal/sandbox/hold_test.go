//go:build linux

package sandbox_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"cairn/internal/sandbox"
)

// starter is sandbox.Start or a Pool's Start.
type starter func(ctx context.Context, spec *sandbox.Spec) (*sandbox.Process, error)

// TestHold: a held sandbox is set up but runs its command only after Go; one
// killed before Go never runs it; a setup failure comes back from Go. Each
// directly and through a pool.
func TestHold(t *testing.T) {
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			pool := &sandbox.Pool{}
			defer pool.Close()
			for _, how := range []struct {
				name  string
				start starter
			}{{"direct", sandbox.Start}, {"pool", pool.Start}} {
				t.Run(how.name, func(t *testing.T) {
					for i := range 2 { // the pool's second start gets a spare
						testHold(t, m, how.start, i)
					}
				})
			}
		})
	}
}

func testHold(t *testing.T, m mode, start starter, run int) {
	ctx := context.Background()
	f := newFixture(t, m, "/bin/busybox", "sh", "-c", "echo ran > /build/ran")
	read := logPipe(t, f.spec)
	f.spec.Hold = true
	ran := filepath.Join(f.spec.BuildDir, "ran")

	p, err := start(ctx, f.spec)
	if err != nil {
		read()
		t.Fatalf("run %d: Start: %v", run, err)
	}
	time.Sleep(50 * time.Millisecond) // long enough for the command to have run, were it not held
	if _, err := os.Stat(ran); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("run %d: the held command ran before Go (%v)", run, err)
	}
	if err := p.Go(ctx); err != nil {
		read()
		t.Fatalf("run %d: Go: %v", run, err)
	}
	st, err := p.Wait()
	log := read()
	if err != nil || !st.Success() {
		t.Fatalf("run %d: Wait: %v %v\nlog: %s", run, st, err, log)
	}
	if b, err := os.ReadFile(ran); err != nil || string(b) != "ran\n" {
		t.Fatalf("run %d: after Go: %q %v", run, b, err)
	}

	// Killed while held: the command never runs.
	os.Remove(ran)
	read = logPipe(t, f.spec)
	if p, err = start(ctx, f.spec); err != nil {
		read()
		t.Fatalf("run %d: Start: %v", run, err)
	}
	p.Kill()
	p.Wait()
	read()
	if _, err := os.Stat(ran); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("run %d: a sandbox killed while held ran its command (%v)", run, err)
	}

	// A setup failure (a bind whose source is missing) comes back from Go.
	f.spec.Binds = append(f.spec.Binds, sandbox.Bind{Source: "/nonexistent-cairn-bind", Target: "/x"})
	read = logPipe(t, f.spec)
	p, err = start(ctx, f.spec)
	if err == nil {
		err = p.Go(ctx)
	}
	read()
	var se *sandbox.SetupError
	if !errors.As(err, &se) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("run %d: a held sandbox with a missing bind: %v, want a SetupError for ENOENT", run, err)
	}
}
