// Package metrics counts what a daemon does, for Prometheus: connections,
// worker-protocol operations with their outcome and duration, and the builds
// they asked for by result. A nil *Daemon counts nothing, so the daemon calls
// it whether or not metrics were asked for.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Daemon holds a daemon's metrics, in a registry of their own (with the Go
// runtime's and the process's).
type Daemon struct {
	reg       *prometheus.Registry
	conns     prometheus.Counter
	connsOpen prometheus.Gauge
	ops       *prometheus.CounterVec
	opSeconds *prometheus.HistogramVec
	builds    *prometheus.CounterVec
	buildSecs prometheus.Histogram
	gcPaths   prometheus.Counter
	gcBytes   prometheus.Counter
	// series keeps each operation's three series, so that counting one
	// looks up no labels, which hashes them and takes a lock (38 against
	// 100 ns an operation, BenchmarkOperation).
	series sync.Map // op name → *opSeries
}

type opSeries struct {
	ok, failed prometheus.Counter
	seconds    prometheus.Observer
}

// New makes the metrics of a daemon.
func New() *Daemon {
	d := &Daemon{
		reg: prometheus.NewRegistry(),
		conns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cairn_daemon_connections_total",
			Help: "Client connections accepted.",
		}),
		connsOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cairn_daemon_connections_open",
			Help: "Client connections being served.",
		}),
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cairn_daemon_operations_total",
			Help: "Worker-protocol operations served, by operation and result (ok, error).",
		}, []string{"op", "result"}),
		opSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "cairn_daemon_operation_duration_seconds",
			Help: "Time from reading an operation to its reply, by operation.",
			// From a path-info lookup (tens of µs) to a long build.
			Buckets: prometheus.ExponentialBuckets(25e-6, 4, 12),
		}, []string{"op"}),
		builds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cairn_daemon_builds_total",
			Help: "Derivations clients asked to build, by result (Nix's BuildResult status).",
		}, []string{"status"}),
		buildSecs: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "cairn_daemon_build_duration_seconds",
			Help: "How long the derivations clients asked for took to build, those that built.",
			// From a trivial build (tens of ms) to hours.
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 12),
		}),
		gcPaths: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cairn_daemon_gc_deleted_paths_total",
			Help: "Store paths deleted by the collections clients asked for and the automatic ones (min-free).",
		}),
		gcBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cairn_daemon_gc_freed_bytes_total",
			Help: "Bytes freed by the collections clients asked for and the automatic ones (min-free).",
		}),
	}
	d.reg.MustRegister(d.conns, d.connsOpen, d.ops, d.opSeconds, d.builds, d.buildSecs, d.gcPaths, d.gcBytes,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return d
}

// Registry is where the metrics are registered.
func (d *Daemon) Registry() *prometheus.Registry { return d.reg }

// ConnOpened counts a connection accepted; ConnClosed its end.
func (d *Daemon) ConnOpened() {
	if d != nil {
		d.conns.Inc()
		d.connsOpen.Inc()
	}
}

func (d *Daemon) ConnClosed() {
	if d != nil {
		d.connsOpen.Dec()
	}
}

// Operation counts one operation named op that took dur and failed or not.
// op must come from a fixed set (the protocol's names), as each becomes a
// series.
func (d *Daemon) Operation(op string, dur time.Duration, failed bool) {
	if d == nil {
		return
	}
	v, ok := d.series.Load(op)
	if !ok {
		v, _ = d.series.LoadOrStore(op, &opSeries{
			ok:      d.ops.WithLabelValues(op, "ok"),
			failed:  d.ops.WithLabelValues(op, "error"),
			seconds: d.opSeconds.WithLabelValues(op),
		})
	}
	se := v.(*opSeries)
	if failed {
		se.failed.Inc()
	} else {
		se.ok.Inc()
	}
	se.seconds.Observe(dur.Seconds())
}

// Build counts a derivation a client asked for, by its result's status,
// and how long it took to build (0: it did not build).
func (d *Daemon) Build(status string, ran time.Duration) {
	if d == nil {
		return
	}
	d.builds.WithLabelValues(status).Inc()
	if ran > 0 {
		d.buildSecs.Observe(ran.Seconds())
	}
}

// Collected counts what a collection deleted.
func (d *Daemon) Collected(paths int, bytes uint64) {
	if d != nil {
		d.gcPaths.Add(float64(paths))
		d.gcBytes.Add(float64(bytes))
	}
}

// Serve serves the metrics at http://addr/metrics until ctx ends, and
// returns the address it listens on (addr may ask for port 0).
func (d *Daemon) Serve(ctx context.Context, addr string) (net.Addr, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(d.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			ln.Close()
		}
	}()
	return ln.Addr(), nil
}
