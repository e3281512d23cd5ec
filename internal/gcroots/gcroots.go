// Package gcroots keeps the garbage collector's roots the way Nix 2.8 lays them
// out under the state directory, so that Cairn and Nix can share one store:
//
//	STATE/gcroots/…              direct roots: symlinks (at any depth) to store paths,
//	                             or regular files named like a store path's base name
//	STATE/gcroots/auto/<h>       indirect roots: h = nix32(sha1(L)), a symlink to L, an
//	                             absolute link elsewhere that points into the store
//	STATE/profiles/…             profiles, scanned like gcroots
//	STATE/gcroots/per-user/USER  and STATE/profiles/per-user/USER: made for each
//	                             user who connects to the daemon (CreateUserDirs)
//	STATE/temproots/<n>          temporary roots of a live process: store paths, each
//	                             followed by NUL; the owner holds an exclusive flock on
//	                             the file for as long as it lives. n is decimal (Nix's
//	                             collector parses it as an int): a pid for Nix, a random
//	                             number in [MinTempNumber, MaxTempNumber) for Cairn,
//	                             one file per daemon connection.
//	STATE/gc.lock                the collector holds it exclusively while it runs; a
//	                             writer adding a temporary root tries it shared to
//	                             learn whether a collector runs
//	STATE/gc-socket/socket       while the collector runs, new temporary roots are
//	                             also sent here ("<path>\n", answered by "1"), once
//	                             they are in the file
//
// FindRoots reads all of these (but not the runtime roots of processes, which
// need root and are the job of cairn-roots), following symlinks as Nix 2.8's
// findRoots does.
package gcroots

import (
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"cairn/internal/nixbase32"
	"cairn/internal/storepath"
)

// Names inside the state directory.
const (
	RootsDirName    = "gcroots"
	AutoDirName     = "auto"
	ProfilesDirName = "profiles"
	PerUserDirName  = "per-user"
	TempDirName     = "temproots"
	GCLockName      = "gc.lock"
	GCSocketName    = "gc-socket/socket"
)

// Temporary roots files made by Cairn are named by a number in
// [MinTempNumber, MaxTempNumber): above Linux's largest pid (2^22), so never a
// live Nix process's, and below 2^31, so Nix's collector can parse it.
const (
	MinTempNumber = 1 << 23
	MaxTempNumber = 1<<31 - 1
)

// Limits on what is read from the roots tree.
const (
	// MaxDepth bounds how deep the gcroots and profiles trees are scanned.
	MaxDepth = 64
	// MaxTempRootsSize bounds one temporary roots file.
	MaxTempRootsSize = 64 << 20
)

// Censored replaces the link of a root when the caller may not see it.
const Censored = "{censored}"

// Roots is the roots layout of one state directory, for one store dir.
type Roots struct {
	stateDir string
	storeDir storepath.StoreDir
	// realStoreDir is where the store's files are; a root must not be created
	// in it.
	realStoreDir string
}

// New returns the roots kept under stateDir for the store paths of storeDir,
// whose files are in realStoreDir ("" means storeDir itself).
func New(stateDir string, storeDir storepath.StoreDir, realStoreDir string) *Roots {
	if realStoreDir == "" {
		realStoreDir = string(storeDir)
	}
	return &Roots{stateDir: stateDir, storeDir: storeDir, realStoreDir: realStoreDir}
}

// StateDir returns the state directory.
func (r *Roots) StateDir() string { return r.stateDir }

// Root is one root: a link (a file name, or "{temp:N}" or Censored) keeping
// Path alive.
type Root struct {
	Link string
	Path storepath.StorePath
}

// IndirectLink returns the name in gcroots/auto of the indirect root for link.
func (r *Roots) IndirectLink(link string) string {
	sum := sha1.Sum([]byte(link))
	return filepath.Join(r.stateDir, RootsDirName, AutoDirName, nixbase32.EncodeToString(sum[:]))
}

// AddIndirect registers link (an absolute path outside the store, normally a
// symlink into it) as an indirect root: gcroots/auto/<nix32(sha1(link))> → link.
func (r *Roots) AddIndirect(link string) error {
	link, err := canonical(link)
	if err != nil {
		return fmt.Errorf("add indirect root %q: %w", link, err)
	}
	if err := makeSymlink(r.IndirectLink(link), link); err != nil {
		return fmt.Errorf("add indirect root %s: %w", link, err)
	}
	return nil
}

// AddPerm makes gcRoot a symlink to p and registers it as an indirect root
// (Nix's addPermRoot). The caller must have made p a temporary root first. An
// existing gcRoot is replaced only if it is a symlink into the store. It
// returns the canonical gcRoot.
func (r *Roots) AddPerm(p storepath.StorePath, gcRoot string) (string, error) {
	root, err := canonical(gcRoot)
	if err != nil {
		return "", fmt.Errorf("add root %q: %w", gcRoot, err)
	}
	if r.inStore(root) {
		return "", fmt.Errorf("add root %s: creating a garbage collector root in the Nix store is forbidden "+
			"(are you running nix-build inside the store?)", root)
	}
	if fi, err := os.Lstat(root); err == nil {
		t, _ := os.Readlink(root)
		if fi.Mode()&fs.ModeSymlink == 0 || !r.inStore(t) {
			return "", fmt.Errorf("add root %s: cannot create symlink; already exists", root)
		}
	}
	if err := makeSymlink(root, p.String()); err != nil {
		return "", fmt.Errorf("add root %s: %w", root, err)
	}
	if err := r.AddIndirect(root); err != nil {
		return "", err
	}
	return root, nil
}

func (r *Roots) inStore(p string) bool {
	for _, d := range []string{string(r.storeDir), r.realStoreDir} {
		if p == d || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}

// canonical makes an absolute, clean path (relative paths are taken from /,
// the daemon's working directory, as Nix's daemon does after chdir("/")).
func canonical(p string) (string, error) {
	if p == "" {
		return "", errors.New("empty path")
	}
	if strings.IndexByte(p, 0) >= 0 {
		return "", errors.New("NUL in path")
	}
	if !filepath.IsAbs(p) {
		p = "/" + p
	}
	return filepath.Clean(p), nil
}

// makeSymlink creates (or atomically replaces) link → target, making link's
// parent directories as needed.
func makeSymlink(link, target string) error {
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		return err
	}
	var b [8]byte
	rand.Read(b[:])
	tmp := fmt.Sprintf("%s.tmp-%d-%d", link, os.Getpid(), binary.LittleEndian.Uint32(b[:]))
	if err := os.Symlink(target, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// CreateUserDirs makes profiles/per-user/USER and gcroots/per-user/USER, mode
// 0755, owned by uid (and the daemon's group) when chown is set, as Nix's
// daemon does for each connecting user.
func (r *Roots) CreateUserDirs(user string, uid int, chown bool) error {
	if user == "" || user == "." || user == ".." || strings.ContainsAny(user, "/\x00") {
		return fmt.Errorf("create user dirs: bad user name %q", user)
	}
	for _, d := range []string{
		filepath.Join(r.stateDir, ProfilesDirName, PerUserDirName, user),
		filepath.Join(r.stateDir, RootsDirName, PerUserDirName, user),
	} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create user dirs: %w", err)
		}
		if err := os.Chmod(d, 0o755); err != nil {
			return fmt.Errorf("create user dirs: %w", err)
		}
		if chown {
			if err := os.Chown(d, uid, os.Getgid()); err != nil {
				return fmt.Errorf("create user dirs: %w", err)
			}
		}
	}
	return nil
}

// TempRoots is one temporary roots file, held (exclusively locked) from
// OpenTemp to Close. It is safe for concurrent use.
type TempRoots struct {
	r    *Roots
	mu   sync.Mutex
	f    *os.File
	name string
	num  int
	gc   net.Conn // connection to a running collector's socket
	lock *os.File // STATE/gc.lock, tried shared to learn whether a collector runs
}

// OpenTemp creates a new temporary roots file under a fresh number and locks
// it.
func (r *Roots) OpenTemp() (*TempRoots, error) {
	dir := filepath.Join(r.stateDir, TempDirName)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("open temp roots: %w", err)
	}
	for range 100 {
		var b [4]byte
		rand.Read(b[:])
		n := MinTempNumber + int(binary.LittleEndian.Uint32(b[:])%(MaxTempNumber-MinTempNumber))
		name := filepath.Join(dir, strconv.Itoa(n))
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("open temp roots: %w", err)
		}
		// Nobody else can know the name yet, so this cannot block; a
		// collector that removed the file before we locked it would have left
		// a "d" in it (Nix's check), which cannot happen to a file we just
		// created exclusively.
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			f.Close()
			os.Remove(name)
			return nil, fmt.Errorf("open temp roots: lock %s: %w", name, err)
		}
		return &TempRoots{r: r, f: f, name: name, num: n}, nil
	}
	return nil, errors.New("open temp roots: no free name")
}

// Name returns the file's path.
func (t *TempRoots) Name() string { return t.name }

// Add makes p a temporary root: it appends p to the file, then, if a collector
// is running (it holds the GC lock exclusively), sends p to its socket and waits
// for its acknowledgement, as Nix does. The file comes first (Nix writes it
// last): a collector may release the lock right after answering, and the next
// one reads only the files.
func (t *TempRoots) Add(ctx context.Context, p storepath.StorePath) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.f == nil {
		return errors.New("add temp root: closed")
	}
	if t.lock == nil {
		lock, err := os.OpenFile(filepath.Join(t.r.stateDir, GCLockName), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return fmt.Errorf("add temp root %s: %w", p, err)
		}
		t.lock = lock
	}
	// The file first: a collector that answers on its socket may release
	// the GC lock at once, and the next one reads only the files, so the root
	// must be there before the first answer (and before the path appears).
	if _, err := t.f.WriteString(p.String() + "\x00"); err != nil {
		return fmt.Errorf("add temp root %s: %w", p, err)
	}
	lockFD := int(t.lock.Fd())
	for {
		if err := unix.Flock(lockFD, unix.LOCK_SH|unix.LOCK_NB); err == nil {
			// No collector runs: the next one reads the file.
			unix.Flock(lockFD, unix.LOCK_UN)
			break
		} else if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("add temp root %s: lock: %w", p, err)
		}
		// A collector is running: tell it.
		if err := t.tellCollector(p); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("add temp root %s: %w", p, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// tellCollector sends p to the running collector's socket and waits for "1".
func (t *TempRoots) tellCollector(p storepath.StorePath) error {
	if t.gc == nil {
		c, err := net.DialTimeout("unix", filepath.Join(t.r.stateDir, GCSocketName), 5*time.Second)
		if err != nil {
			return err
		}
		t.gc = c
	}
	fail := func(err error) error {
		t.gc.Close()
		t.gc = nil
		return err
	}
	if _, err := t.gc.Write([]byte(p.String() + "\n")); err != nil {
		return fail(err)
	}
	var b [1]byte
	if _, err := t.gc.Read(b[:]); err != nil {
		return fail(err)
	}
	if b[0] != '1' {
		return fail(fmt.Errorf("collector answered %q", b[0]))
	}
	return nil
}

// Close removes the file and releases the lock.
func (t *TempRoots) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.f == nil {
		return nil
	}
	if t.gc != nil {
		t.gc.Close()
		t.gc = nil
	}
	if t.lock != nil {
		t.lock.Close()
		t.lock = nil
	}
	err := os.Remove(t.name)
	if cerr := t.f.Close(); err == nil {
		err = cerr
	}
	t.f = nil
	if err != nil {
		return fmt.Errorf("close temp roots: %w", err)
	}
	return nil
}

// FindOptions adjusts Find.
type FindOptions struct {
	// Censor replaces every link by Censored (for untrusted clients).
	Censor bool
	// Valid reports whether a store path is valid; roots to invalid paths are
	// skipped. Nil takes every path as valid.
	Valid func(storepath.StorePath) bool
	// Log receives Nix's informational messages ("skipping invalid root …");
	// nil discards them.
	Log func(string)
	// LinksOnly reads the links of gcroots and profiles and nothing else: no
	// temporary roots, and no stale link removed. It is what a reader other
	// than the store's owner may do (cairn-roots, which can follow links
	// into home directories that an unprivileged daemon cannot).
	LinksOnly bool
}

// Find returns every root in gcroots, profiles and the temporary roots files,
// sorted by path, then link. Like Nix 2.8 it follows a symlink that does not
// point into the store one step further (an indirect root), removes links in
// gcroots/auto whose target is gone, and removes temporary roots files whose
// owner died.
func (r *Roots) Find(ctx context.Context, opts FindOptions) ([]Root, error) {
	f := &finder{r: r, opts: opts, seen: map[Root]bool{}}
	for _, d := range []string{RootsDirName, ProfilesDirName} {
		if err := f.walk(ctx, filepath.Join(r.stateDir, d), 0); err != nil {
			return nil, err
		}
	}
	if !opts.LinksOnly {
		if err := f.temp(); err != nil {
			return nil, err
		}
	}
	if opts.Censor {
		for i := range f.roots {
			f.roots[i].Link = Censored
		}
		f.roots = dedup(f.roots)
	}
	slices.SortFunc(f.roots, func(a, b Root) int {
		if c := strings.Compare(a.Path.String(), b.Path.String()); c != 0 {
			return c
		}
		return strings.Compare(a.Link, b.Link)
	})
	return slices.Compact(f.roots), nil
}

func dedup(rs []Root) []Root {
	seen := map[Root]bool{}
	out := rs[:0]
	for _, x := range rs {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

type finder struct {
	r     *Roots
	opts  FindOptions
	roots []Root
	seen  map[Root]bool
}

func (f *finder) info(format string, args ...any) {
	if f.opts.Log != nil {
		f.opts.Log(fmt.Sprintf(format, args...))
	}
}

func (f *finder) found(link, target string) {
	p, _, err := f.r.storeDir.ToStorePath(target)
	if err != nil {
		return
	}
	if f.opts.Valid != nil && !f.opts.Valid(p) {
		f.info("skipping invalid root from '%s' to '%s'", link, target)
		return
	}
	root := Root{Link: link, Path: p}
	if !f.seen[root] {
		f.seen[root] = true
		f.roots = append(f.roots, root)
	}
}

func (f *finder) isInStore(p string) bool {
	return strings.HasPrefix(p, string(f.r.storeDir)+"/")
}

// permanent reports errors Nix's findRoots skips with a message.
func permanent(err error) bool {
	return errors.Is(err, fs.ErrPermission) || errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR)
}

func (f *finder) walk(ctx context.Context, path string, depth int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if depth > MaxDepth {
		f.info("cannot read potential root '%s'", path)
		return nil
	}
	err := f.walk1(ctx, path, depth)
	if err != nil && permanent(err) {
		f.info("cannot read potential root '%s'", path)
		return nil
	}
	return err
}

func (f *finder) walk1(ctx context.Context, path string, depth int) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	switch {
	case fi.IsDir():
		ents, err := os.ReadDir(path)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if err := f.walk(ctx, filepath.Join(path, e.Name()), depth+1); err != nil {
				return err
			}
		}
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(path)
		if err != nil {
			return err
		}
		if f.isInStore(target) {
			f.found(path, target)
			return nil
		}
		// An indirect root: the link names another link, which may point
		// into the store.
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(path), target)
		}
		target = filepath.Clean(target)
		if _, err := os.Lstat(target); err != nil {
			auto := filepath.Join(f.r.stateDir, RootsDirName, AutoDirName)
			if errors.Is(err, fs.ErrNotExist) && strings.HasPrefix(path, auto+"/") && !f.opts.LinksOnly {
				f.info("removing stale link from '%s' to '%s'", path, target)
				os.Remove(path)
			}
			return nil
		}
		fi2, err := os.Lstat(target)
		if err != nil || fi2.Mode()&fs.ModeSymlink == 0 {
			return nil
		}
		target2, err := os.Readlink(target)
		if err != nil {
			return nil
		}
		if f.isInStore(target2) {
			f.found(target, target2)
		}
	case fi.Mode().IsRegular():
		p, err := f.r.storeDir.FromBase(filepath.Base(path))
		if err == nil && (f.opts.Valid == nil || f.opts.Valid(p)) {
			root := Root{Link: path, Path: p}
			if !f.seen[root] {
				f.seen[root] = true
				f.roots = append(f.roots, root)
			}
		}
	}
	return nil
}

// temp reads the temporary roots files of live processes and removes those of
// dead ones.
func (f *finder) temp() error {
	dir := filepath.Join(f.r.stateDir, TempDirName)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find temp roots: %w", err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if err := f.tempFile(filepath.Join(dir, e.Name()), n); err != nil {
			return err
		}
	}
	return nil
}

func (f *finder) tempFile(name string, n int) error {
	fd, err := os.OpenFile(name, os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find temp roots: %w", err)
	}
	defer fd.Close()
	if unix.Flock(int(fd.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
		// The owner is gone.
		f.info("removing stale temporary roots file '%s'", name)
		os.Remove(name)
		fd.WriteString("d")
		return nil
	}
	fi, err := fd.Stat()
	if err != nil {
		return fmt.Errorf("find temp roots: %w", err)
	}
	if fi.Size() > MaxTempRootsSize {
		return fmt.Errorf("find temp roots: %s: %d bytes: too long", name, fi.Size())
	}
	data := make([]byte, fi.Size())
	k, _ := fd.ReadAt(data, 0)
	data = data[:k]
	link := fmt.Sprintf("{temp:%d}", n)
	for len(data) > 0 {
		i := strings.IndexByte(string(data), 0)
		if i < 0 {
			break // a root being written
		}
		if p, err := f.r.storeDir.Parse(string(data[:i])); err == nil {
			root := Root{Link: link, Path: p}
			if !f.seen[root] {
				f.seen[root] = true
				f.roots = append(f.roots, root)
			}
		}
		data = data[i+1:]
	}
	return nil
}
