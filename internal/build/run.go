package build

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"cairn/internal/derivation"
	"cairn/internal/sandbox"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
)

// Limits on what a builder sends back.
const (
	// MaxLogLine is the longest log line passed on whole; longer lines are
	// cut into pieces of this size.
	MaxLogLine = 64 << 10
	// sandboxUID and sandboxGID are the ids the builder has inside the
	// sandbox, as in Nix 2.8.
	sandboxUID = 1000
	sandboxGID = 100
)

func numCPU() int { return runtime.NumCPU() }

// build runs g's builder and registers its outputs. The inputs are valid.
func (b *Builder) build(g *goal, r *request) (Status, error) {
	ctx := g.ctx
	drv := g.drv
	opts := r.opts
	if handled, status, err := b.tryRemote(g, r); handled {
		return status, err
	}
	if opts.MaxJobs == 0 {
		// As Nix's worker: whether remote builders were there to try.
		if sched, _ := r.remoteScheduler(b.store.StateDir()); sched != nil {
			return MiscFailure, errors.New("unable to start any build; remote machines may not have all required system features." +
				"\nhttps://nixos.org/manual/nix/stable/advanced-topics/distributed-builds.html")
		}
		return MiscFailure, errors.New("unable to start any build; either increase '--max-jobs' or enable remote builds." +
			"\nhttps://nixos.org/manual/nix/stable/advanced-topics/distributed-builds.html")
	}
	required := requiredFeatures(drv)
	if !platformHere(drv, opts) && !isBuiltin(drv) || !featuresHere(required, opts) {
		have := slices.Clone(opts.SystemFeatures)
		slices.Sort(have)
		return MiscFailure, fmt.Errorf("a '%s' with features {%s} is required to build '%s', but I am a '%s' with features {%s}",
			hl(drv.Platform), hl(strings.Join(required, ", ")), hl(g.drvPath.String()), hl(opts.System), hl(strings.Join(slices.Compact(have), ", ")))
	}
	sl := &slot{r: r}
	if err := sl.prepare(ctx); err != nil {
		return MiscFailure, err
	}
	defer sl.release()

	st := b.store
	var outs []storepath.StorePath
	for _, name := range drv.OutputNames() {
		outs = append(outs, drv.Outputs[name].Path)
	}
	// A collector must not take the outputs (or their lock files) for
	// garbage before they are registered: hold the GC lock shared until
	// then (a collector that runs now is waited for).
	releaseGC, err := st.HoldGC(ctx)
	if err != nil {
		return MiscFailure, err
	}
	defer releaseGC()
	locks, err := st.LockStorePaths(ctx, outs)
	if err != nil {
		return MiscFailure, err
	}
	built := false
	defer func() { locks.Unlock(built) }()
	// Look again, now that nobody else builds them. (A repair goes on: it
	// looked at the contents already, and another one would not be worse.)
	if _, missing, err := b.missing(ctx, drv, nil); err != nil {
		return MiscFailure, err
	} else if !missing && g.mode == Normal {
		built = true
		return AlreadyValid, nil
	} else if missing && g.mode == Check {
		return MiscFailure, notCheckable(g.drvPath)
	}

	// Rounds: the outputs of all but the last are compared, not kept.
	g.rounds = 1
	if kind, _ := drv.Type(); kind != derivation.CAFixed && g.mode != Check {
		g.rounds += opts.Repeat
	}
	for g.round = 1; ; g.round++ {
		status, err := b.runBuild(g, r, sl, false)
		if errors.Is(err, errSandboxRefused) {
			// sandbox-fallback: the kernel refused the namespaces, and
			// nothing of the build ran; once more on the host, as Nix.
			g.timesBuilt--
			status, err = b.runBuild(g, r, sl, true)
		}
		if err != nil || !status.Success() || g.round >= g.rounds {
			built = status.Success()
			return status, err
		}
	}
}

// slot is one build's place among its request's builds: max-jobs of them
// may be set up ahead (prepare: dirs, sandbox, everything but the builder's
// exec) while max-jobs builders run (run). Registering the outputs happens
// after the run's place is given back, so with max-jobs 1 the next builder
// runs while the last one's outputs are hashed and registered, and no more
// than max-jobs builders ever run at once.
type slot struct {
	r                  *request
	preparing, running bool
}

func (s *slot) prepare(ctx context.Context) error {
	select {
	case s.r.prep <- struct{}{}:
		s.preparing = true
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run waits for a place to run the builder and gives back the place
// prepare took.
func (s *slot) run(ctx context.Context) error {
	if s.running {
		return nil
	}
	select {
	case s.r.jobs <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.running = true
	if s.preparing {
		<-s.r.prep
		s.preparing = false
	}
	return nil
}

func (s *slot) stopRunning() {
	if s.running {
		<-s.r.jobs
		s.running = false
	}
}

func (s *slot) release() {
	s.stopRunning()
	if s.preparing {
		<-s.r.prep
		s.preparing = false
	}
}

// buildDirs are one build's directories on the host, all inside the
// builder's 0700 builds dir.
type buildDirs struct {
	build string // builds/nix-build-<name>-<pid>-<n>: the builder's /build
	root  string // the sandbox root: builds/root, shared (each build mounts its own tmpfs on it, privately)
	store string // builds/nix-build-…-<n>.store: the writable store dir inside the sandbox (sandboxed builds only)
	// uid, gid and count are the builder's ids on the host: it owns build,
	// its group may write in store, and what it leaves must be owned by
	// [uid, uid+count).
	uid, gid, count int
}

// outputDir is where the builder leaves output p.
func (d *buildDirs) outputDir(st *local.Store, p storepath.StorePath) string {
	if d.store != "" {
		return filepath.Join(d.store, p.Base())
	}
	return st.RealPath(p)
}

// errSandboxRefused says the kernel refused a build's namespaces where
// sandbox-fallback lets it run on the host instead.
var errSandboxRefused = errors.New("the kernel refused the sandbox's namespaces")

// runBuild runs one round of g's build; onHost runs it outside the sandbox
// (sandbox-fallback after errSandboxRefused).
func (b *Builder) runBuild(g *goal, r *request, sl *slot, onHost bool) (status Status, err error) {
	ctx := g.ctx
	drv := g.drv
	opts := r.opts
	st := b.store
	sandboxed, err := useSandbox(drv, g.drvPath, opts)
	if err != nil {
		return MiscFailure, err
	}
	diverted := st.RealStoreDir() != string(st.StoreDir())
	sandboxed = (sandboxed || diverted) && !onHost
	if g.mode != Normal && !sandboxed {
		return MiscFailure, fmt.Errorf("%w: checking or repairing '%s' without the sandbox", store.ErrUnsupported, g.drvPath)
	}

	id, release, err := b.identity(g, r, sandboxed)
	if err != nil {
		return MiscFailure, err
	}
	defer release()

	inputs, err := b.inputClosure(ctx, drv)
	if err != nil {
		return MiscFailure, err
	}

	dirs, err := b.getDirs(g.drvPath, sandboxed, inputs, id)
	if err != nil {
		return MiscFailure, err
	}
	keep := false
	defer func() {
		if !keep {
			b.putDirs(dirs)
		}
	}()

	outputs := map[string]storepath.StorePath{}
	for name, o := range drv.Outputs {
		outputs[name] = o.Path
		if !sandboxed {
			// A leftover from an interrupted build is in the way.
			if err := removeAll(st.RealPath(o.Path)); err != nil {
				return MiscFailure, err
			}
		}
	}
	buildTop := dirs.build
	if sandboxed {
		buildTop = opts.BuildDirTarget
	}
	env, err := MakeEnv(drv, EnvParams{StoreDir: st.StoreDir(), BuildTop: buildTop, Cores: opts.Cores, Outputs: outputs, Getenv: os.Getenv})
	if err != nil {
		return MiscFailure, err
	}
	if _, structured := drv.Env["__json"]; !structured {
		if err := b.exportReferencesGraph(ctx, drv, inputs, env); err != nil {
			return MiscFailure, err
		}
	}
	if err := dirs.writeFiles(env.Files); err != nil {
		return MiscFailure, fmt.Errorf("build %s: %w", g.drvPath, err)
	}
	// Recursive Nix: a daemon for the builder, until it is gone.
	var rec *Recursion
	stopRecursive := func() {}
	if usesRecursiveNix(requiredFeatures(drv)) {
		var stop func()
		if rec, stop, err = b.startRecursive(ctx, opts, r.log, dirs, sandboxed, inputs); err != nil {
			return MiscFailure, err
		}
		var once sync.Once
		stopRecursive = func() { once.Do(stop) }
		defer stopRecursive()
		env.Vars["NIX_REMOTE"] = "unix://" + buildTop + "/" + RecursiveSocket
	}

	// The log file is created while the sandbox starts.
	var logFile *logFile
	var logErr error
	logOpened := make(chan struct{})
	go func() {
		if !opts.DiscardLog {
			logFile, logErr = b.openLogFile(g.drvPath, opts.CompressLog)
		}
		close(logOpened)
	}()
	defer func() {
		<-logOpened
		if logFile != nil {
			logFile.Close()
		}
	}()
	pr, pw, err := os.Pipe()
	if err != nil {
		return MiscFailure, err
	}
	defer pr.Close()

	var p process
	g.timesBuilt++
	if !sandboxed {
		// What a failed build on the host leaves in the store dir is the
		// builder's, maybe writable by anyone: it goes (or, kept, becomes
		// the daemon's and read-only) once the builder is gone.
		defer func() {
			if !status.Success() {
				b.secureFailedOutputs(ctx, drv, dirs, keep)
			}
		}()
	}
	defer sl.stopRunning()
	if isBuiltin(drv) {
		if err := sl.run(ctx); err != nil {
			pw.Close()
			return MiscFailure, err
		}
		p = b.startBuiltin(g, r, dirs, env, inputs, sandboxed, pw)
	} else if sandboxed {
		spec, err := b.spec(ctx, g, r, dirs, env, inputs)
		if err != nil {
			pw.Close()
			return MiscFailure, err
		}
		spec.Log = pw
		// The sandbox is set up while the request's last builds run; the
		// builder starts when one of them has ended.
		spec.Hold = true
		sp, err := b.inits.Start(ctx, spec)
		pw.Close()
		if err != nil {
			// As Nix 2.8 only when cloning with the namespaces fails with
			// EPERM or EINVAL; a chroot store cannot build on the host.
			if opts.SandboxFallback && !diverted && g.mode == Normal && sandbox.IsNamespacesRefused(err) {
				return MiscFailure, errSandboxRefused
			}
			return MiscFailure, fmt.Errorf("while setting up the build environment: %w", err)
		}
		if err := sl.run(ctx); err != nil {
			sp.Kill()
			sp.Wait()
			return MiscFailure, err
		}
		if err := sp.Go(ctx); err != nil {
			return MiscFailure, fmt.Errorf("while setting up the build environment: %w", err)
		}
		p = sandboxProcess{sp}
	} else {
		if err := sl.run(ctx); err != nil {
			pw.Close()
			return MiscFailure, err
		}
		hp, err := b.startHost(ctx, drv, opts, env, dirs, id, pw)
		pw.Close()
		if err != nil {
			return MiscFailure, err
		}
		p = hp
	}
	b.started(g)
	defer b.finished(g)

	// Watch the clocks and the log's size while the log flows.
	var mu sync.Mutex
	var stopStatus Status
	var stopErr error
	kill := func(st Status, e error) {
		mu.Lock()
		if stopErr == nil {
			stopStatus, stopErr = st, e
		}
		mu.Unlock()
		p.Kill()
	}
	name := hl(g.name())
	var silence *time.Timer
	if opts.MaxSilentTime > 0 {
		silence = time.AfterFunc(opts.MaxSilentTime, func() {
			kill(TimedOut, fmt.Errorf("%s timed out after %s seconds of silence", name, hl(fmt.Sprint(int(opts.MaxSilentTime/time.Second)))))
		})
		defer silence.Stop()
	}
	if opts.Timeout > 0 {
		t := time.AfterFunc(opts.Timeout, func() {
			kill(TimedOut, fmt.Errorf("%s timed out after %s seconds", name, hl(fmt.Sprint(int(opts.Timeout/time.Second)))))
		})
		defer t.Stop()
	}
	lw := newLineWriter(opts.LogLines, g.emit)
	copyDone := make(chan error, 1)
	go func() {
		buf := make([]byte, 32<<10)
		var size int64
		over := false
		for {
			n, err := pr.Read(buf)
			if n > 0 && !over {
				if silence != nil {
					silence.Reset(opts.MaxSilentTime)
				}
				// As Nix: the read that passes the limit is dropped.
				if size += int64(n); opts.MaxLogSize > 0 && size > opts.MaxLogSize {
					over = true
					kill(LogLimitExceeded, fmt.Errorf("%s killed after writing more than %s bytes of log output", name, hl(fmt.Sprint(opts.MaxLogSize))))
					continue
				}
				<-logOpened
				if logFile != nil {
					logFile.Write(buf[:n])
				}
				lw.Write(buf[:n])
			}
			if err != nil {
				copyDone <- err
				return
			}
		}
	}()
	code, sig, werr := p.Wait()
	if hp, ok := p.(*hostProcess); ok {
		// Whatever the builder left running, before anything else looks
		// at what it made.
		if err := hp.end(); err != nil && werr == nil {
			werr = err
		}
	}
	sl.stopRunning() // nothing of the builder runs any more
	stopRecursive()
	<-copyDone
	lw.Flush()
	if <-logOpened; logErr != nil {
		return MiscFailure, logErr
	}

	if logFile != nil {
		// The last block is compressed while the outputs are looked at;
		// the log is whole before the result is known.
		closed := make(chan error, 1)
		go func() { closed <- logFile.Close() }()
		defer func() {
			if cerr := <-closed; cerr != nil && r.log != nil {
				r.log.Error(cerr.Error())
			}
		}()
	}
	mu.Lock()
	stopSt, stopped := stopStatus, stopErr
	mu.Unlock()
	if stopped != nil {
		keep = opts.KeepFailed
		return stopSt, stopped
	}
	if werr != nil && ctx.Err() != nil {
		return MiscFailure, ctx.Err()
	}
	if werr != nil || code != 0 {
		msg := fmt.Sprintf("builder for '%s' %s", hl(g.drvPath.String()), statusString(code, sig))
		if tail := lw.Tail(); len(tail) > 0 && !opts.LogShown {
			msg += fmt.Sprintf(";\nlast %d log lines:\n", len(tail))
			for _, l := range tail {
				msg += "> " + l + "\n"
			}
			msg += fmt.Sprintf("For full logs, run '\x1b[1mnix log %s\x1b[0m'.", g.drvPath)
		}
		if werr != nil {
			msg += "\n" + werr.Error()
		}
		keep = opts.KeepFailed
		if keep {
			r.logKeep(dirs.build)
		}
		st := PermanentFailure
		if !sandboxed {
			st = TransientFailure
		}
		return st, errors.New(msg)
	}

	if rec != nil {
		// What it added may be referred to, as its inputs.
		inputs = append(slices.Clone(inputs), rec.Added()...)
	}
	status, err = b.registerOutputs(ctx, g, r, dirs, inputs)
	if err == nil && status == Built {
		if err = b.postBuild(g, r); err != nil {
			status = MiscFailure
		}
	}
	if err != nil && opts.KeepFailed {
		keep = true
		r.logKeep(dirs.build)
	}
	return status, err
}

// inputClosure is the closure of drv's input sources and the outputs it
// wants of its input derivations.
func (b *Builder) inputClosure(ctx context.Context, drv *derivation.Derivation) ([]storepath.StorePath, error) {
	roots := slices.Clone(drv.InputSrcs)
	for _, in := range sortedPaths(drv.InputDrvs) {
		inDrv, err := b.readDrv(ctx, in)
		if err != nil {
			return nil, err
		}
		for _, o := range drv.InputDrvs[in] {
			out, ok := inDrv.Outputs[o]
			if !ok || out.Path.IsZero() {
				return nil, fmt.Errorf("derivation '%s' has no output '%s'", in, o)
			}
			roots = append(roots, out.Path)
		}
	}
	return b.store.QueryClosure(ctx, roots, false)
}

// emit passes a line of the builder's output (or an "@nix" message) to
// the logs of g's requests.
func (g *goal) emit(line string, msg bool) {
	g.mu.Lock()
	sinks := slices.Clone(g.sinks)
	g.mu.Unlock()
	for _, s := range sinks {
		if msg {
			s.Message(line[len("@nix "):])
		} else {
			s.Line(line)
		}
	}
}

// postBuild runs post-build-hook once g's outputs are valid, its output
// going to g's logs.
func (b *Builder) postBuild(g *goal, r *request) error {
	if r.opts.PostBuildHook == "" {
		return nil
	}
	return runPostBuildHook(g.ctx, r.opts.PostBuildHook, r.opts.HookConfig, g.drvPath, g.drv, func(line string) {
		g.emit("post-build-hook: "+line, false)
	})
}

func (r *request) logKeep(dir string) {
	if r.log != nil {
		r.log.Error(fmt.Sprintf("note: keeping build directory '%s'", dir))
	}
}

// statusString is Nix's statusToString for a failed builder.
func statusString(code int, sig syscall.Signal) string {
	if code >= 0 {
		return fmt.Sprintf("failed with exit code %d", code)
	}
	return fmt.Sprintf("failed due to signal %d (%s)", int(sig), strings.ToUpper(sig.String()[:1])+sig.String()[1:])
}

// started marks g running and opens a log for every request following it.
func (b *Builder) started(g *goal) {
	g.mu.Lock()
	g.running = true
	rs := slices.Clone(g.requests)
	g.mu.Unlock()
	for _, r := range rs {
		r.progress(func() { r.running++ })
		if r.log != nil {
			s := r.buildStarted(g)
			g.mu.Lock()
			g.sinks = append(g.sinks, s)
			g.mu.Unlock()
		}
	}
}

func (b *Builder) finished(g *goal) {
	g.mu.Lock()
	g.running = false
	sinks := g.sinks
	g.sinks = nil
	rs := slices.Clone(g.requests)
	g.mu.Unlock()
	for _, s := range sinks {
		s.Done()
	}
	for _, r := range rs {
		r.progress(func() { r.running-- })
	}
}

// spec is the sandbox of one build.
func (b *Builder) spec(ctx context.Context, g *goal, r *request, dirs *buildDirs, env *Env, inputs []storepath.StorePath) (*sandbox.Spec, error) {
	st := b.store
	drv := g.drv
	opts := r.opts
	storeDir := string(st.StoreDir())
	binds := []sandbox.Bind{{Source: dirs.store, Target: storeDir, Writable: true}}
	seen := map[string]bool{storeDir: true}
	add := func(bd sandbox.Bind) {
		if !seen[bd.Target] {
			seen[bd.Target] = true
			binds = append(binds, bd)
		}
	}
	outputs := map[string]bool{}
	for _, o := range drv.Outputs {
		outputs[o.Path.String()] = true
	}
	// sandbox-paths, and the closures of store paths among them.
	var extraRoots []storepath.StorePath
	for _, entry := range opts.SandboxPaths {
		optional := strings.HasSuffix(entry, "?")
		entry = strings.TrimSuffix(entry, "?")
		target, source, ok := strings.Cut(entry, "=")
		if !ok {
			source = target
		}
		if !filepath.IsAbs(target) || !filepath.IsAbs(source) {
			return nil, fmt.Errorf("sandbox-paths: '%s' is not an absolute path", entry)
		}
		if sp, _, err := st.StoreDir().ToStorePath(source); err == nil {
			extraRoots = append(extraRoots, sp)
			source = filepath.Join(st.RealStoreDir(), strings.TrimPrefix(source, storeDir+"/"))
		}
		add(sandbox.Bind{Source: source, Target: filepath.Clean(target), Optional: optional})
	}
	// pre-build-hook's extra sandbox paths replace any of the same target,
	// as in Nix's dirsInChroot.
	if opts.PreBuildHook != "" {
		extra, err := runPreBuildHook(ctx, opts.PreBuildHook, g.drvPath, dirs.root)
		if err != nil {
			return nil, err
		}
		for _, bd := range extra {
			if i := slices.IndexFunc(binds, func(o sandbox.Bind) bool { return o.Target == bd.Target }); i >= 0 {
				binds[i] = bd
				continue
			}
			add(bd)
		}
	}
	if len(extraRoots) > 0 {
		valid, err := st.QueryValidPaths(ctx, extraRoots)
		if err != nil {
			return nil, err
		}
		closure, err := st.QueryClosure(ctx, valid, false)
		if err != nil {
			return nil, err
		}
		inputs = append(slices.Clone(inputs), closure...)
	}
	storeFD := -1
	if linkInputs(dirs.uid) {
		fd, err := unix.Open(dirs.store, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", dirs.store, err)
		}
		defer unix.Close(fd)
		storeFD = fd
	}
	for _, p := range inputs {
		if outputs[p.String()] || seen[p.String()] {
			continue
		}
		if storeFD >= 0 && linkInput(storeFD, p.Base(), st.RealPath(p)) {
			seen[p.String()] = true
			continue
		}
		add(sandbox.Bind{Source: st.RealPath(p), Target: p.String()})
	}

	// The builder is 1000/100 inside, or 0/0 with a uid range (Nix's
	// sandboxUid and sandboxGid).
	uid, gid := sandboxUID, sandboxGID
	if dirs.count > 1 {
		uid, gid = 0, 0
	}
	files := []sandbox.File{
		{Path: "/etc/passwd", Content: fmt.Appendf(nil,
			"root:x:0:0:Nix build user:%[3]s:/noshell\nnixbld:x:%[1]d:%[2]d:Nix build user:%[3]s:/noshell\nnobody:x:65534:65534:Nobody:/:/noshell\n",
			uid, gid, opts.BuildDirTarget)},
		{Path: "/etc/group", Content: fmt.Appendf(nil, "root:x:0:\nnixbld:!:%d:\nnogroup:x:65534:\n", gid)},
	}
	var net *sandbox.Net
	if kind, _ := drv.Type(); kind != derivation.CAFixed {
		files = append(files, sandbox.File{Path: "/etc/hosts", Content: []byte("127.0.0.1 localhost\n::1 localhost\n")})
	} else {
		var err error
		if net, files, err = b.fixedOutputNetwork(g.drvPath, opts, files); err != nil {
			return nil, err
		}
	}
	args := append([]string{filepath.Base(drv.Builder)}, rewriteAll(env.Rewrite, drv.Args)...)
	spec := &sandbox.Spec{
		Root:           dirs.root,
		Binds:          binds,
		Tmpfs:          []sandbox.Tmpfs{{Target: "/tmp"}},
		Files:          files,
		BuildDir:       dirs.build,
		BuildDirTarget: opts.BuildDirTarget,
		UID:            uid,
		GID:            gid,
		UIDMap:         []sandbox.IDMap{{Inside: uid, Outside: dirs.uid, Count: dirs.count}},
		GIDMap:         []sandbox.IDMap{{Inside: gid, Outside: dirs.gid, Count: dirs.count}},
		Setgroups:      os.Geteuid() == 0,
		ShmSize:        opts.ShmSize,
		Command: sandbox.Command{Path: drv.Builder, Args: args, Env: env.List(), Dir: opts.BuildDirTarget,
			Personality: personality(drv.Platform, opts), NoSyscallFilter: opts.NoSyscallFilter, NewPrivileges: opts.AllowNewPrivileges},
		Net:    net,
		Cgroup: sandbox.Cgroup{Parent: b.cgroupParent},
	}
	return spec, nil
}

var exportNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]*$`)

// exportReferencesGraph writes, for each "name path" pair of the
// attribute, the closure of path in the registration format Nix uses
// (no hashes, no derivers).
func (b *Builder) exportReferencesGraph(ctx context.Context, drv *derivation.Derivation, inputs []storepath.StorePath, env *Env) error {
	words := strings.Fields(drv.Env["exportReferencesGraph"])
	if len(words)%2 != 0 {
		return fmt.Errorf("odd number of tokens in 'exportReferencesGraph': '%s'", drv.Env["exportReferencesGraph"])
	}
	st := b.store
	for i := 0; i < len(words); i += 2 {
		name, ps := words[i], words[i+1]
		if !exportNameRE.MatchString(name) {
			return fmt.Errorf("invalid file name '%s' in 'exportReferencesGraph'", name)
		}
		p, _, err := st.StoreDir().ToStorePath(ps)
		if err != nil {
			return fmt.Errorf("'exportReferencesGraph' contains a non-store path '%s'", ps)
		}
		if !slices.Contains(inputs, p) {
			return fmt.Errorf("cannot export references of path '%s' because it is not in the input closure of the derivation", p)
		}
		closure, err := st.QueryClosure(ctx, []storepath.StorePath{p}, false)
		if err != nil {
			return err
		}
		refs, err := st.QueryReferencesOf(ctx, closure)
		if err != nil {
			return err
		}
		var sb strings.Builder
		for _, q := range closure {
			rs := slices.Clone(refs[q])
			storepath.SortPaths(rs)
			fmt.Fprintf(&sb, "%s\n\n%d\n", q, len(rs))
			for _, r := range rs {
				sb.WriteString(r.String() + "\n")
			}
		}
		env.Files[name] = []byte(sb.String())
	}
	return nil
}

// process is a running builder.
type process interface {
	Wait() (code int, sig syscall.Signal, err error)
	Kill()
}

type sandboxProcess struct{ p *sandbox.Process }

func (s sandboxProcess) Wait() (int, syscall.Signal, error) {
	st, err := s.p.Wait()
	return st.Code, st.Signal, err
}
func (s sandboxProcess) Kill() { s.p.Kill() }

// lineWriter splits a builder's output into lines as Nix does ("\r"
// rewinds the line) and keeps the last few.
type lineWriter struct {
	emit func(line string, msg bool)
	line []byte
	pos  int
	tail []string
	max  int
}

func newLineWriter(max int, emit func(line string, msg bool)) *lineWriter {
	return &lineWriter{emit: emit, max: max}
}

func (w *lineWriter) Write(p []byte) (int, error) {
	for _, c := range p {
		switch c {
		case '\r':
			w.pos = 0
		case '\n':
			w.flushLine()
		default:
			if w.pos < len(w.line) {
				w.line[w.pos] = c
			} else {
				w.line = append(w.line, c)
			}
			w.pos++
			if len(w.line) >= MaxLogLine {
				w.flushLine()
			}
		}
	}
	return len(p), nil
}

func (w *lineWriter) flushLine() {
	s := string(w.line)
	w.line, w.pos = w.line[:0], 0
	// "@nix {json}" is a message to the daemon; bad JSON is an ordinary line.
	if strings.HasPrefix(s, "@nix ") && json.Valid([]byte(s[len("@nix "):])) {
		w.emit(s, true)
		return
	}
	w.emit(s, false)
	w.tail = append(w.tail, s)
	if len(w.tail) > w.max {
		w.tail = w.tail[1:]
	}
}

// Flush emits an unfinished last line.
func (w *lineWriter) Flush() {
	if len(w.line) > 0 {
		w.flushLine()
	}
}

func (w *lineWriter) Tail() []string { return w.tail }

var _ io.Writer = (*lineWriter)(nil)

func rewriteAll(r *strings.Replacer, ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = r.Replace(s)
	}
	return out
}

// useSandbox says whether drv builds in the sandbox, as Nix 2.8 decides
// before a chroot store forces it: always with sandbox = true (where
// __noChroot is an error), never with false, and with relaxed unless the
// derivation is fixed-output or sets __noChroot.
func useSandbox(drv *derivation.Derivation, drvPath storepath.StorePath, opts Options) (bool, error) {
	noChroot := boolAttr(drv, "__noChroot")
	switch {
	case !opts.Sandbox:
		return false, nil
	case !opts.SandboxRelaxed:
		if noChroot {
			return false, fmt.Errorf("derivation '%s' has '__noChroot' set, but that's not allowed when 'sandbox' is 'true'", drvPath)
		}
		return true, nil
	}
	kind, _ := drv.Type()
	return kind != derivation.CAFixed && kind != derivation.Impure && !noChroot, nil
}

// boolAttr is Nix's getBoolAttr: a plain attribute is true when it is "1",
// a structured one when it is the JSON true.
func boolAttr(drv *derivation.Derivation, name string) bool {
	text, ok := drv.Env["__json"]
	if !ok {
		return drv.Env[name] == "1"
	}
	var attrs map[string]json.RawMessage
	if len(text) > MaxStructuredAttrs || json.Unmarshal([]byte(text), &attrs) != nil {
		return false
	}
	var b bool
	return json.Unmarshal(attrs[name], &b) == nil && b
}

// Personality flags (linux/personality.h).
const (
	perLinux32      = 0x0008
	uname26         = 0x0020000
	addrNoRandomize = 0x0040000
)

// personality is what Nix 2.8 gives a builder of platform: address space
// randomisation off, for determinism; a 32-bit persona for i686-linux on
// x86_64 and for 32-bit ARM; with impersonate-linux-26, a Linux 2.6
// uname for i686 and x86_64.
func personality(platform string, opts Options) uint32 {
	p := uint32(addrNoRandomize)
	switch {
	case platform == "i686-linux" && (opts.System == "x86_64-linux" || runtime.GOARCH == "amd64"),
		platform == "armv7l-linux", platform == "armv6l-linux":
		p |= perLinux32
	}
	if opts.ImpersonateLinux26 && (platform == "i686-linux" || platform == "x86_64-linux") {
		p |= uname26
	}
	return p
}

// maxPreBuildHookOutput bounds what pre-build-hook may print.
const maxPreBuildHookOutput = 1 << 20

// runPreBuildHook runs pre-build-hook before a sandboxed build, as Nix 2.8
// does: with the derivation's path and the sandbox root's directory as
// arguments (Nix's chroot dir; Cairn's root is a tmpfs private to the
// build, so files put there are not seen), its stderr the daemon's. Its
// output is blocks of "extra-sandbox-paths" (or "extra-chroot-dirs")
// followed by paths, "TARGET=SOURCE" or "PATH", up to an empty line.
func runPreBuildHook(ctx context.Context, hook string, drvPath storepath.StorePath, root string) ([]sandbox.Bind, error) {
	cmd := exec.CommandContext(ctx, hook, drvPath.String(), root)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("executing pre-build hook '%s': %w", hook, err)
	}
	out, readErr := io.ReadAll(io.LimitReader(stdout, maxPreBuildHookOutput+1))
	io.Copy(io.Discard, stdout)
	err = cmd.Wait()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return nil, fmt.Errorf("program '%s' %s", hook, statusString(ee.ExitCode(), exitSignal(ee)))
	case err != nil:
		return nil, fmt.Errorf("executing pre-build hook '%s': %w", hook, err)
	case readErr != nil:
		return nil, fmt.Errorf("reading pre-build hook '%s': %w", hook, readErr)
	case len(out) > maxPreBuildHookOutput:
		return nil, fmt.Errorf("pre-build hook '%s' printed more than %d bytes", hook, maxPreBuildHookOutput)
	}
	return parsePreBuildHook(string(out))
}

// parsePreBuildHook reads pre-build-hook's output as Nix 2.8 does: only
// whole lines count.
func parsePreBuildHook(out string) ([]sandbox.Bind, error) {
	var binds []sandbox.Bind
	inPaths := false
	for {
		line, rest, ok := strings.Cut(out, "\n")
		if !ok {
			return binds, nil
		}
		out = rest
		switch {
		case !inPaths && (line == "extra-sandbox-paths" || line == "extra-chroot-dirs"):
			inPaths = true
		case !inPaths:
			return nil, fmt.Errorf("unknown pre-build hook command '%s'", line)
		case line == "":
			inPaths = false
		default:
			target, source, ok := strings.Cut(line, "=")
			if !ok {
				source = target
			}
			binds = append(binds, sandbox.Bind{Source: source, Target: target})
		}
	}
}

// runPostBuildHook runs post-build-hook once a build's outputs are
// registered, as Nix 2.8 does: with DRV_PATH, OUT_PATHS (the outputs,
// sorted, space-separated) and NIX_CONFIG (the settings) added to the
// daemon's environment, and its
// output, stdout and stderr together, passed on line by line. If it fails,
// the build fails with Nix's message; the outputs stay valid.
func runPostBuildHook(ctx context.Context, hook, config string, drvPath storepath.StorePath, drv *derivation.Derivation, line func(string)) error {
	var outs []string
	for _, o := range drv.Outputs {
		if !o.Path.IsZero() {
			outs = append(outs, o.Path.String())
		}
	}
	slices.Sort(outs)
	cmd := exec.CommandContext(ctx, hook)
	cmd.Env = append(os.Environ(), "DRV_PATH="+drvPath.String(), "OUT_PATHS="+strings.Join(outs, " "))
	if config != "" {
		cmd.Env = append(cmd.Env, "NIX_CONFIG="+config)
	}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line(sc.Text())
		}
		io.Copy(io.Discard, pr) // a line too long: drain, so the hook does not block
	}()
	err := cmd.Run()
	pw.Close()
	<-scanned
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return fmt.Errorf("program '%s' %s", hook, statusString(ee.ExitCode(), exitSignal(ee)))
		}
		return fmt.Errorf("running post-build-hook '%s': %w", hook, err)
	}
	return nil
}

// exitSignal is the signal that ended a process, if one did.
func exitSignal(ee *exec.ExitError) syscall.Signal {
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return ws.Signal()
	}
	return 0
}
