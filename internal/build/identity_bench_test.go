package build

import (
	"context"
	"fmt"
	"testing"

	"cairn/internal/sandbox"
	"cairn/internal/storepath"
)

// BenchmarkUserLock is what a root daemon's build pays for its build user:
// the flock of STATE/userpool/<uid> (and reading /etc/group and
// /etc/passwd when they changed), and its release.
func BenchmarkUserLock(b *testing.B) {
	pool(b)
	p, err := newUserPool(Config{BuildUsersGroup: testPool}, b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		u, err := p.acquire(ctx, 1, true, nil)
		if err != nil {
			b.Fatal(err)
		}
		u.release()
	}
}

// BenchmarkCgroup is what a build's own cgroup costs: make it, open it,
// kill it (cgroup.kill) and remove it, without processes.
func BenchmarkCgroup(b *testing.B) {
	parent := testCgroup(b)
	if parent == "" {
		b.Skip("no cgroup to make build cgroups in")
	}
	b.ReportAllocs()
	for b.Loop() {
		cg, err := sandbox.NewCgroup(sandbox.Cgroup{Parent: parent})
		if err != nil {
			b.Fatal(err)
		}
		if err := cg.Remove(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBuildIdentity is BenchmarkBuild as root with the daemon's own
// ids and no cgroup, with a cgroup, and with a build user and a cgroup:
// the difference is what identities and cgroups cost a whole build.
func BenchmarkBuildIdentity(b *testing.B) {
	requireRoot(b)
	requireSandbox(b)
	for _, c := range []struct {
		name  string
		users bool
		cg    bool
	}{{"own-ids", false, false}, {"own-ids+cgroup", false, true}, {"build-user+cgroup", true, true}, {"build-user", true, false}} {
		b.Run(c.name, func(b *testing.B) {
			ctx := context.Background()
			st := testStore(b)
			cfg := Config{NoCgroups: !c.cg}
			if c.cg {
				if cfg.CgroupParent = testCgroup(b); cfg.CgroupParent == "" {
					b.Skip("no cgroups")
				}
			}
			if c.users {
				pool(b)
				cfg.BuildUsersGroup = testPool
			}
			bl, err := NewWithConfig(st, cfg)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(bl.Close)
			drvs := make([]storepath.StorePath, b.N)
			for i := range drvs {
				drvs[i] = addDrv(b, st, fmt.Sprintf("bench-%d", i), fmt.Sprintf("echo %d > $out", i), nil, nil)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				res, err := bl.Build(ctx, []Target{{Drv: drvs[i]}}, testOptions(), nil)
				if err != nil || res[0].Status != Built {
					b.Fatalf("%v %v", err, res[0].Err)
				}
			}
		})
	}
}

// BenchmarkKillUser is what a build user costs a build without a cgroup,
// before it and (on the host) after it: a process of the build user's
// that kills the user's every process.
func BenchmarkKillUser(b *testing.B) {
	_, uids := pool(b)
	b.ReportAllocs()
	for b.Loop() {
		if err := killUser(uids[len(uids)-1]); err != nil {
			b.Fatal(err)
		}
	}
}
