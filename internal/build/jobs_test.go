package build

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"cairn/internal/storepath"
)

// TestMaxJobs: however far ahead builds are set up, no more than max-jobs
// builders run at once. Each builder notes when it ran (the machine's
// uptime, which the sandbox shares) and lasts 0.3 s.
func TestMaxJobs(t *testing.T) {
	requireSandbox(t)
	for _, jobs := range []int{1, 2} {
		t.Run(fmt.Sprint(jobs), func(t *testing.T) {
			st := testStore(t)
			b := newBuilder(t, st)
			opts := testOptions()
			opts.MaxJobs = jobs
			var targets []Target
			var outs []storepath.StorePath
			for i := range 5 {
				drv := addDrv(t, st, fmt.Sprintf("jobs-%d-%d", jobs, i),
					"read a x < /proc/uptime; sleep 0.3; read b x < /proc/uptime; echo $a $b > $out", nil, nil)
				targets = append(targets, Target{Drv: drv})
				d, err := b.readDrv(context.Background(), drv)
				if err != nil {
					t.Fatal(err)
				}
				outs = append(outs, d.Outputs["out"].Path)
			}
			res, err := b.Build(context.Background(), targets, opts, nil)
			if err != nil {
				t.Fatal(err)
			}
			type event struct {
				at    float64
				delta int
			}
			var events []event
			for i, r := range res {
				if r.Status != Built {
					t.Fatalf("build %d: %v %v", i, r.Status, r.Err)
				}
				b, err := os.ReadFile(st.RealPath(outs[i]))
				if err != nil {
					t.Fatal(err)
				}
				f := strings.Fields(string(b))
				start, err1 := strconv.ParseFloat(f[0], 64)
				end, err2 := strconv.ParseFloat(f[1], 64)
				if err1 != nil || err2 != nil {
					t.Fatalf("build %d wrote %q", i, b)
				}
				// /proc/uptime has 10 ms steps: shrink each run by one so
				// that runs back to back do not look overlapped.
				events = append(events, event{start + 0.01, +1}, event{end - 0.01, -1})
			}
			slices.SortFunc(events, func(a, b event) int {
				if a.at != b.at {
					if a.at < b.at {
						return -1
					}
					return 1
				}
				return a.delta - b.delta // ends first
			})
			running, most := 0, 0
			for _, e := range events {
				running += e.delta
				most = max(most, running)
			}
			if most > jobs {
				t.Errorf("%d builders ran at once with max-jobs %d", most, jobs)
			}
			t.Logf("at most %d builders at once", most)
		})
	}
}
