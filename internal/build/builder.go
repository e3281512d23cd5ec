package build

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"cairn/internal/builtins"
	"cairn/internal/derivation"
	"cairn/internal/protocol"
	"cairn/internal/remotebuild"
	"cairn/internal/sandbox"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
	"cairn/internal/substitute"
)

// Status is the outcome of building one target, numbered as Nix's
// BuildResult::Status (and the worker protocol).
type Status int

const (
	Built            Status = 0
	Substituted      Status = 1
	AlreadyValid     Status = 2
	PermanentFailure Status = 3
	InputRejected    Status = 4
	OutputRejected   Status = 5
	TransientFailure Status = 6
	CachedFailure    Status = 7
	TimedOut         Status = 8
	MiscFailure      Status = 9
	DependencyFailed Status = 10
	LogLimitExceeded Status = 11
	NotDeterministic Status = 12
)

// Mode is how a request builds, numbered as Nix's BuildMode (and the
// worker protocol).
type Mode int

const (
	// Normal builds the outputs that are not valid.
	Normal Mode = 0
	// Repair rebuilds the outputs that are missing or whose contents no
	// longer hash to their registered NAR hash, replacing them in place;
	// when every output is good, it repairs the derivations whose outputs
	// in the outputs' closure are bad. Input derivations are repaired too.
	Repair Mode = 1
	// Check rebuilds outputs that are all valid and compares the new NAR
	// hashes with the registered ones (NotDeterministic when they differ);
	// nothing is registered. Input derivations are built normally.
	Check Mode = 2
)

// Success reports whether s means the outputs are valid.
func (s Status) Success() bool { return s == Built || s == Substituted || s == AlreadyValid }

var statusNames = [...]string{"Built", "Substituted", "AlreadyValid", "PermanentFailure", "InputRejected",
	"OutputRejected", "TransientFailure", "CachedFailure", "TimedOut", "MiscFailure", "DependencyFailed",
	"LogLimitExceeded", "NotDeterministic"}

// String is the status's name in Nix's BuildResult.
func (s Status) String() string {
	if s >= 0 && int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// Options are one request's build settings (nix.conf and the client's).
type Options struct {
	MaxJobs       int // builds at once; 0: none (Nix then needs remote builders)
	Cores         int // NIX_BUILD_CORES
	KeepFailed    bool
	KeepGoing     bool
	MaxSilentTime time.Duration // 0: none
	Timeout       time.Duration // 0: none
	// Sandbox runs builds in namespaces; a chroot store (real store dir ≠
	// store dir) always does, as in Nix.
	Sandbox bool
	// SandboxFallback builds on the host when the kernel refuses the
	// sandbox's namespaces (sandbox-fallback).
	SandboxFallback bool
	// SandboxRelaxed (sandbox = relaxed, with Sandbox set) runs fixed-output
	// derivations and those with __noChroot on the host.
	SandboxRelaxed bool
	// SandboxPaths are sandbox-paths and extra-sandbox-paths entries:
	// "path", "target=source", with a trailing "?" when optional.
	SandboxPaths   []string
	BuildDirTarget string // sandbox-build-dir; "" means /build
	LogLines       int    // lines of log quoted in a failure; 0 means 10
	// LogShown says the build log reaches the user as it comes (Nix's
	// verbose logger, as in nix-store --serve), so a failure quotes none.
	LogShown       bool
	System         string // "" means x86_64-linux
	ExtraPlatforms []string
	SystemFeatures []string // what requiredSystemFeatures may ask for
	Mode           Mode     // of the wanted derivations (their inputs: see Mode)
	// CompressLog writes logs as LOGDIR/drvs/XX/REST.bz2 (compress-build-log).
	CompressLog bool
	// DiscardLog keeps no log file (keep-build-log = false).
	DiscardLog bool
	// MaxLogSize kills a build whose log grows past it, in bytes
	// (max-build-log-size); 0 means no limit.
	MaxLogSize int64
	// Repeat builds a derivation that many more times and compares the
	// outputs (repeat; not fixed outputs, not in Check mode). A difference
	// fails the build when EnforceDeterminism, and is only logged when not.
	Repeat             int
	EnforceDeterminism bool
	// Builtins are the settings of builtin builders (downloads).
	Builtins builtins.Settings
	// Network is the user-mode network stack of fixed-output builds
	// (fixed-output-network): "" or "auto", "pasta", "slirp4netns", an
	// absolute path to either, or "none".
	Network string
	// IsolateLoopback keeps fixed-output builds from the host's loopback
	// services (fixed-output-host-loopback = false).
	IsolateLoopback bool
	// Subst are the binary caches tried before building a derivation whose
	// outputs are missing, and for missing input sources (no caches:
	// substitute = false or substituters empty).
	Subst substitute.Config
	// Fallback builds a derivation when a cache had its outputs but their
	// substitution failed (fallback); otherwise that fails the goal.
	Fallback bool
	// SecretKeyFiles sign every output built (secret-key-files), as Nix
	// signs what it builds locally.
	SecretKeyFiles []string
	// NoSyscallFilter runs builders without the seccomp filter and
	// no_new_privs (filter-syscalls = false).
	NoSyscallFilter bool
	// AllowNewPrivileges runs them without no_new_privs, so set-id programs
	// work (allow-new-privileges).
	AllowNewPrivileges bool
	// DiffHook is run on the two outputs of a check or of two rounds that
	// differ, when RunDiffHook is set (diff-hook, run-diff-hook).
	DiffHook    string
	RunDiffHook bool
	// ImpersonateLinux26 makes uname report Linux 2.6 to i686 and x86_64
	// builds (impersonate-linux-26).
	ImpersonateLinux26 bool
	// ShmSize is the size of the sandbox's /dev/shm (sandbox-dev-shm-size).
	ShmSize string
	// PreBuildHook is run before each sandboxed build; it may name more
	// paths to bind into the sandbox (pre-build-hook; see runPreBuildHook).
	PreBuildHook string
	// PostBuildHook is run after each build's outputs are registered
	// (post-build-hook; see runPostBuildHook).
	PostBuildHook string
	// HookConfig is the settings as nix.conf lines, the hook's NIX_CONFIG.
	HookConfig string
	// Builders are the remote builders (the builders setting: machines,
	// "@file" includes); BuildersUseSubstitutes lets them substitute the
	// inputs (builders-use-substitutes). See remote.go.
	Builders               string
	BuildersUseSubstitutes bool
	// ExperimentalFeatures are experimental-features (recursive-nix).
	ExperimentalFeatures []string
}

// Getter reads a setting by name (config.Settings and the daemon's
// per-connection settings both are).
type Getter interface{ Get(name string) string }

// OptionsFrom reads Options from settings as Nix names them.
func OptionsFrom(s Getter) Options {
	atoi := func(name string) int {
		var n int
		fmt.Sscan(s.Get(name), &n)
		return n
	}
	secs := func(name string) time.Duration { return time.Duration(atoi(name)) * time.Second }
	o := Options{
		MaxJobs:                atoi("max-jobs"),
		Cores:                  atoi("cores"),
		KeepFailed:             s.Get("keep-failed") == "true",
		KeepGoing:              s.Get("keep-going") == "true",
		MaxSilentTime:          secs("max-silent-time"),
		Timeout:                secs("timeout"),
		Sandbox:                s.Get("sandbox") != "false",
		SandboxRelaxed:         s.Get("sandbox") == "relaxed",
		SandboxFallback:        s.Get("sandbox-fallback") != "false",
		SandboxPaths:           append(strings.Fields(s.Get("sandbox-paths")), strings.Fields(s.Get("extra-sandbox-paths"))...),
		BuildDirTarget:         s.Get("sandbox-build-dir"),
		LogLines:               atoi("log-lines"),
		System:                 s.Get("system"),
		ExtraPlatforms:         strings.Fields(s.Get("extra-platforms")),
		SystemFeatures:         strings.Fields(s.Get("system-features")),
		CompressLog:            s.Get("compress-build-log") != "false",
		DiscardLog:             s.Get("keep-build-log") == "false",
		MaxLogSize:             int64(atoi("max-build-log-size")),
		Repeat:                 min(max(atoi("repeat"), 0), maxRepeat),
		EnforceDeterminism:     s.Get("enforce-determinism") != "false",
		Builtins:               builtins.SettingsFrom(s, os.Getenv),
		Network:                s.Get("fixed-output-network"),
		Subst:                  substitute.ConfigFrom(s, func(string) {}),
		Fallback:               s.Get("fallback") == "true",
		SecretKeyFiles:         strings.Fields(s.Get("secret-key-files")),
		PreBuildHook:           s.Get("pre-build-hook"),
		ImpersonateLinux26:     s.Get("impersonate-linux-26") == "true",
		DiffHook:               s.Get("diff-hook"),
		RunDiffHook:            s.Get("run-diff-hook") == "true",
		NoSyscallFilter:        s.Get("filter-syscalls") == "false",
		AllowNewPrivileges:     s.Get("allow-new-privileges") == "true",
		ShmSize:                s.Get("sandbox-dev-shm-size"),
		PostBuildHook:          s.Get("post-build-hook"),
		Builders:               s.Get("builders"),
		BuildersUseSubstitutes: s.Get("builders-use-substitutes") == "true",
		ExperimentalFeatures:   strings.Fields(s.Get("experimental-features")),
	}
	if kv, ok := s.(interface{ KeyValue() string }); ok && o.PostBuildHook != "" {
		o.HookConfig = kv.KeyValue()
	}
	switch s.Get("fixed-output-host-loopback") {
	case "false", "no", "0":
		o.IsolateLoopback = true
	}
	if s.Get("max-jobs") == "auto" {
		o.MaxJobs = numCPU()
	}
	return o
}

// maxRepeat bounds the repeat setting.
const maxRepeat = 100

// Target is what to build: a derivation and the outputs wanted (none: all).
type Target struct {
	Drv     storepath.StorePath
	Outputs []string
}

func (t Target) String() string {
	if len(t.Outputs) == 0 {
		return t.Drv.String() + "!*"
	}
	return t.Drv.String() + "!" + strings.Join(t.Outputs, ",")
}

// Result is what became of one target.
type Result struct {
	Target     Target
	Status     Status
	Err        error // nil on success; its text is Nix's message
	TimesBuilt int
	// NonDeterministic says that repeated rounds of the build differed.
	NonDeterministic bool
	Start            time.Time
	Stop             time.Time
	// Outputs are the wanted outputs' paths (on success).
	Outputs map[string]storepath.StorePath
}

// Ran is how long a successful build took: 0 for any other result (valid
// already, substituted, failed).
func (r Result) Ran() time.Duration {
	if r.Status != Built || r.Start.IsZero() || r.Stop.Before(r.Start) {
		return 0
	}
	return r.Stop.Sub(r.Start)
}

// Logger receives a request's progress. Its methods may be called from
// several goroutines at once.
type Logger interface {
	// BuildStarted says a build of drv runs now; its output goes to the
	// returned BuildLog until Done.
	BuildStarted(drv storepath.StorePath) BuildLog
	// Progress counts the request's builds.
	Progress(done, expected, running, failed int)
	// Error reports a dependency's failure (the target's own is in its
	// Result), as Nix logs it, or a note ("note: keeping build directory
	// …") that Nix logs at the error level without "error:".
	Error(msg string)
}

// ModeLogger is a Logger that is told more, as Nix's logger is: the mode
// of a build as it starts ("checking outputs of '…'"), and plain messages
// (Nix's printInfo and printError: "checking path '…'...", "path '…' is
// corrupted or missing!"). The builder uses it when the Logger has it.
type ModeLogger interface {
	Logger
	// BuildStartedMode is BuildStarted for a build in mode m, round round
	// of rounds (1 of 1 unless repeat is set).
	BuildStartedMode(drv storepath.StorePath, m Mode, round, rounds int) BuildLog
	// Print logs msg as it is, at the error level or (info) the info level.
	Print(msg string, info bool)
}

// ActivityLogger is a Logger that shows Nix's activities other than builds
// as Nix's logger does (protocol.ActCopyPaths: copying paths to and from a
// remote builder). A ModeLogger that is not one prints the text with "...",
// as Nix's plain logger shows an activity.
type ActivityLogger interface {
	Logger
	// StartActivity starts an activity of typ with text; stop ends it.
	StartActivity(typ protocol.ActivityType, text string) (stop func())
}

// RemoteLogger is a Logger told which remote builder a build runs on (Nix's
// "building '…' on '…'").
type RemoteLogger interface {
	Logger
	BuildStartedOn(drv storepath.StorePath, machine string) BuildLog
}

// BuildLog receives one build's output, line by line.
type BuildLog interface {
	Line(text string)    // a line of the builder's output, without "\n"
	Message(json string) // the JSON of an "@nix {…}" line
	Done()
}

// Builder builds derivations into a local store. One Builder serves any
// number of concurrent requests; requests for the same derivation share one
// goal.
type Builder struct {
	store *local.Store
	cfg   Config
	// buildsDir holds the build dirs: daemon-owned, 0700, outside /tmp.
	buildsDir string
	// rootDir is the one empty directory every sandbox mounts its root
	// tmpfs on, each in its own mount namespace.
	rootDir string
	poolMu  sync.Mutex
	pool    []*buildDirs // reusable dirs of finished sandboxed builds
	// inits starts sandboxes, each build's init started during the one before.
	inits sandbox.Pool

	// users hands out build identities (a root daemon with build users);
	// nil: builds run with the daemon's ids.
	users *userPool
	// hostBuildsDir holds the build dirs of builds on the host (sandbox =
	// false) with build users: BUILDS-host, 0710 root:build-users-group, so
	// that the builder may enter its own dir and nobody outside the group
	// may enter any.
	hostBuildsDir string
	// cgroupParent is where builds get cgroups of their own (see
	// sandbox.DetectCgroup); "" when they cannot, cgroupErr says why.
	cgroupParent string
	cgroupErr    error

	// subst substitutes paths from binary caches, one job per path.
	subst *substitute.Substituter

	mu    sync.Mutex
	goals map[goalKey]*goal
	freed chan struct{} // closed when a remote build ends (remote.go)
	seq   atomic.Uint64
	cache derivation.HashCache
}

// New returns a Builder for st whose build dirs live in buildsDir ("" means
// STATE/builds), which it creates with mode 0700. Builds run with the
// daemon's own ids and, where it can make them, in cgroups of their own.
func New(st *local.Store, buildsDir string) (*Builder, error) {
	return NewWithConfig(st, Config{BuildsDir: buildsDir})
}

// NewWithConfig is New with the daemon-wide settings of cfg: build users,
// cgroups.
func NewWithConfig(st *local.Store, cfg Config) (*Builder, error) {
	buildsDir := cfg.BuildsDir
	if buildsDir == "" {
		buildsDir = filepath.Join(st.StateDir(), "builds")
	}
	if err := os.MkdirAll(buildsDir, 0o700); err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	if err := os.Chmod(buildsDir, 0o700); err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	root := filepath.Join(buildsDir, "root")
	if err := os.Mkdir(root, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("build: %w", err)
	}
	b := &Builder{store: st, cfg: cfg, buildsDir: buildsDir, rootDir: root, goals: map[goalKey]*goal{},
		subst: substitute.New(st, cfg.SubstitutionJobs)}
	users, err := newUserPool(cfg, st.StateDir())
	if err != nil {
		return nil, err
	}
	b.users = users
	if users != nil {
		b.hostBuildsDir = buildsDir + "-host"
	}
	switch {
	case cfg.NoCgroups:
	case cfg.CgroupParent != "":
		b.cgroupParent = cfg.CgroupParent
	default:
		b.cgroupParent, b.cgroupErr = sandbox.DetectCgroup()
		if b.cgroupErr == nil {
			sandbox.RemoveStaleCgroups(b.cgroupParent)
		}
	}
	return b, nil
}

// Cgroups returns the cgroup directory builds get their own cgroups in, or
// "" and why they get none.
func (b *Builder) Cgroups() (string, error) {
	if b.cfg.NoCgroups {
		return "", errors.New("use-cgroups is false")
	}
	return b.cgroupParent, b.cgroupErr
}

// Close ends the sandbox inits kept for the next builds and removes the
// pooled build dirs. Builds may still start afterwards, each paying for its
// init and dirs.
func (b *Builder) Close() {
	b.inits.Close()
	b.poolMu.Lock()
	pool := b.pool
	b.pool = nil
	b.poolMu.Unlock()
	for _, d := range pool {
		removeAll(d.build)
		removeAll(d.store)
	}
}

// Store returns the store the builder builds into.
func (b *Builder) Store() *local.Store { return b.store }

// request is one Build call's state.
type request struct {
	b    *Builder
	opts Options
	log  Logger
	// jobs holds a place per running builder, prep a place per build set up
	// ahead of its run: max-jobs each (see slot).
	jobs, prep chan struct{}

	mu                              sync.Mutex
	done, expected, running, failed int
	reported                        map[storepath.StorePath]bool
	good                            map[storepath.StorePath]bool // contentsGood's answers (repair)
	// The remote builders, parsed on first use (remote.go); noRemote
	// keeps them out (a basic derivation's request, as in Nix).
	noRemote     bool
	remoteParsed bool
	remote       *remotebuild.Scheduler
	remoteErr    error
}

func (r *request) progress(f func()) {
	r.mu.Lock()
	f()
	d, e, ru, fa := r.done, r.expected, r.running, r.failed
	r.mu.Unlock()
	if r.log != nil {
		r.log.Progress(d, e, ru, fa)
	}
}

// reportDep logs a failed dependency's error once per request.
func (r *request) reportDep(g *goal) {
	r.mu.Lock()
	seen := r.reported[g.drvPath]
	r.reported[g.drvPath] = true
	r.mu.Unlock()
	if !seen && r.log != nil && g.err != nil {
		r.log.Error(g.err.Error())
	}
}

func (b *Builder) newRequest(opts Options, log Logger) *request {
	if opts.LogLines == 0 {
		opts.LogLines = 10
	}
	if opts.BuildDirTarget == "" {
		opts.BuildDirTarget = "/build"
	}
	if opts.System == "" {
		opts.System = "x86_64-linux"
	}
	r := &request{b: b, opts: opts, log: log, reported: map[storepath.StorePath]bool{}, good: map[storepath.StorePath]bool{}}
	if opts.MaxJobs > 0 {
		r.jobs = make(chan struct{}, opts.MaxJobs)
		r.prep = make(chan struct{}, opts.MaxJobs)
	}
	return r
}

// Build realises targets and returns a result per target, in order. Without
// KeepGoing the first failure stops the builds nobody else waits for. The
// error is about the request itself (a target that is not a derivation in
// the store); build failures are in the results.
func (b *Builder) Build(ctx context.Context, targets []Target, opts Options, log Logger) ([]Result, error) {
	r := b.newRequest(opts, log)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	results := make([]Result, len(targets))
	goals := make([]*goal, len(targets))
	defer func() {
		// Goals this request was the last to want are cancelled; they
		// are gone (builders killed, dirs put away) before Build returns.
		for _, g := range goals {
			if g != nil && b.release(g) {
				<-g.done
			}
		}
	}()
	for i, t := range targets {
		results[i].Target = t
		drv, err := b.readDrv(ctx, t.Drv)
		if err != nil {
			return nil, err
		}
		for _, o := range t.Outputs {
			if _, ok := drv.Outputs[o]; !ok {
				return nil, fmt.Errorf("derivation '%s' does not have an output named '%s'", t.Drv, o)
			}
		}
		outs, missing, err := b.missing(ctx, drv, t.Outputs)
		if err != nil {
			return nil, err
		}
		switch {
		case !missing && opts.Mode == Normal:
			results[i].Status = AlreadyValid
			results[i].Outputs = outs
			continue
		case missing && opts.Mode == Check:
			return nil, notCheckable(t.Drv)
		}
		goals[i] = b.acquire(r, t.Drv, drv, opts.Mode, t.Outputs)
	}

	doneCh := make(chan int, len(targets))
	for i, g := range goals {
		if g == nil {
			continue
		}
		go func() {
			select {
			case <-g.done:
			case <-ctx.Done():
			}
			doneCh <- i
		}()
	}
	finished := make([]bool, len(targets))
	for range countNonNil(goals) {
		i := <-doneCh
		g := goals[i]
		select {
		case <-g.done:
		default:
			continue // cancelled
		}
		finished[i] = true
		res := &results[i]
		res.Status, res.Err, res.TimesBuilt, res.Start, res.Stop = g.status, g.err, g.timesBuilt, g.start, g.stop
		res.NonDeterministic = g.nonDet
		if g.status.Success() {
			res.Outputs = map[string]storepath.StorePath{}
			for name, o := range g.drv.Outputs {
				if len(res.Target.Outputs) == 0 || slices.Contains(res.Target.Outputs, name) {
					res.Outputs[name] = o.Path
				}
			}
		} else if !opts.KeepGoing {
			cancel()
		}
	}
	for i, g := range goals {
		if g != nil && !finished[i] {
			results[i].Status = MiscFailure
			results[i].Err = fmt.Errorf("build of '%s' was cancelled", targets[i].Drv)
			if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
				results[i].Err = err
			}
		}
	}
	return results, nil
}

// BuildDerivation builds drv, which the caller read or received (a
// BasicDerivation: its inputs are all among InputSrcs and must be valid),
// as the derivation at drvPath, which need not be in the store.
func (b *Builder) BuildDerivation(ctx context.Context, drvPath storepath.StorePath, drv *derivation.Derivation, opts Options, log Logger) Result {
	r := b.newRequest(opts, log)
	r.noRemote = true
	res := Result{Target: Target{Drv: drvPath}}
	outs, missing, err := b.missing(ctx, drv, nil)
	if err != nil {
		res.Status, res.Err = MiscFailure, err
		return res
	}
	switch {
	case !missing && opts.Mode == Normal:
		res.Status, res.Outputs = AlreadyValid, outs
		return res
	case missing && opts.Mode == Check:
		res.Status, res.Err = MiscFailure, notCheckable(drvPath)
		return res
	}
	g := b.acquire(r, drvPath, drv, opts.Mode, nil)
	defer func() {
		if b.release(g) {
			<-g.done
		}
	}()
	select {
	case <-g.done:
	case <-ctx.Done():
		res.Status, res.Err = MiscFailure, ctx.Err()
		return res
	}
	res.Status, res.Err, res.TimesBuilt, res.Start, res.Stop = g.status, g.err, g.timesBuilt, g.start, g.stop
	res.NonDeterministic = g.nonDet
	if g.status.Success() {
		res.Outputs = outs
	}
	return res
}

func countNonNil(gs []*goal) int {
	n := 0
	for _, g := range gs {
		if g != nil {
			n++
		}
	}
	return n
}

// readDrv reads a valid .drv from the store.
func (b *Builder) readDrv(ctx context.Context, p storepath.StorePath) (*derivation.Derivation, error) {
	if !p.IsDerivation() {
		return nil, fmt.Errorf("path '%s' is not a derivation", p)
	}
	ok, err := b.store.IsValidPath(ctx, p)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("cannot build missing derivation '%s'", p)
	}
	return ReadDerivation(b.store, p)
}

// missing returns the wanted outputs' paths and whether any is not valid.
func (b *Builder) missing(ctx context.Context, drv *derivation.Derivation, wanted []string) (map[string]storepath.StorePath, bool, error) {
	outs := map[string]storepath.StorePath{}
	var paths []storepath.StorePath
	for name, o := range drv.Outputs {
		if len(wanted) > 0 && !slices.Contains(wanted, name) {
			continue
		}
		if o.Path.IsZero() {
			return nil, false, fmt.Errorf("%w: building floating content-addressed or impure derivations", store.ErrUnsupported)
		}
		outs[name] = o.Path
		paths = append(paths, o.Path)
	}
	valid, err := b.store.QueryValidPaths(ctx, paths)
	if err != nil {
		return nil, false, err
	}
	return outs, len(valid) != len(paths), nil
}

// notCheckable is Nix's error for checking a derivation whose outputs are
// not all valid.
func notCheckable(drv storepath.StorePath) error {
	return fmt.Errorf("some outputs of '%s' are not valid, so checking is not possible", hl(drv.String()))
}

// goalKey names a goal: requests share the goal of a derivation in one
// mode (a check is not a build, and neither waits for the other but through
// the outputs' locks).
type goalKey struct {
	drv  storepath.StorePath
	mode Mode
}

// goal builds every missing output of one derivation (in Normal mode; see
// Mode for the others). Its result fields are set before done is closed.
type goal struct {
	drvPath storepath.StorePath
	drv     *derivation.Derivation
	mode    Mode
	// wanted are the output names the requests asked for, sorted; nil
	// means all. They only name the goal in messages ("…drv!out"); a goal
	// builds every output.
	wanted []string
	// repair are the outputs a Repair goal rebuilds (missing or corrupt).
	repair map[storepath.StorePath]bool
	done   chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	refs   int // guarded by Builder.mu

	status     Status
	err        error
	timesBuilt int
	// round of rounds is the build running (repeat); prev are the outputs
	// of the round before; nonDet says two rounds differed.
	round, rounds int
	prev          []*store.PathInfo
	nonDet        bool
	start         time.Time
	stop          time.Time

	mu       sync.Mutex
	requests []*request
	running  bool
	sinks    []BuildLog
	machine  string // the remote builder's store URI, while one builds it
}

// acquire returns the goal for drvPath in mode, joining a running one or
// starting it for r; wanted are the outputs r asks for (nil: all).
func (b *Builder) acquire(r *request, drvPath storepath.StorePath, drv *derivation.Derivation, mode Mode, wanted []string) *goal {
	b.mu.Lock()
	defer b.mu.Unlock()
	key := goalKey{drvPath, mode}
	if g, ok := b.goals[key]; ok {
		g.refs++
		g.join(r, wanted)
		return g
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &goal{drvPath: drvPath, drv: drv, mode: mode, done: make(chan struct{}), ctx: ctx, cancel: cancel, refs: 1}
	if len(wanted) > 0 {
		g.wanted = slices.Sorted(slices.Values(wanted))
		g.wanted = slices.Compact(g.wanted)
	}
	g.requests = []*request{r}
	r.progress(func() { r.expected++ })
	b.goals[key] = g
	go b.run(g, r)
	return g
}

// name is how Nix names the goal in messages: "building of '…drv!out' from
// .drv file".
func (g *goal) name() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return fmt.Sprintf("building of '%s' from .drv file", Target{Drv: g.drvPath, Outputs: g.wanted})
}

// release drops one reference; the last one cancels the goal (a no-op
// when it is done) and release reports true.
func (b *Builder) release(g *goal) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	g.refs--
	if g.refs == 0 {
		g.cancel()
		return true
	}
	return false
}

// join adds r, which wants the outputs wanted (nil: all), to the requests
// that see g's log and progress.
func (g *goal) join(r *request, wanted []string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.wanted != nil {
		if len(wanted) == 0 {
			g.wanted = nil
		} else {
			g.wanted = slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(g.wanted), wanted...))))
		}
	}
	if slices.Contains(g.requests, r) {
		return
	}
	g.requests = append(g.requests, r)
	r.progress(func() {
		r.expected++
		if g.running {
			r.running++
		}
	})
	if g.running && r.log != nil {
		g.sinks = append(g.sinks, r.buildStarted(g))
	}
}

// forEach calls f for every request following g.
func (g *goal) forEach(f func(r *request)) {
	g.mu.Lock()
	rs := slices.Clone(g.requests)
	g.mu.Unlock()
	for _, r := range rs {
		f(r)
	}
}

// run is a goal's goroutine.
func (b *Builder) run(g *goal, r *request) {
	g.start = time.Now()
	st, err := b.realise(g, r)
	g.status, g.err, g.stop = st, err, time.Now()
	b.mu.Lock()
	delete(b.goals, goalKey{g.drvPath, g.mode})
	b.mu.Unlock()
	g.forEach(func(r *request) {
		r.progress(func() {
			if st.Success() {
				r.done++
			} else {
				r.failed++
			}
		})
	})
	g.cancel()
	close(g.done)
}

// realise makes g's outputs valid: inputs first, then the build.
func (b *Builder) realise(g *goal, r *request) (Status, error) {
	ctx := g.ctx
	drv := g.drv
	inMode := Normal
	if g.mode == Repair {
		inMode = Repair
		bad, err := b.badOutputs(ctx, r, g)
		if err != nil {
			return MiscFailure, err
		}
		if len(bad) == 0 {
			return b.repairClosure(g, r)
		}
		g.repair = bad
	}

	// The outputs from a binary cache, when one has them.
	if ok, err := b.trySubstitute(ctx, g, r); err != nil {
		return MiscFailure, err
	} else if ok {
		return Substituted, nil
	}

	// Input derivations.
	var subs []*goal
	defer func() {
		for _, s := range subs {
			if b.release(s) {
				<-s.done // cancelled: wait until it is torn down
			}
		}
	}()
	for _, in := range sortedPaths(drv.InputDrvs) {
		inDrv, err := b.readDrv(ctx, in)
		if err != nil {
			return MiscFailure, err
		}
		_, missing, err := b.missing(ctx, inDrv, drv.InputDrvs[in])
		if err != nil {
			return MiscFailure, err
		}
		if missing || inMode == Repair {
			subs = append(subs, b.acquire(r, in, inDrv, inMode, drv.InputDrvs[in]))
		}
	}
	failed := 0
	if len(subs) > 0 {
		doneCh := make(chan *goal, len(subs))
		for _, s := range subs {
			go func() {
				select {
				case <-s.done:
					doneCh <- s
				case <-ctx.Done():
					doneCh <- nil
				}
			}()
		}
		for range subs {
			s := <-doneCh
			if s == nil {
				return MiscFailure, ctx.Err()
			}
			if !s.status.Success() {
				failed++
				g.forEach(func(r *request) { r.reportDep(s) })
				if !r.opts.KeepGoing {
					break
				}
			}
		}
	}
	if failed > 0 {
		return DependencyFailed, fmt.Errorf("%s dependencies of derivation '%s' failed to build", hl(fmt.Sprint(failed)), hl(g.drvPath.String()))
	}
	if len(r.opts.Subst.Caches) > 0 {
		if err := b.EnsurePaths(ctx, drv.InputSrcs, r.opts, r.log); err != nil && !onlyMissing(err) {
			return DependencyFailed, err
		}
	}
	for _, src := range drv.InputSrcs {
		ok, err := b.store.IsValidPath(ctx, src)
		if err != nil {
			return MiscFailure, err
		}
		if !ok {
			return DependencyFailed, fmt.Errorf("dependency '%s' of '%s' does not exist, and substitution is disabled", hl(src.String()), hl(g.drvPath.String()))
		}
	}
	return b.build(g, r)
}

func sortedPaths[V any](m map[storepath.StorePath]V) []storepath.StorePath {
	ps := make([]storepath.StorePath, 0, len(m))
	for p := range m {
		ps = append(ps, p)
	}
	storepath.SortPaths(ps)
	return ps
}

// hl highlights an argument of a message as Nix's hintfmt does.
func hl(s string) string { return "\x1b[35;1m" + s + "\x1b[0m" }

// ExitStatus is Nix's Worker::exitStatus for the failed results: 100 for a
// build failure, plus 1 if one timed out, plus 2 for a hash mismatch, plus 8
// when a check found a difference (alone: 104); 1 otherwise.
func ExitStatus(failed []Result) int {
	mask := 0
	for _, r := range failed {
		switch r.Status {
		case PermanentFailure:
			mask |= 0x04
		case TimedOut:
			mask |= 0x04 | 0x01
		case OutputRejected:
			if r.Err != nil && strings.Contains(r.Err.Error(), "hash mismatch") {
				mask |= 0x04 | 0x02
			}
		case NotDeterministic:
			mask |= 0x08
		}
	}
	if mask == 0 {
		return 1
	}
	return mask | 0x60
}

// Failure is how a request ends when some of its results failed, as Nix
// 2.8's Store::buildPaths ends: the failed results, the worker's exit
// status, and the error, the one failure's own or "build of 'A', 'B'
// failed" (Nix logs the failures' own errors first; the caller does). All
// nil and 0 when every result succeeded.
func Failure(results []Result) (failed []Result, status int, err error) {
	for _, r := range results {
		if !r.Status.Success() {
			failed = append(failed, r)
		}
	}
	switch len(failed) {
	case 0:
		return nil, 0, nil
	case 1:
		return failed, ExitStatus(failed), failed[0].Err
	}
	var names []string
	for _, r := range failed {
		names = append(names, "'"+r.Target.Drv.String()+"'")
	}
	return failed, ExitStatus(failed), fmt.Errorf("build of %s failed", strings.Join(names, ", "))
}

// Wire is r as the worker and serve protocols carry it.
func (r Result) Wire() protocol.BuildResult {
	res := protocol.BuildResult{
		Status:             protocol.BuildStatus(r.Status),
		TimesBuilt:         uint64(r.TimesBuilt),
		IsNonDeterministic: r.NonDeterministic,
		StartTime:          r.Start,
		StopTime:           r.Stop,
	}
	if r.Err != nil {
		res.ErrorMsg = r.Err.Error()
	}
	if r.Status.Success() {
		res.BuiltOutputs = map[string]protocol.BuiltOutput{}
		for name, p := range r.Outputs {
			res.BuiltOutputs[name] = protocol.BuiltOutput{OutPath: p}
		}
	}
	return res
}
