package remotebuild

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var linuxReq = Request{System: "x86_64-linux"}

func machine(uri string, maxJobs, speed uint64) *Machine {
	return &Machine{StoreURI: uri, Systems: []string{"x86_64-linux"}, MaxJobs: maxJobs, SpeedFactor: speed}
}

// lockPath is the slot lock file Nix's hook uses for slot n of m.
func lockPath(state string, m *Machine, n int) string {
	return filepath.Join(state, "current-load", fmt.Sprintf("%s-%d", escapeURI(m.StoreURI), n))
}

// hold flocks path on a descriptor of its own, as another process (Nix's
// hook) holding the slot would, until the test ends.
func hold(t *testing.T, path string) *os.File {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o777); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatalf("hold %s: %v", path, err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// holdSlots makes the first n slots of m busy.
func holdSlots(t *testing.T, state string, m *Machine, n int) {
	for i := range n {
		hold(t, lockPath(state, m, i))
	}
}

// locked reports whether some open file holds a flock on path.
func locked(t *testing.T, path string) bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return true
	}
	return false
}

func choose(t *testing.T, s *Scheduler, req Request) (*Slot, Decision, string) {
	t.Helper()
	slot, d, msg, err := s.Choose(context.Background(), "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-foo.drv", req)
	if err != nil {
		t.Fatalf("Choose: %v", err)
	}
	if (slot != nil) != (d == Accept) {
		t.Fatalf("Choose: slot %v with decision %v", slot, d)
	}
	if slot != nil {
		t.Cleanup(slot.Release)
	}
	return slot, d, msg
}

// accepts checks that Choose takes slot n of want.
func accepts(t *testing.T, s *Scheduler, req Request, state string, want *Machine, n int) *Slot {
	t.Helper()
	slot, d, msg := choose(t, s, req)
	if d != Accept {
		t.Fatalf("decision %v (%q), want Accept of %s", d, msg, want.StoreURI)
	}
	if slot.Machine != want || slot.lock.Name() != lockPath(state, want, n) {
		t.Fatalf("slot %s (%s), want %s", slot.Machine.StoreURI, slot.lock.Name(), lockPath(state, want, n))
	}
	if !locked(t, slot.lock.Name()) {
		t.Fatalf("slot %s is not locked", slot.lock.Name())
	}
	return slot
}

const wantNotFound1 = "Failed to find a machine for remote build!\n" +
	"derivation: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-foo.drv\n" +
	"required (system, features): (x86_64-linux, )\n" +
	"1 available machines:\n" +
	"(systems, maxjobs, supportedFeatures, mandatoryFeatures)\n" +
	"(x86_64-linux, 1, , )"

func TestChooseOneSlot(t *testing.T) {
	state := t.TempDir()
	m := machine("ssh://user@host?remote-program=/bin/x", 1, 1)
	s := NewScheduler([]*Machine{m}, state)

	slot := accepts(t, s, linuxReq, state, m, 0)
	// The name is Nix's: every '/' of the URI as '_'.
	if want := filepath.Join(state, "current-load", "ssh:__user@host?remote-program=_bin_x-0"); slot.lock.Name() != want {
		t.Errorf("lock file %s, want %s", slot.lock.Name(), want)
	}
	if locked(t, filepath.Join(state, "current-load", "main-lock")) {
		t.Error("main-lock still held after Choose")
	}

	// Busy: postpone when this machine cannot build, else decline.
	if got, d, msg := choose(t, s, linuxReq); d != Postpone || msg != "" || got != nil {
		t.Errorf("busy, cannot build locally: %v %q, want Postpone", d, msg)
	}
	local := linuxReq
	local.CanBuildLocally = true
	if _, d, msg := choose(t, s, local); d != Decline || msg != wantNotFound1 {
		t.Errorf("busy, can build locally: %v\n%s\nwant Decline with\n%s", d, msg, wantNotFound1)
	}

	slot.Release()
	slot.Release() // twice is harmless
	accepts(t, s, linuxReq, state, m, 0)
}

func TestChooseTwoSlots(t *testing.T) {
	state := t.TempDir()
	m := machine("ssh://host", 2, 1)
	s := NewScheduler([]*Machine{m}, state)
	a := accepts(t, s, linuxReq, state, m, 0)
	accepts(t, s, linuxReq, state, m, 1)
	if _, d, _ := choose(t, s, linuxReq); d != Postpone {
		t.Errorf("both slots held: %v, want Postpone", d)
	}
	// The freed slot is taken again, the lowest free one first.
	a.Release()
	accepts(t, s, linuxReq, state, m, 0)
}

func TestChooseHeldByOtherProcess(t *testing.T) {
	// A slot flocked on another descriptor (Nix's hook) counts as busy.
	state := t.TempDir()
	m := machine("ssh://host", 3, 1)
	hold(t, lockPath(state, m, 1))
	s := NewScheduler([]*Machine{m}, state)
	accepts(t, s, linuxReq, state, m, 0)
	accepts(t, s, linuxReq, state, m, 2)
	if _, d, _ := choose(t, s, linuxReq); d != Postpone {
		t.Errorf("all slots held: %v, want Postpone", d)
	}
}

func TestChooseLoadBalancing(t *testing.T) {
	type spec struct {
		speed uint64
		load  int // slots held before Choose
		jobs  uint64
	}
	for _, tt := range []struct {
		name     string
		machines []spec
		want     int
	}{
		{"lower load", []spec{{1, 1, 32}, {1, 0, 32}}, 1},
		{"lower load over speed", []spec{{10, 20, 32}, {1, 1, 32}}, 1},                      // 20/10 = 2 > 1/1
		{"integer division ties, then faster", []spec{{1, 0, 32}, {4, 3, 32}}, 1},           // 3/4 = 0 = 0/1
		{"faster kept when it comes first", []spec{{4, 3, 32}, {1, 0, 32}}, 0},              // same tie, other order
		{"truncation beats the real ratio", []spec{{1, 0, 32}, {2, 1, 32}}, 1},              // 1/2 = 0, though 0.5 > 0
		{"same ratio and speed, lower load", []spec{{4, 3, 32}, {4, 1, 32}}, 1},             // 3/4 = 1/4 = 0
		{"all equal, first kept", []spec{{2, 1, 32}, {2, 1, 32}, {2, 1, 32}}, 0},            // nothing strictly better
		{"third is best", []spec{{1, 2, 32}, {3, 3, 32}, {3, 2, 32}}, 2},                    // 2, 1, 0
		{"busy machine skipped", []spec{{100, 4, 4}, {1, 3, 32}}, 1},                        // the first has no free slot
		{"same quotient, higher speed beats lower load", []spec{{3, 0, 32}, {5, 4, 32}}, 1}, // 0/3 = 4/5 = 0
	} {
		t.Run(tt.name, func(t *testing.T) {
			state := t.TempDir()
			var ms []*Machine
			for i, sp := range tt.machines {
				m := machine(fmt.Sprintf("ssh://m%d", i), sp.jobs, sp.speed)
				holdSlots(t, state, m, sp.load)
				ms = append(ms, m)
			}
			s := NewScheduler(ms, state)
			want := ms[tt.want]
			accepts(t, s, linuxReq, state, want, tt.machines[tt.want].load)
			// The machines not chosen keep no lock of Choose's.
			for i, m := range ms {
				if m == want || uint64(tt.machines[i].load) == m.MaxJobs {
					continue
				}
				if p := lockPath(state, m, tt.machines[i].load); locked(t, p) {
					t.Errorf("%s left locked", p)
				}
			}
		})
	}
}

func TestChooseWrongType(t *testing.T) {
	state := t.TempDir()
	m := &Machine{StoreURI: "ssh://a", Systems: []string{"x86_64-linux", "i686-linux"}, MaxJobs: 1, SpeedFactor: 1,
		SupportedFeatures: []string{"big", "kvm"}, MandatoryFeatures: []string{"bench"}}
	n := &Machine{StoreURI: "ssh://b", Systems: []string{"aarch64-linux"}, MaxJobs: 2, SpeedFactor: 1}
	s := NewScheduler([]*Machine{m, n}, state)
	machines := "2 available machines:\n(systems, maxjobs, supportedFeatures, mandatoryFeatures)\n" +
		"(x86_64-linux, i686-linux, 1, big, kvm, bench)\n(aarch64-linux, 2, , )"
	for _, req := range []Request{
		{System: "riscv64-linux"}, // wrong system
		{System: "x86_64-linux", Features: []string{"bench", "nixos-test"}}, // unsupported feature
		{System: "x86_64-linux", Features: []string{"kvm"}},                 // mandatory "bench" not asked for
	} {
		// No machine of the right type: decline even if this one cannot build.
		_, d, msg := choose(t, s, req)
		want := "Failed to find a machine for remote build!\nderivation: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-foo.drv\n" +
			fmt.Sprintf("required (system, features): (%s, %s)\n", req.System, strings.Join(req.Features, ", ")) + machines
		if d != Decline || msg != want {
			t.Errorf("%+v: %v\n%s\nwant Decline with\n%s", req, d, msg, want)
		}
	}
	accepts(t, s, Request{System: "i686-linux", Features: []string{"bench", "big"}}, state, m, 0).Release()
	accepts(t, s, Request{System: "builtin", Features: []string{"bench"}}, state, m, 0)
}

func TestChooseDisable(t *testing.T) {
	state := t.TempDir()
	a, b := machine("ssh://a", 1, 1), machine("ssh://b", 1, 1)
	s := NewScheduler([]*Machine{a, b}, state)
	s.Disable(a)
	accepts(t, s, linuxReq, state, b, 0)
	// Nix's hook does not even open a disabled machine's slot locks.
	if _, err := os.Stat(lockPath(state, a, 0)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("disabled machine's slot lock: %v", err)
	}
	// With b busy and a disabled, no machine is of the right type any more:
	// decline even though this machine cannot build.
	s.Disable(b)
	if _, d, msg := choose(t, s, linuxReq); d != Decline || msg == "" {
		t.Errorf("all disabled: %v %q, want Decline with a message", d, msg)
	}
	// Disabling is per scheduler: a new one takes a.
	accepts(t, NewScheduler([]*Machine{a, b}, state), linuxReq, state, a, 0)
}

func TestChooseMaxJobsZero(t *testing.T) {
	// A machine without slots is of the right type but never free.
	state := t.TempDir()
	s := NewScheduler([]*Machine{machine("ssh://a", 0, 1)}, state)
	if _, d, _ := choose(t, s, linuxReq); d != Postpone {
		t.Errorf("%v, want Postpone", d)
	}
}

func TestChooseMainLockCancel(t *testing.T) {
	state := t.TempDir()
	s := NewScheduler([]*Machine{machine("ssh://a", 1, 1)}, state)
	main := hold(t, filepath.Join(state, "current-load", "main-lock"))

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if slot, _, _, err := s.Choose(ctx, "x.drv", linuxReq); !errors.Is(err, context.Canceled) || slot != nil {
		t.Errorf("cancelled: slot %v, error %v; want context.Canceled", slot, err)
	}

	// A wait that is already polling ends at the deadline too.
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, _, _, err := s.Choose(ctx, "x.drv", linuxReq); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("deadline: error %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("deadline noticed after %v", d)
	}

	// Once the other holder lets go, Choose proceeds.
	done := make(chan error, 1)
	go func() {
		slot, d, _, err := s.Choose(context.Background(), "x.drv", linuxReq)
		if err == nil && d != Accept {
			err = fmt.Errorf("decision %v", d)
		}
		slot.Release()
		done <- err
	}()
	main.Close()
	if err := <-done; err != nil {
		t.Errorf("after unlock: %v", err)
	}
}

func TestChooseStateDirErrors(t *testing.T) {
	// current-load cannot be made: the error names it.
	state := filepath.Join(t.TempDir(), "file")
	writeFile(t, state, "")
	s := NewScheduler([]*Machine{machine("ssh://a", 1, 1)}, state)
	if _, _, _, err := s.Choose(context.Background(), "x.drv", linuxReq); err == nil {
		t.Error("Choose with a file as state dir succeeded")
	}
}

func TestUploadLock(t *testing.T) {
	state := t.TempDir()
	uri := "ssh://host?remote-store=/x"
	release, hogged, err := UploadLock(context.Background(), state, uri, time.Second)
	if err != nil || hogged {
		t.Fatalf("free lock: hogged %v, %v", hogged, err)
	}
	if _, err := os.Stat(filepath.Join(state, "current-load", "ssh:__host?remote-store=_x.upload-lock")); err != nil {
		t.Errorf("lock file: %v", err)
	}
	// Held: the wait runs out and the copy goes ahead.
	r2, hogged, err := UploadLock(context.Background(), state, uri, 50*time.Millisecond)
	if err != nil || !hogged {
		t.Fatalf("held lock: hogged %v, %v", hogged, err)
	}
	r2()
	release()
	// Cancelled while waiting: an error.
	release, _, _ = UploadLock(context.Background(), state, uri, time.Second)
	defer release()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := UploadLock(ctx, state, uri, time.Second); err == nil {
		t.Error("a cancelled wait took the lock")
	}
}
