// Package loadgen drives a daemon with many concurrent clients and measures it.
//
// Vocabulary:
//
//	client   one connection (a remote.Store with MaxConns 1), one op at a time
//	seed     paths added before the clock starts, which queries and NAR reads pick from
//	mix      "mixed": per op, 15% AddNar of a new small path, 45% QueryPathInfo,
//	         10% IsValidPath, 10% QueryValidPaths of 8 paths, 20% NarFromPath;
//	         "query": QueryPathInfo only
//	result   ops, errors, ops/s, latency median and p99 (overall and per op),
//	         the daemon's peak resident memory over its process tree
package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"cairn/internal/nar"
	"cairn/internal/nixhash"
	"cairn/internal/store"
	"cairn/internal/store/remote"
	"cairn/internal/storepath"
)

// Config says what load to generate.
type Config struct {
	Socket   string
	StoreDir storepath.StoreDir // DefaultStoreDir when empty
	Clients  int
	Duration time.Duration
	Mix      string // "mixed" or "query"
	Seed     int    // paths added before the run (default 500)
	AddSize  int    // file size of each added path in bytes (default 4096)
	PID      int    // the daemon's pid, for RSS sampling; 0 for none
	Salt     string // makes added paths unique across runs (default: the time)
}

// OpStats are the numbers of one kind of op.
type OpStats struct {
	Ops, Errors int64
	P50, P99    time.Duration
}

// Result is what a run measured.
type Result struct {
	Config
	Elapsed    time.Duration
	Ops        int64
	Errors     int64
	OpsPerSec  float64
	P50, P99   time.Duration
	PerOp      map[string]*OpStats
	PeakRSS    int64    // bytes, over the daemon's process tree
	StartRSS   int64    // bytes, before the run
	EndRSS     int64    // bytes, at the end
	FirstError []string // up to 5 error messages
}

const (
	opAdd   = "AddNar"
	opInfo  = "QueryPathInfo"
	opValid = "IsValidPath"
	opMany  = "QueryValidPaths"
	opNar   = "NarFromPath"
)

type sample struct {
	op  string
	d   time.Duration
	err error
}

// Run seeds the store, runs cfg.Clients clients for cfg.Duration and reports.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.StoreDir == "" {
		cfg.StoreDir = storepath.DefaultStoreDir
	}
	if cfg.Clients <= 0 {
		cfg.Clients = 1
	}
	if cfg.Seed <= 0 {
		cfg.Seed = 500
	}
	if cfg.AddSize <= 0 {
		cfg.AddSize = 4096
	}
	if cfg.Salt == "" {
		cfg.Salt = strconv.FormatInt(time.Now().UnixNano(), 36)
	}
	if cfg.Mix != "mixed" && cfg.Mix != "query" {
		return nil, fmt.Errorf("loadgen: unknown mix %q", cfg.Mix)
	}
	dial := remote.SocketDialer(cfg.Socket)
	seedStore := remote.New(cfg.StoreDir, dial, remote.Options{MaxConns: 8})
	defer seedStore.Close()
	seed := make([]storepath.StorePath, cfg.Seed)
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < cfg.Seed; i += 8 {
				info, narBytes := makePath(cfg, fmt.Sprintf("seed-%d", i))
				if err := seedStore.AddNar(ctx, info, bytes.NewReader(narBytes), store.AddNarOptions{}); err != nil {
					errs <- fmt.Errorf("loadgen: seed: %w", err)
					return
				}
				seed[i] = info.Path
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}

	clients := make([]*remote.Store, cfg.Clients)
	for i := range clients {
		clients[i] = remote.New(cfg.StoreDir, dial, remote.Options{MaxConns: 1})
		defer clients[i].Close()
		if err := clients[i].Ping(ctx); err != nil {
			return nil, fmt.Errorf("loadgen: client %d: %w", i, err)
		}
	}

	res := &Result{Config: cfg, PerOp: map[string]*OpStats{}}
	stopRSS := make(chan struct{})
	rssDone := make(chan struct{})
	if cfg.PID != 0 {
		res.StartRSS = TreeRSS(cfg.PID)
		go func() {
			defer close(rssDone)
			t := time.NewTicker(50 * time.Millisecond)
			defer t.Stop()
			for {
				res.PeakRSS = max(res.PeakRSS, TreeRSS(cfg.PID))
				select {
				case <-stopRSS:
					return
				case <-t.C:
				}
			}
		}()
	} else {
		close(rssDone)
	}

	samples := make([][]sample, cfg.Clients)
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			samples[i] = runClient(ctx, cfg, i, c, seed, deadline)
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	close(stopRSS)
	<-rssDone
	if cfg.PID != 0 {
		res.EndRSS = TreeRSS(cfg.PID)
		res.PeakRSS = max(res.PeakRSS, res.EndRSS)
	}

	var all []time.Duration
	per := map[string][]time.Duration{}
	for _, ss := range samples {
		for _, s := range ss {
			st := res.PerOp[s.op]
			if st == nil {
				st = &OpStats{}
				res.PerOp[s.op] = st
			}
			st.Ops++
			res.Ops++
			if s.err != nil {
				st.Errors++
				res.Errors++
				if len(res.FirstError) < 5 {
					res.FirstError = append(res.FirstError, s.op+": "+s.err.Error())
				}
				continue
			}
			all = append(all, s.d)
			per[s.op] = append(per[s.op], s.d)
		}
	}
	res.OpsPerSec = float64(res.Ops) / res.Elapsed.Seconds()
	res.P50, res.P99 = quantiles(all)
	for op, ds := range per {
		res.PerOp[op].P50, res.PerOp[op].P99 = quantiles(ds)
	}
	return res, nil
}

func quantiles(ds []time.Duration) (p50, p99 time.Duration) {
	if len(ds) == 0 {
		return 0, 0
	}
	slices.Sort(ds)
	return ds[len(ds)/2], ds[min(len(ds)-1, len(ds)*99/100)]
}

// makePath makes a NAR of one file of cfg.AddSize bytes, unique to cfg.Salt
// and name, and an input-addressed info for it.
func makePath(cfg Config, name string) (*store.PathInfo, []byte) {
	body := make([]byte, cfg.AddSize)
	tag := cfg.Salt + " " + name + "\n"
	for i := range body {
		body[i] = tag[i%len(tag)]
	}
	var buf bytes.Buffer
	w := nar.NewWriter(&buf)
	w.WriteHeader(&nar.Header{Type: nar.TypeRegular, Size: int64(len(body))})
	w.Write(body)
	w.Close()
	h := nixhash.Sum(nixhash.SHA256, buf.Bytes())
	p, _ := cfg.StoreDir.MakeStorePath("loadgen", nixhash.Sum(nixhash.SHA256, []byte(tag)), "loadgen-"+name)
	return &store.PathInfo{Path: p, NarHash: h, NarSize: uint64(buf.Len())}, buf.Bytes()
}

func runClient(ctx context.Context, cfg Config, id int, c *remote.Store, seed []storepath.StorePath, deadline time.Time) []sample {
	rng := rand.New(rand.NewPCG(uint64(id), uint64(len(cfg.Salt))))
	var out []sample
	adds := 0
	many := make([]storepath.StorePath, 8)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		op := opInfo
		if cfg.Mix == "mixed" {
			switch n := rng.IntN(100); {
			case n < 15:
				op = opAdd
			case n < 60:
				op = opInfo
			case n < 70:
				op = opValid
			case n < 80:
				op = opMany
			default:
				op = opNar
			}
		}
		p := seed[rng.IntN(len(seed))]
		var err error
		t0 := time.Now()
		switch op {
		case opAdd:
			adds++
			info, narBytes := makePath(cfg, fmt.Sprintf("c%d-%d", id, adds))
			t0 = time.Now()
			err = c.AddNar(ctx, info, bytes.NewReader(narBytes), store.AddNarOptions{})
		case opInfo:
			var info *store.PathInfo
			if info, err = c.QueryPathInfo(ctx, p); err == nil && info.Path != p {
				err = fmt.Errorf("asked for %s, got %s", p, info.Path)
			}
		case opValid:
			var ok bool
			if ok, err = c.IsValidPath(ctx, p); err == nil && !ok {
				err = fmt.Errorf("%s: not valid", p)
			}
		case opMany:
			for i := range many {
				many[i] = seed[rng.IntN(len(seed))]
			}
			var got []storepath.StorePath
			if got, err = c.QueryValidPaths(ctx, many); err == nil && len(got) == 0 {
				err = errors.New("no valid paths")
			}
		case opNar:
			var n countWriter
			if err = c.NarFromPath(ctx, p, &n); err == nil && n == 0 {
				err = errors.New("empty NAR")
			}
		}
		out = append(out, sample{op: op, d: time.Since(t0), err: err})
	}
	return out
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }

var _ io.Writer = (*countWriter)(nil)

// TreeRSS returns the resident memory in bytes of pid and all its
// descendants (nix-daemon forks a process per connection), from /proc.
func TreeRSS(pid int) int64 {
	kids := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// "pid (comm) state ppid …"; comm may hold spaces and parentheses.
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		kids[ppid] = append(kids[ppid], p)
	}
	var total int64
	todo := []int{pid}
	for len(todo) > 0 {
		p := todo[len(todo)-1]
		todo = append(todo[:len(todo)-1], kids[p]...)
		status, err := os.ReadFile("/proc/" + strconv.Itoa(p) + "/status")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				total += kb << 10
			}
		}
	}
	return total
}

// String formats r as a small report.
func (r *Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "clients=%d mix=%s duration=%v seed=%d\n", r.Clients, r.Mix, r.Elapsed.Round(time.Millisecond), r.Seed)
	fmt.Fprintf(&b, "ops=%d errors=%d ops/s=%.0f p50=%v p99=%v\n", r.Ops, r.Errors, r.OpsPerSec, r.P50, r.P99)
	ops := make([]string, 0, len(r.PerOp))
	for op := range r.PerOp {
		ops = append(ops, op)
	}
	slices.Sort(ops)
	for _, op := range ops {
		s := r.PerOp[op]
		fmt.Fprintf(&b, "  %-16s ops=%-8d errors=%-4d p50=%-10v p99=%v\n", op, s.Ops, s.Errors, s.P50, s.P99)
	}
	if r.PID != 0 {
		fmt.Fprintf(&b, "daemon RSS (process tree): start=%.1f MB peak=%.1f MB end=%.1f MB\n",
			float64(r.StartRSS)/(1<<20), float64(r.PeakRSS)/(1<<20), float64(r.EndRSS)/(1<<20))
	}
	for _, e := range r.FirstError {
		fmt.Fprintf(&b, "error: %s\n", e)
	}
	return b.String()
}
