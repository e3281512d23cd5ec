//go:build linux

package sandbox_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"cairn/internal/sandbox"
)

// BenchmarkSetup measures a whole sandbox around `/bin/busybox true`: Start
// returns once the command has been executed (init reports just before
// execve), so "exec-ms" is the setup cost and "total-ms" adds the command and
// the teardown (Wait: the namespaces and mounts going away). Medians, as the
// first runs pay for cold caches.
func BenchmarkSetup(b *testing.B) {
	for _, m := range modes() {
		b.Run(m.name, func(b *testing.B) {
			f := newFixture(b, m, "/bin/busybox", "true")
			f.spec.Log = nil
			if dir, err := sandbox.DetectCgroup(); err == nil && m.name == "root" {
				b.Run("cgroup", func(b *testing.B) { benchSetup(b, f, dir) })
			}
			benchSetup(b, f, "")
		})
	}
}

// BenchmarkPoolSetup is BenchmarkSetup through a Pool, builds back to back:
// the init of the next build starts while this one runs, so "exec-ms" is what
// a build waits for when a spare is ready, and ns/op shows whether spares keep
// up with builds that take no time at all.
func BenchmarkPoolSetup(b *testing.B) {
	for _, m := range modes() {
		b.Run(m.name, func(b *testing.B) {
			f := newFixture(b, m, "/bin/busybox", "true")
			f.spec.Log = nil
			benchPool(b, f, 0)
		})
	}
}

// benchPool starts f's sandbox through a Pool b.N times, gap apart, and
// reports the median Start → exec as "exec-ms".
func benchPool(b *testing.B, f *fixture, gap time.Duration) {
	pool := &sandbox.Pool{}
	defer pool.Close()
	var toExec, toEnd []time.Duration
	b.ReportAllocs()
	for b.Loop() {
		t0 := time.Now()
		p, err := pool.Start(context.Background(), f.spec)
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		toExec = append(toExec, t1.Sub(t0))
		if st, err := p.Wait(); err != nil || !st.Success() {
			b.Fatalf("Wait: %v %v", st, err)
		}
		toEnd = append(toEnd, time.Since(t1))
		time.Sleep(gap)
	}
	b.ReportMetric(median(toExec), "exec-ms")
	b.ReportMetric(median(toEnd), "wait-ms")
}

// BenchmarkNet is BenchmarkSetup with a network stack attached, in a user
// namespace (what a fixed-output build pays): "none" is the same sandbox
// without one, measured alongside.
func BenchmarkNet(b *testing.B) {
	var m mode
	for _, m = range modes() {
		if m.userNS {
			break
		}
	}
	nets := append([]*sandbox.Net{nil}, stacks(b)...)
	for _, n := range nets {
		name := "none"
		if n != nil {
			name = n.Tool
		}
		b.Run(name, func(b *testing.B) {
			f := newFixture(b, m, "/bin/busybox", "true")
			f.spec.Log = nil
			f.spec.Net = n
			benchSetup(b, f, "")
		})
		// Through a pool: spares get their stack while they wait. A
		// fixed-output build downloads for a while, which gives the next
		// spare time to get ready: 150 ms here, between the builds.
		b.Run(name+"/pool", func(b *testing.B) {
			f := newFixture(b, m, "/bin/busybox", "true")
			f.spec.Log = nil
			f.spec.Net = n
			benchPool(b, f, 150*time.Millisecond)
		})
	}
}

func benchSetup(b *testing.B, f *fixture, cgroup string) {
	spec := *f.spec
	spec.Cgroup.Parent = cgroup
	var toExec, total []time.Duration
	b.ReportAllocs()
	for b.Loop() {
		t0 := time.Now()
		p, err := sandbox.Start(context.Background(), &spec)
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		st, err := p.Wait()
		if err != nil || !st.Success() {
			b.Fatalf("Wait: %v %v", st, err)
		}
		toExec = append(toExec, t1.Sub(t0))
		total = append(total, time.Since(t0))
	}
	b.ReportMetric(median(toExec), "exec-ms")
	b.ReportMetric(median(total), "total-ms")

}

func median(d []time.Duration) float64 {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return float64(d[len(d)/2]) / float64(time.Millisecond)
}
