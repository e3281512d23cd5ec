package metrics

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestServe: the counts reach the HTTP endpoint in Prometheus' text format,
// and the endpoint stops with its context.
func TestServe(t *testing.T) {
	d := New()
	d.ConnOpened()
	d.Operation("QueryPathInfo", 30*time.Microsecond, false)
	d.Operation("QueryPathInfo", 2*time.Millisecond, true)
	d.Build("Built", 1500*time.Millisecond)
	d.Build("AlreadyValid", 0)
	d.ConnClosed()
	ctx, cancel := context.WithCancel(context.Background())
	addr, err := d.Serve(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		"cairn_daemon_connections_total 1\n",
		"cairn_daemon_connections_open 0\n",
		`cairn_daemon_operations_total{op="QueryPathInfo",result="ok"} 1` + "\n",
		`cairn_daemon_operations_total{op="QueryPathInfo",result="error"} 1` + "\n",
		`cairn_daemon_operation_duration_seconds_count{op="QueryPathInfo"} 2` + "\n",
		`cairn_daemon_operation_duration_seconds_bucket{op="QueryPathInfo",le="0.0001"} 1` + "\n",
		`cairn_daemon_builds_total{status="Built"} 1` + "\n",
		`cairn_daemon_builds_total{status="AlreadyValid"} 1` + "\n",
		"cairn_daemon_build_duration_seconds_count 1\n",
		"cairn_daemon_build_duration_seconds_sum 1.5\n",
		"go_goroutines ",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("no %q in:\n%s", want, body)
		}
	}
	cancel()
	for range 100 {
		if _, err := http.Get("http://" + addr.String() + "/metrics"); err != nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Error("the endpoint still answers after its context ended")
}

// A nil Daemon counts nothing and does not fail.
func TestNil(t *testing.T) {
	var d *Daemon
	d.ConnOpened()
	d.Operation("QueryPathInfo", time.Millisecond, false)
	d.Build("Built", time.Second)
	d.ConnClosed()
}

// BenchmarkOperation is what counting costs an operation.
func BenchmarkOperation(b *testing.B) {
	d := New()
	for b.Loop() {
		d.Operation("QueryPathInfo", 20*time.Microsecond, false)
	}
}
