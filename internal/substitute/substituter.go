package substitute

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"cairn/internal/narinfo"
	"cairn/internal/nixhash"
	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
)

// ErrNoSubstitute says no cache of the Config has a path.
var ErrNoSubstitute = errors.New("no substituter has the path")

// NotFoundError says no cache has Path (with Unsigned: none that has it
// signed by a trusted key); it matches ErrNoSubstitute.
type NotFoundError struct {
	Path     storepath.StorePath
	Unsigned bool
}

func (e *NotFoundError) Error() string {
	if e.Unsigned {
		return fmt.Sprintf("path '%s' is in no binary cache with a signature by a key in 'trusted-public-keys'", e.Path)
	}
	return fmt.Sprintf("path '%s' is not in any binary cache", e.Path)
}

// Is makes a NotFoundError match ErrNoSubstitute.
func (e *NotFoundError) Is(target error) bool { return target == ErrNoSubstitute }

// DefaultJobs is max-substitution-jobs when it is not set (Nix 2.16's default).
const DefaultJobs = 16

// MaxJobs bounds max-substitution-jobs.
const MaxJobs = 256

// Config is one request's substitution settings.
type Config struct {
	// Caches in the order the substituters setting names them; they are
	// tried by priority (stable).
	Caches      []*Cache
	Keys        []narinfo.PublicKey // trusted-public-keys
	RequireSigs bool                // require-sigs
}

// Getter reads a setting by name.
type Getter interface{ Get(name string) string }

// ConfigFrom reads substituters, trusted-public-keys, require-sigs and the
// caches' options from s; warn gets what is skipped (a malformed key, a cache
// that cannot be opened). With substitute = false there are no caches.
func ConfigFrom(s Getter, warn func(string)) Config {
	cfg := Config{RequireSigs: s.Get("require-sigs") != "false"}
	if s.Get("substitute") == "false" {
		return cfg
	}
	cfg.Keys = narinfo.TrustedKeys(s.Get("trusted-public-keys"), warn)
	o := OptionsFrom(s)
	for _, u := range strings.Fields(s.Get("substituters")) {
		c, err := Open(u, o)
		if err != nil {
			warn(err.Error())
			continue
		}
		cfg.Caches = append(cfg.Caches, c)
	}
	return cfg
}

// OptionsFrom reads the caches' options from s.
func OptionsFrom(s Getter) Options {
	secs := func(name string, def int) time.Duration {
		var n int
		if _, err := fmt.Sscan(s.Get(name), &n); err != nil {
			n = def
		}
		return time.Duration(n) * time.Second
	}
	return Options{
		NegativeTTL: secs("narinfo-cache-negative-ttl", 3600),
		PositiveTTL: secs("narinfo-cache-positive-ttl", 30*24*3600),
		HTTP:        HTTPOptions{ConnectTimeout: secs("connect-timeout", 0), CAFile: s.Get("ssl-cert-file")},
	}
}

// JobsFrom reads max-substitution-jobs, bounded by MaxJobs.
func JobsFrom(s Getter) int {
	var n int
	if _, err := fmt.Sscan(s.Get("max-substitution-jobs"), &n); err != nil || n <= 0 {
		n = DefaultJobs
	}
	return min(n, MaxJobs)
}

// Found is a narinfo and the cache that has it.
type Found struct {
	Cache   *Cache
	NarInfo *narinfo.NarInfo
}

// Logger receives a substitution's progress. Its methods may be called from
// several goroutines at once.
type Logger interface {
	// Substituting says p is being copied from cacheURL; the NAR is
	// narSize bytes. The returned Activity gets the bytes as they come.
	Substituting(p storepath.StorePath, cacheURL string, narSize uint64) Activity
	// Warn reports a cache that was skipped and why (an unsigned narinfo,
	// a cache that cannot be reached).
	Warn(msg string)
	// Error reports a substitution that failed (a download, a hash
	// mismatch), as Nix prints it before trying the next cache.
	Error(msg string)
}

// Activity is one substitution's progress.
type Activity interface {
	Progress(done, expected uint64)
	Done()
}

// Downloader is an Activity that also shows downloads (Nix's FileTransfer
// activity, whose bytes its progress bar shows as "DL"): the NAR file of an
// http(s) cache as it is read.
type Downloader interface {
	Downloading(url string) Activity
}

// sorted returns cfg's caches that answer, by priority (stable), checked
// against the store dir.
func (cfg Config) sorted(ctx context.Context, dir storepath.StoreDir, log Logger) []*Cache {
	type ranked struct {
		c    *Cache
		prio int
	}
	var rs []ranked
	for _, c := range cfg.Caches {
		info, err := c.Info(ctx, dir)
		if err != nil {
			if log != nil && ctx.Err() == nil && c.firstWarning() {
				log.Warn(err.Error())
			}
			continue
		}
		rs = append(rs, ranked{c, info.Priority})
	}
	slices.SortStableFunc(rs, func(a, b ranked) int { return a.prio - b.prio })
	out := make([]*Cache, len(rs))
	for i, r := range rs {
		out[i] = r.c
	}
	return out
}

// Query returns the first narinfo of p in the caches by priority, without
// checking signatures (as Nix's querySubstitutablePathInfos), or an error
// matching ErrNoSubstitute.
func Query(ctx context.Context, cfg Config, p storepath.StorePath, log Logger) (*Found, error) {
	for _, c := range cfg.sorted(ctx, p.Dir(), log) {
		ni, err := c.NarInfo(ctx, p)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if log != nil {
				log.Warn(err.Error())
			}
			continue
		}
		return &Found{Cache: c, NarInfo: ni}, nil
	}
	return nil, &NotFoundError{Path: p}
}

// Trusted reports whether ni may be used under cfg: signed by a trusted key,
// from a trusted cache, content-addressed (its path matches its CA), or
// require-sigs is off.
func (cfg Config) Trusted(c *Cache, ni *narinfo.NarInfo) bool {
	if !cfg.RequireSigs || c.trusted {
		return true
	}
	if pathInfo(ni).ContentAddressed() {
		return true
	}
	return ni.Verify(cfg.Keys)
}

// pathInfo is the metadata ni gives its path.
func pathInfo(ni *narinfo.NarInfo) *store.PathInfo {
	info := &store.PathInfo{
		Path:       ni.StorePath,
		Deriver:    ni.Deriver,
		NarHash:    ni.NarHash,
		References: slices.Clone(ni.References),
		NarSize:    ni.NarSize,
		CA:         ni.CA,
	}
	for _, s := range ni.Sigs {
		info.Signatures = append(info.Signatures, s.String())
	}
	return info
}

// Substituter makes paths valid in a local store from binary caches. One
// Substituter serves any number of concurrent requests; requests for the
// same path share one substitution.
type Substituter struct {
	store *local.Store
	slots chan struct{} // one per running download (max-substitution-jobs)

	mu   sync.Mutex
	jobs map[storepath.StorePath]*job
}

// New returns a Substituter into st running at most jobs downloads at once
// (0: DefaultJobs).
func New(st *local.Store, jobs int) *Substituter {
	if jobs <= 0 {
		jobs = DefaultJobs
	}
	return &Substituter{store: st, slots: make(chan struct{}, min(jobs, MaxJobs)), jobs: map[storepath.StorePath]*job{}}
}

// job is one path's substitution, shared by every caller that wants it; the
// last caller to give up cancels it.
type job struct {
	done   chan struct{}
	err    error
	refs   int // guarded by Substituter.mu
	cancel context.CancelFunc
	fan    fanout // the loggers of every caller waiting
}

// fanout is a Logger telling the loggers of a job's callers that still
// wait (counted: one request may wait on a path through several parents).
type fanout struct {
	mu   sync.Mutex
	logs []fanEntry
}

type fanEntry struct {
	l Logger
	n int
}

func isComparable(l Logger) bool { return reflect.TypeOf(l).Comparable() }

func (f *fanout) add(l Logger) {
	if l == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if isComparable(l) {
		for i := range f.logs {
			if isComparable(f.logs[i].l) && f.logs[i].l == l {
				f.logs[i].n++
				return
			}
		}
	}
	f.logs = append(f.logs, fanEntry{l, 1})
}

// remove drops one count of l: a caller that stopped waiting hears no more.
func (f *fanout) remove(l Logger) {
	if l == nil || !isComparable(l) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.logs {
		if isComparable(f.logs[i].l) && f.logs[i].l == l {
			if f.logs[i].n--; f.logs[i].n == 0 {
				f.logs = slices.Delete(f.logs, i, i+1)
			}
			return
		}
	}
}

func (f *fanout) snapshot() []Logger {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Logger, len(f.logs))
	for i, e := range f.logs {
		out[i] = e.l
	}
	return out
}

func (f *fanout) Substituting(p storepath.StorePath, cacheURL string, narSize uint64) Activity {
	var acts multiActivity
	for _, l := range f.snapshot() {
		acts = append(acts, l.Substituting(p, cacheURL, narSize))
	}
	return acts
}

func (f *fanout) Warn(msg string) {
	for _, l := range f.snapshot() {
		l.Warn(msg)
	}
}

func (f *fanout) Error(msg string) {
	for _, l := range f.snapshot() {
		l.Error(msg)
	}
}

type multiActivity []Activity

func (m multiActivity) Progress(done, expected uint64) {
	for _, a := range m {
		a.Progress(done, expected)
	}
}

func (m multiActivity) Downloading(url string) Activity {
	var out multiActivity
	for _, a := range m {
		if d, ok := a.(Downloader); ok {
			out = append(out, d.Downloading(url))
		}
	}
	return out
}

func (m multiActivity) Done() {
	for _, a := range m {
		a.Done()
	}
}

// MaxDepth bounds the chain of references a substitution follows.
const MaxDepth = 1 << 12

// Realise makes every path of paths valid with its closure, substituting
// what is missing from cfg's caches (references first). The error of a path
// no cache has matches ErrNoSubstitute; any other error means a cache had it
// and its substitution failed (signature, hash, download).
func (s *Substituter) Realise(ctx context.Context, cfg Config, paths []storepath.StorePath, log Logger) error {
	return s.realiseAll(ctx, cfg, paths, log, nil)
}

func (s *Substituter) realiseAll(ctx context.Context, cfg Config, paths []storepath.StorePath, log Logger, chain []storepath.StorePath) error {
	if len(paths) == 0 {
		return nil
	}
	if len(paths) == 1 {
		return s.ensure(ctx, cfg, paths[0], log, chain)
	}
	errs := make([]error, len(paths))
	var wg sync.WaitGroup
	for i, p := range paths {
		wg.Go(func() { errs[i] = s.ensure(ctx, cfg, p, log, chain) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (s *Substituter) ensure(ctx context.Context, cfg Config, p storepath.StorePath, log Logger, chain []storepath.StorePath) error {
	if slices.Contains(chain, p) || len(chain) >= MaxDepth {
		return fmt.Errorf("substitute %s: the caches' references form a cycle or a chain deeper than %d", p, MaxDepth)
	}
	ok, err := s.store.IsValidPath(ctx, p)
	if err != nil || ok {
		return err
	}
	s.mu.Lock()
	j := s.jobs[p]
	start := j == nil
	var jctx context.Context
	if start {
		var cancel context.CancelFunc
		jctx, cancel = context.WithCancel(context.WithoutCancel(ctx))
		j = &job{done: make(chan struct{}), cancel: cancel}
		s.jobs[p] = j
	}
	j.refs++
	j.fan.add(log) // before the job starts: its first caller hears it all
	s.mu.Unlock()
	if start {
		next := append(slices.Clone(chain), p)
		go func() {
			j.err = s.substitute(jctx, cfg, p, &j.fan, next)
			s.mu.Lock()
			delete(s.jobs, p)
			s.mu.Unlock()
			j.cancel()
			close(j.done)
		}()
	}
	defer func() {
		j.fan.remove(log)
		s.mu.Lock()
		j.refs--
		if j.refs == 0 {
			j.cancel()
		}
		s.mu.Unlock()
	}()
	select {
	case <-j.done:
		return j.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// substitute tries p's caches in priority order.
func (s *Substituter) substitute(ctx context.Context, cfg Config, p storepath.StorePath, log Logger, chain []storepath.StorePath) error {
	var errs []error
	unsigned := false
	for _, c := range cfg.sorted(ctx, p.Dir(), log) {
		ni, err := c.NarInfo(ctx, p)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err == nil && !cfg.Trusted(c, ni) {
			// As if the cache did not have it (Nix tries the next one,
			// and a derivation then builds without --fallback).
			if log != nil {
				log.Warn(fmt.Sprintf("the substitute for '%s' from '%s' is not signed by any of the keys in 'trusted-public-keys'", p, c.URI()))
			}
			unsigned = true
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if log != nil {
				log.Warn(err.Error())
			}
			errs = append(errs, err)
			continue
		}
		var refs []storepath.StorePath
		for _, r := range ni.References {
			if r != p {
				refs = append(refs, r)
			}
		}
		if err := s.realiseAll(ctx, cfg, refs, log, chain); err != nil {
			return fmt.Errorf("some references of path '%s' could not be realised: %w", p, err)
		}
		if err := s.fetch(ctx, c, ni, log); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if log != nil {
				log.Error(err.Error())
			}
			errs = append(errs, err)
			continue
		}
		return nil
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return &NotFoundError{Path: p, Unsigned: unsigned}
}

// countingHasher counts and hashes what passes through it.
type countingHasher struct {
	h *nixhash.Hasher
	n uint64
}

func (c *countingHasher) Write(b []byte) (int, error) {
	c.n += uint64(len(b))
	if c.h != nil {
		c.h.Write(b)
	}
	return len(b), nil
}

// progressReader reports the bytes read to an Activity, at most every
// progressEvery bytes.
type progressReader struct {
	r              io.Reader
	act            Activity
	done, expected uint64
	last           uint64
}

const progressEvery = 256 << 10

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.done += uint64(n)
	if p.done-p.last >= progressEvery || err != nil && p.done != p.last {
		p.report()
	}
	return n, err
}

// report sends the progress so far, if any is new.
func (p *progressReader) report() {
	if p.act != nil && (p.done != p.last || p.done == 0) {
		p.last = p.done
		p.act.Progress(p.done, p.expected)
	}
}

// Bounds on a NAR file and a NAR whose narinfo does not give the size.
const (
	// MaxUnknownSize bounds a file or NAR of unknown size (1 TiB).
	MaxUnknownSize = 1 << 40
	// fileSlack is what compression may add to a NAR beyond an eighth of its
	// size (headers, incompressible blocks).
	fileSlack = 1 << 20
)

// fileLimit is how many bytes of ni's file are read at most: its FileSize,
// else what compressing NarSize bytes could take, else MaxUnknownSize.
func fileLimit(ni *narinfo.NarInfo) uint64 {
	switch {
	case ni.FileSize > 0:
		return min(ni.FileSize, MaxUnknownSize)
	case ni.NarSize > 0:
		return min(ni.NarSize+ni.NarSize/8+fileSlack, MaxUnknownSize)
	}
	return MaxUnknownSize
}

// fetch downloads ni's NAR from c and adds it, checking FileSize, FileHash,
// NarSize and NarHash; on any mismatch nothing is registered.
func (s *Substituter) fetch(ctx context.Context, c *Cache, ni *narinfo.NarInfo, log Logger) (err error) {
	s.slots <- struct{}{}
	defer func() { <-s.slots }()
	p := ni.StorePath
	var act Activity
	if log != nil {
		act = log.Substituting(p, c.URI(), ni.NarSize)
		defer act.Done()
	}
	wrap := func(err error) error {
		return fmt.Errorf("substitute '%s' from '%s': %w", p, c.URI(), err)
	}
	rc, err := c.OpenNar(ctx, ni)
	if err != nil {
		return wrap(err)
	}
	defer rc.Close()
	file := &countingHasher{}
	if !ni.FileHash.IsZero() {
		file.h = nixhash.NewHasher(ni.FileHash.Algorithm())
	}
	var compressed io.Reader = rc
	if d, ok := act.(Downloader); ok && c.remote() {
		dl := d.Downloading(c.fileURL(ni.URL))
		defer dl.Done()
		compressed = &progressReader{r: compressed, act: dl, expected: ni.FileSize}
	}
	limit := fileLimit(ni)
	compressed = io.LimitReader(compressed, int64(limit)+1)
	compressed = io.TeeReader(compressed, file)
	dec, release, err := decompressor(ni.Compression, compressed)
	if err != nil {
		return wrap(err)
	}
	defer release()
	narLimit := ni.NarSize
	if narLimit == 0 { // old caches may leave it out
		narLimit = MaxUnknownSize
	}
	nar := io.LimitReader(dec, int64(min(narLimit, MaxUnknownSize)))
	narStream := &progressReader{r: nar, act: act, expected: ni.NarSize}

	b := s.store.NewBatch()
	defer b.Discard()
	if err := b.AddNar(ctx, pathInfo(ni), narStream, store.AddNarOptions{}); err != nil {
		return wrap(err)
	}
	narStream.report() // AddNar stops at the NAR's end, before any EOF
	// The rest of the file: nothing more may decompress, and the
	// compressed stream is read to its end (an xz or zstd stream checks
	// its checksum there).
	var one [1]byte
	if n, err := io.ReadFull(dec, one[:]); n > 0 {
		return wrap(errors.New("data after the NAR"))
	} else if err != io.EOF && err != io.ErrUnexpectedEOF {
		return wrap(err)
	}
	if _, err := io.Copy(io.Discard, compressed); err != nil {
		return wrap(err)
	}
	if file.n > limit {
		return wrap(fmt.Errorf("the file is larger than %d bytes", limit))
	}
	if ni.FileSize > 0 && file.n != ni.FileSize {
		return wrap(fmt.Errorf("%w: file size is %d, the narinfo says %d", store.ErrHashMismatch, file.n, ni.FileSize))
	}
	if file.h != nil {
		if got := file.h.Sum(); got != ni.FileHash {
			return wrap(fmt.Errorf("%w: file hash is %s, the narinfo says %s", store.ErrHashMismatch, got, ni.FileHash))
		}
	}
	if err := b.Commit(ctx); err != nil {
		return wrap(err)
	}
	return nil
}

// MassQuery returns cfg with only the caches whose nix-cache-info says
// WantMassQuery (those Nix asks QuerySubstitutablePaths of).
func (cfg Config) MassQuery(ctx context.Context, dir storepath.StoreDir) Config {
	out := cfg
	out.Caches = nil
	for _, c := range cfg.Caches {
		if info, err := c.Info(ctx, dir); err == nil && info.WantMassQuery {
			out.Caches = append(out.Caches, c)
		}
	}
	return out
}

// prefetchJobs bounds the concurrent lookups of Prefetch.
const prefetchJobs = 16

// Prefetch looks paths up in cfg's caches concurrently, so that the Query
// calls that follow (a closure walked one path at a time) are answered from
// the caches' memory. Errors are left for those calls.
func Prefetch(ctx context.Context, cfg Config, paths []storepath.StorePath) {
	if len(paths) < 2 || len(cfg.Caches) == 0 {
		return
	}
	sem := make(chan struct{}, prefetchJobs)
	var wg sync.WaitGroup
	for _, p := range paths {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			Query(ctx, cfg, p, nil)
		})
	}
	wg.Wait()
}

// Substitutable returns what cfg's caches know of those of paths they have
// (QuerySubstitutablePathInfos' answer); a path none has is left out.
func Substitutable(ctx context.Context, cfg Config, paths []storepath.StorePath) ([]protocol.SubstitutablePathInfo, error) {
	var out []protocol.SubstitutablePathInfo
	if len(cfg.Caches) == 0 {
		return nil, nil
	}
	for _, p := range paths {
		f, err := Query(ctx, cfg, p, nil)
		if errors.Is(err, ErrNoSubstitute) {
			continue
		}
		if err != nil {
			return nil, err
		}
		ni := f.NarInfo
		out = append(out, protocol.SubstitutablePathInfo{Path: p, Deriver: ni.Deriver, References: ni.References,
			DownloadSize: ni.FileSize, NarSize: ni.NarSize})
	}
	return out, nil
}
