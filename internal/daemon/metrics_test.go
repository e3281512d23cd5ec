package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"cairn/internal/testutil/nixtest"
)

// gathered returns every sample of td's metrics as "name{label=value,...}"
// (labels in the registry's order) → value; histograms give their count.
func gathered(t *testing.T, td *testDaemon) map[string]float64 {
	t.Helper()
	mfs, err := td.srv.Metrics.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			key := mf.GetName() + "{" + strings.Join(labels, ",") + "}"
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[key] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// TestMetrics: what Nix's clients do through the daemon shows in its
// metrics: connections, operations by name and result with their
// durations, builds by result, and what a collection deleted.
func TestMetrics(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix-build")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	td := newTestDaemon(t, [2]string{"sandbox-paths", "/bin/sh=/bin/busybox"})
	env := td.nixEnv()
	src := filepath.Join(t.TempDir(), "f")
	os.WriteFile(src, []byte("metrics\n"), 0o644)
	r := runNix(env, "nix-store", "--add", src)
	if r.code != 0 {
		t.Fatalf("nix-store --add: %+v", r)
	}
	if r := runNix(env, "nix-store", "--delete", strings.TrimSpace(r.stdout)); r.code != 0 {
		t.Fatalf("nix-store --delete: %+v", r)
	}
	invalid := "/nix/store/00000000000000000000000000000000-missing"
	if r := runNix(env, "nix-store", "--realise", invalid); r.code == 0 {
		t.Fatalf("nix-store --realise of an invalid path succeeded")
	}
	expr := `derivation { name = "metrics"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo built > $out" ]; }`
	if r := runNix(env, "nix-build", "--no-out-link", "-E", expr); r.code != 0 {
		t.Fatalf("nix-build: %+v", r)
	}
	var got map[string]float64
	for range 100 { // the last connection's end is counted once the daemon sees it
		if got = gathered(t, td); got["cairn_daemon_connections_open{}"] == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	checks := []struct {
		key string
		min float64
	}{
		{"cairn_daemon_connections_total{}", 4},
		{"cairn_daemon_gc_deleted_paths_total{}", 1},
		{"cairn_daemon_gc_freed_bytes_total{}", 1},
		{"cairn_daemon_operations_total{op=AddToStore,result=ok}", 1},
		{"cairn_daemon_operations_total{op=BuildPaths,result=error}", 1},
		{"cairn_daemon_operations_total{op=BuildPaths,result=ok}", 1},
		{"cairn_daemon_operation_duration_seconds{op=AddToStore}", 1},
		{"cairn_daemon_builds_total{status=Built}", 1},
		{"cairn_daemon_build_duration_seconds{}", 1},
	}
	for _, c := range checks {
		if got[c.key] < c.min {
			t.Errorf("%s = %v, want at least %v", c.key, got[c.key], c.min)
		}
	}
	if v := got["cairn_daemon_connections_open{}"]; v != 0 {
		t.Errorf("%v connections open after the clients are gone", v)
	}
	if v := got["cairn_daemon_operations_total{op=BuildPaths,result=ok}"]; v != 1 {
		t.Errorf("%v BuildPaths counted as ok, want the one that built", v)
	}
	if _, ok := got["process_cpu_seconds_total{}"]; !ok {
		t.Errorf("no process metrics")
	}
}
