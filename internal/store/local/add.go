package local

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"cairn/internal/fsnar"
	"cairn/internal/nar"
	"cairn/internal/nixhash"
	"cairn/internal/refscan"
	"cairn/internal/store"
	"cairn/internal/storepath"
)

// Limits on what adding reads into memory.
const (
	// MaxTextSize bounds a text (AddCA with method Text) and a .drv file read to
	// register its outputs.
	MaxTextSize = 64 << 20
	// copyBufferSize is the buffer for flat file contents and dump pipes.
	copyBufferSize = 256 << 10
)

// A Batch adds several paths and registers them together: each Add… call
// unpacks, checks and canonicalises one path into a temporary; Commit makes the
// files durable, locks the paths, moves them into place and registers them all
// in one SQLite transaction. A Batch is not safe for concurrent use; use one
// per goroutine. Discard (or Commit) must be called to release temporaries.
type Batch struct {
	s      *Store
	items  []*pending
	byPath map[storepath.StorePath]*pending
	// lateValid leaves the check whether an added path is valid already to
	// Commit (one query for the batch) instead of one query per path; the
	// infos returned for such paths are then the new ones, not the valid
	// ones, until the caller looks them up again (see AddPaths).
	lateValid bool
	// skipped are the paths the last Commit found valid already.
	skipped    []storepath.StorePath
	cacheStamp stamp // the WAL-index header inside the last register's transaction (infocache.go)
	// held are paths whose locks the caller holds (LockStorePaths), which
	// Commit must not take again: a flock is per open file.
	held map[string]bool
	// sole says Commit runs with the store to itself (Store.trySole), so
	// it takes no path locks.
	sole bool
}

// HoldingLocks tells the batch that the caller holds the path locks of
// paths (a build adding its outputs), so that Commit does not wait for them.
func (b *Batch) HoldingLocks(paths ...storepath.StorePath) {
	if b.held == nil {
		b.held = map[string]bool{}
	}
	for _, p := range paths {
		b.held[p.Base()] = true
	}
}

// slot is the entry in a slot directory of the store's add temporary where
// one path is unpacked.
type slot struct {
	t       *tempDir
	dir     *slotDir // nil once released
	dirfd   int      // dir's descriptor
	dirName string   // dir's name in t
	name    string   // the entry's name in it
	// fd is the slot's unnamed file (tmpfile.go), or -1: then the slot
	// holds whatever is at name.
	fd int
}

// newSlot returns a fresh entry name in the store's add temporary.
func (b *Batch) newSlot() (*slot, error) { return b.s.newSlot(0) }

// newSlot returns a fresh entry in the slot directory of lane (see slotDir).
func (s *Store) newSlot(lane int) (*slot, error) {
	t, err := s.addTemp()
	if err != nil {
		return nil, err
	}
	d, err := s.takeSlotDir(t, lane)
	if err != nil {
		return nil, err
	}
	return &slot{t: t, dir: d, dirfd: d.fd, dirName: d.name, name: s.newSlotName(), fd: -1}, nil
}

// contentPath is the slot's path on disk.
func (t *slot) contentPath() string {
	return t.t.s.tempPath(t.t.name) + "/" + t.dirName + "/" + t.name
}

// remove deletes whatever the slot holds and releases it.
func (t *slot) remove() error {
	if t == nil {
		return nil
	}
	t.closeFD()
	err := removeTree(t.dirfd, t.name)
	t.release()
	return err
}

// pending is a path unpacked into a temporary, waiting for Commit.
type pending struct {
	info       *store.PathInfo
	temp       *slot
	repair     bool
	drvOutputs map[string]storepath.StorePath
	id         int64 // ValidPaths.id once registered
	skip       bool  // found valid at commit time
	// emptied says the slot was renamed into place and holds nothing
	// (Discard need not remove it).
	emptied bool
	// stats says what the slot holds: how many entries, whether the root is
	// a directory, which gets its final mode only once it has been moved into
	// place (CanonicaliseRoot).
	stats restoreStats
}

// NewBatch starts a batch of additions.
func (s *Store) NewBatch() *Batch {
	return &Batch{s: s, byPath: map[storepath.StorePath]*pending{}}
}

// Len returns how many paths wait for Commit.
func (b *Batch) Len() int { return len(b.items) }

// Discard drops every path not yet committed and removes the temporaries.
func (b *Batch) Discard() {
	for _, it := range b.items {
		// A moved path's slot is gone, or holds what the move replaced.
		if !it.emptied {
			it.temp.remove()
		} else {
			it.temp.release()
		}
	}
	b.items = nil
	clear(b.byPath)
}

// AddNar is store.NarAdder.AddNar, deferred to Commit.
func (b *Batch) AddNar(ctx context.Context, info *store.PathInfo, r io.Reader, opts store.AddNarOptions) error {
	return b.addNar(ctx, info, r, opts, nil)
}

// AddNarScanning is AddNar for a path whose references are not known yet (a
// build output): the NAR is scanned in the same pass for the hash parts of
// candidates, and info's References become the candidates found (Path itself
// included, if it is a candidate and occurs). If info.NarHash is zero it is
// computed instead of checked.
func (b *Batch) AddNarScanning(ctx context.Context, info *store.PathInfo, r io.Reader, candidates []storepath.StorePath) error {
	return b.addNar(ctx, info, r, store.AddNarOptions{}, candidates)
}

func (b *Batch) addNar(ctx context.Context, info *store.PathInfo, r io.Reader, opts store.AddNarOptions, scan []storepath.StorePath) error {
	s := b.s
	if err := s.checkInfo(info, scan != nil); err != nil {
		return err
	}
	if !opts.Repair {
		if _, dup := b.byPath[info.Path]; dup {
			return drainNar(r, info.Path)
		}
		valid, err := s.IsValidPath(ctx, info.Path)
		if err != nil {
			return err
		}
		if valid {
			return drainNar(r, info.Path)
		}
	}
	var scanner *refscan.Scanner
	if scan != nil {
		hps := make([]string, len(scan))
		for i, p := range scan {
			hps[i] = p.HashPart()
		}
		var err error
		if scanner, err = refscan.New(hps); err != nil {
			return fmt.Errorf("add %s: %w", info.Path, err)
		}
	}
	var extra nixhash.Algorithm
	if info.CA.Method == nixhash.Recursive {
		extra = info.CA.Hash.Algorithm()
	}
	t, err := b.newSlot()
	if err != nil {
		return fmt.Errorf("add %s: %w", info.Path, err)
	}
	it, err := b.ingestNar(t, info, r, extra, scanner, scan)
	if err != nil {
		t.remove()
		return fmt.Errorf("add %s: %w", info.Path, err)
	}
	it.repair = opts.Repair
	b.push(it)
	return nil
}

// checkInfo validates the metadata AddNar is given.
func (s *Store) checkInfo(info *store.PathInfo, hashOptional bool) error {
	if err := s.checkPath(info.Path); err != nil {
		return fmt.Errorf("add %s: %w", info.Path, err)
	}
	if info.NarHash.IsZero() && !hashOptional || !info.NarHash.IsZero() && info.NarHash.Algorithm() != nixhash.SHA256 {
		return fmt.Errorf("add %s: %w: the NAR hash must be sha256", info.Path, store.ErrInvalid)
	}
	for _, r := range info.References {
		if r.Dir() != s.dir {
			return fmt.Errorf("add %s: %w: reference %s is not in %s", info.Path, store.ErrInvalid, r, s.dir)
		}
	}
	if !info.Deriver.IsZero() && info.Deriver.Dir() != s.dir {
		return fmt.Errorf("add %s: %w: deriver %s is not in %s", info.Path, store.ErrInvalid, info.Deriver, s.dir)
	}
	if !info.CA.IsZero() && !info.ContentAddressed() {
		return fmt.Errorf("cannot add path '%s' to the Nix store because it claims to be content-addressed but isn't: %w",
			info.Path, store.ErrHashMismatch)
	}
	return nil
}

// drainNar reads one NAR from r and discards it.
func drainNar(r io.Reader, p storepath.StorePath) error {
	nr := nar.NewReader(r)
	for {
		_, err := nr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("add %s: %w", p, err)
		}
		if _, err := io.Copy(io.Discard, nr); err != nil {
			return fmt.Errorf("add %s: %w", p, err)
		}
	}
}

// narResult is what one pass over a NAR learns.
type narResult struct {
	narHash nixhash.Hash
	narSize uint64
	extra   nixhash.Hash // the NAR hashed with the extra algorithm, if any
	stats   restoreStats
	// canonical says the restore left every entry canonical already.
	canonical bool
}

// restoreNar unpacks the NAR read from r into t, hashing it with sha256 (and
// extra, when not zero) and feeding scanner, all in the same pass.
func restoreNar(t *slot, r io.Reader, extra nixhash.Algorithm, scanner *refscan.Scanner) (narResult, error) {
	h := newNarHashers(extra)
	var w io.Writer = h
	if scanner != nil {
		w = io.MultiWriter(h, scanner)
	}
	stats, canonical, err := restoreSlot(t, io.TeeReader(r, w))
	if err != nil {
		return narResult{}, err
	}
	res := h.result()
	res.stats, res.canonical = stats, canonical
	return res, nil
}

// restoreSlot unpacks the NAR read from r into t.
func restoreSlot(t *slot, r io.Reader) (stats restoreStats, canonical bool, err error) {
	bufp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bufp)
	stats, err = restoreCanonical(nar.NewReader(r), t.dirfd, t.name, t.contentPath(), t.t.s.umask, *bufp, t.t.s.writesBehind())
	return stats, !t.t.inherits, err
}

// narHashers hashes a NAR with sha256 and, when asked, a second algorithm.
type narHashers struct {
	sha, ex *nixhash.Hasher
	extra   nixhash.Algorithm
}

func newNarHashers(extra nixhash.Algorithm) *narHashers {
	h := &narHashers{sha: nixhash.NewHasher(nixhash.SHA256), extra: extra}
	if extra != 0 && extra != nixhash.SHA256 {
		h.ex = nixhash.NewHasher(extra)
	}
	return h
}

func (h *narHashers) Write(p []byte) (int, error) {
	h.sha.Write(p)
	if h.ex != nil {
		h.ex.Write(p)
	}
	return len(p), nil
}

// result returns the hashes and size of what was written.
func (h *narHashers) result() narResult {
	res := narResult{narHash: h.sha.Sum(), narSize: uint64(h.sha.Size())}
	switch {
	case h.ex != nil:
		res.extra = h.ex.Sum()
	case h.extra == nixhash.SHA256:
		res.extra = res.narHash
	}
	return res
}

func (b *Batch) ingestNar(t *slot, info *store.PathInfo, r io.Reader, extra nixhash.Algorithm, scanner *refscan.Scanner, scan []storepath.StorePath) (*pending, error) {
	res, err := restoreNar(t, r, extra, scanner)
	if err != nil {
		return nil, err
	}
	info = info.Clone()
	if info.NarHash.IsZero() {
		info.NarHash = res.narHash
	} else if res.narHash != info.NarHash {
		return nil, fmt.Errorf("hash mismatch importing path '%s';\n  specified: %s\n  got:       %s: %w",
			info.Path, info.NarHash, res.narHash, store.ErrHashMismatch)
	}
	if info.NarSize == 0 {
		info.NarSize = res.narSize
	} else if res.narSize != info.NarSize {
		return nil, fmt.Errorf("size mismatch importing path '%s';\n  specified: %d\n  got:       %d: %w",
			info.Path, info.NarSize, res.narSize, store.ErrHashMismatch)
	}
	if scanner != nil {
		info.References = info.References[:0]
		for _, p := range scan {
			if scanner.Has(p.HashPart()) {
				info.References = append(info.References, p)
			}
		}
	}
	if !info.CA.IsZero() {
		var got nixhash.Hash
		switch info.CA.Method {
		case nixhash.Recursive:
			got = res.extra
		case nixhash.Flat, nixhash.Text:
			if got, err = hashFile(t, info.CA.Hash.Algorithm()); err != nil {
				return nil, err
			}
		}
		if got != info.CA.Hash {
			return nil, fmt.Errorf("ca hash mismatch importing path '%s';\n  specified: %s\n  got:       %s: %w",
				info.Path, info.CA.Hash, got, store.ErrHashMismatch)
		}
	}
	return b.finish(t, info, res.stats, res.canonical)
}

// hashFile hashes the contents of the regular file a temporary holds.
func hashFile(t *slot, a nixhash.Algorithm) (nixhash.Hash, error) {
	fd, err := openat(t.dirfd, t.name, unix.O_RDONLY|unix.O_NOFOLLOW)
	if err != nil {
		return nixhash.Hash{}, &os.PathError{Op: "open", Path: t.contentPath(), Err: err}
	}
	f := os.NewFile(uintptr(fd), t.contentPath())
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nixhash.Hash{}, fmt.Errorf("%s: a flat or text content address needs a regular file: %w", t.contentPath(), store.ErrHashMismatch)
	}
	h := nixhash.NewHasher(a)
	if _, err := io.Copy(h, f); err != nil {
		return nixhash.Hash{}, err
	}
	return h.Sum(), nil
}

// finish canonicalises an unpacked path, reads a derivation's outputs, and
// makes the pending entry.
//
// A path restoreCanonical or writeFile made is canonical already (canonical);
// stats says what it holds.
func (b *Batch) finish(t *slot, info *store.PathInfo, stats restoreStats, canonical bool) (*pending, error) {
	if !canonical {
		if err := t.link(); err != nil {
			return nil, err
		}
		rootDir, err := canonicalise(t.dirfd, t.name, true)
		if err != nil {
			return nil, err
		}
		stats.rootDir = rootDir
	}
	storepath.SortPaths(info.References)
	info.References = slices.Compact(info.References)
	if len(info.Signatures) > 0 {
		info.Signatures = slices.Clone(info.Signatures)
		slices.Sort(info.Signatures)
		info.Signatures = slices.Compact(info.Signatures)
	}
	if info.RegistrationTime.IsZero() {
		info.RegistrationTime = time.Now()
	}
	it := &pending{info: info, temp: t, stats: stats}
	if info.Path.IsDerivation() {
		outs, err := b.s.readDrvOutputs(t, info.Path)
		if err != nil {
			return nil, err
		}
		it.drvOutputs = outs
	}
	return it, nil
}

func (b *Batch) push(it *pending) {
	b.items = append(b.items, it)
	b.byPath[it.info.Path] = it
}

// AddCA is store.CAAdder.AddCA, deferred to Commit. The returned info is final
// unless Commit fails.
func (b *Batch) AddCA(ctx context.Context, name string, method nixhash.Method, algo nixhash.Algorithm,
	refs []storepath.StorePath, r io.Reader) (*store.PathInfo, error) {
	return b.addCA(ctx, name, method, algo, refs, source{r: r, size: -1})
}

// source is what addCA reads.
type source struct {
	r    io.Reader
	size int64 // length of file contents when known, else -1
	// exec says a file keeps its execute bits.
	exec bool
	// file says r holds the bytes of one regular file even for method
	// Recursive (a file added from disk: no NAR to parse, one pass).
	file bool
	// dump, when set, is the goroutine writing the NAR r reads, which also
	// hashes it (a tree added from disk).
	dump *treeDump
}

// treeDump dumps a tree from disk as a NAR into a pipe, hashing it on the
// way: the walk and the reads (fsnar's own goroutine), the framing and the
// hashing (this one) and the restore (the caller's) spread over the cores.
type treeDump struct {
	h    *narHashers
	pr   *io.PipeReader
	done chan error
	once sync.Once
	err  error
}

func startTreeDump(ctx context.Context, src string, algo nixhash.Algorithm) *treeDump {
	pr, pw := io.Pipe()
	d := &treeDump{h: newNarHashers(algo), pr: pr, done: make(chan error, 1)}
	go func() {
		bw := bufio.NewWriterSize(pw, copyBufferSize)
		err := fsnar.Dump(ctx, io.MultiWriter(bw, d.h), src)
		if err == nil {
			err = bw.Flush()
		}
		pw.CloseWithError(err)
		d.done <- err
	}()
	return d
}

// wait stops the dump if it still runs and returns its error.
func (d *treeDump) wait() error {
	d.once.Do(func() {
		d.pr.CloseWithError(errors.New("add aborted"))
		d.err = <-d.done
	})
	return d.err
}

// addCA adds content from src; see AddCA.
func (b *Batch) addCA(ctx context.Context, name string, method nixhash.Method, algo nixhash.Algorithm,
	refs []storepath.StorePath, src source) (*store.PathInfo, error) {
	p, err := b.s.prepareCA(0, name, method, algo, refs, src)
	if err != nil {
		return nil, err
	}
	return b.pushCA(ctx, p)
}

// preparedCA is content unpacked into a slot and hashed, with its path: what
// pushCA queues in the batch.
type preparedCA struct {
	name      string
	t         *slot
	info      *store.PathInfo
	stats     restoreStats
	canonical bool
}

// prepareCA unpacks and hashes src into a new slot, ready for a batch's
// pushCA. Several may run at once (AddPaths).
func (s *Store) prepareCA(lane int, name string, method nixhash.Method, algo nixhash.Algorithm,
	refs []storepath.StorePath, src source) (*preparedCA, error) {
	fail := func(err error) (*preparedCA, error) {
		return nil, fmt.Errorf("add %s to the store: %w", name, err)
	}
	if err := storepath.ValidateName(name); err != nil {
		return fail(err)
	}
	if method == nixhash.Text {
		if algo != nixhash.SHA256 {
			return fail(fmt.Errorf("%w: text must be hashed with sha256", store.ErrInvalid))
		}
	} else if len(refs) > 0 && !(method == nixhash.Recursive && algo == nixhash.SHA256) {
		return fail(fmt.Errorf("%w: only text and NAR-hashed sha256 paths may have references", store.ErrInvalid))
	}
	for _, ref := range refs {
		if ref.Dir() != s.dir {
			return fail(fmt.Errorf("%w: reference %s is not in %s", store.ErrInvalid, ref, s.dir))
		}
	}
	t, err := s.newSlot(lane)
	if err != nil {
		return fail(err)
	}
	info := &store.PathInfo{References: slices.Clone(refs)}
	var caHash nixhash.Hash
	// A file writeFile made is canonical and one entry.
	canonical := true
	stats := restoreStats{entries: 1}
	switch method {
	case nixhash.Recursive:
		if src.file {
			caHash, info.NarHash, info.NarSize, err = writeFile(t, src, algo, true)
			if err != nil {
				t.remove()
				return fail(err)
			}
			stats.bytes = int64(info.NarSize) // the contents and their framing
			break
		}
		var res narResult
		if src.dump != nil {
			// Hashed by the goroutine that writes the NAR.
			res.stats, res.canonical, err = restoreSlot(t, src.r)
			if derr := src.dump.wait(); err == nil {
				err = derr
			}
			if err == nil {
				res2 := src.dump.h.result()
				res2.stats, res2.canonical = res.stats, res.canonical
				res = res2
			}
		} else {
			// Read and hashed on other goroutines while this one unpacks.
			h := newNarHashers(algo)
			ra := newReadAhead(src.r, h)
			res.stats, res.canonical, err = restoreSlot(t, ra)
			ra.finish()
			if err == nil {
				res2 := h.result()
				res2.stats, res2.canonical = res.stats, res.canonical
				res = res2
			}
		}
		if err != nil {
			t.remove()
			return fail(err)
		}
		info.NarHash, info.NarSize, caHash = res.narHash, res.narSize, res.extra
		stats, canonical = res.stats, res.canonical
	case nixhash.Flat, nixhash.Text:
		if method == nixhash.Text {
			src.r = &limitedReader{r: src.r, left: MaxTextSize}
		}
		caHash, info.NarHash, info.NarSize, err = writeFile(t, src, algo, false)
		if err != nil {
			t.remove()
			return fail(err)
		}
		stats.bytes = int64(info.NarSize)
	default:
		t.remove()
		return fail(fmt.Errorf("%w: unknown ingestion method %v", store.ErrInvalid, method))
	}
	info.CA = nixhash.ContentAddress{Method: method, Hash: caHash}
	if info.Path, err = s.dir.MakeFixedOutputPath(name, info.CA, refs, false); err != nil {
		t.remove()
		return fail(err)
	}
	return &preparedCA{name: name, t: t, info: info, stats: stats, canonical: canonical}, nil
}

// pushCA queues a prepared path in the batch, unless the batch has it already
// or (without lateValid) it is valid already; it returns the path's info.
func (b *Batch) pushCA(ctx context.Context, p *preparedCA) (*store.PathInfo, error) {
	s, t, info := b.s, p.t, p.info
	fail := func(err error) (*store.PathInfo, error) {
		return nil, fmt.Errorf("add %s to the store: %w", p.name, err)
	}
	if it, dup := b.byPath[info.Path]; dup {
		t.remove()
		return it.info.Clone(), nil
	}
	if !b.lateValid {
		// A point lookup first: most added paths are new.
		if valid, err := s.IsValidPath(ctx, info.Path); err != nil {
			t.remove()
			return fail(err)
		} else if valid {
			if existing, err := s.QueryPathInfo(ctx, info.Path); err == nil {
				t.remove()
				return existing, nil
			} else if !errors.Is(err, store.ErrNotFound) {
				t.remove()
				return fail(err)
			}
		}
	}
	it, err := b.finish(t, info, p.stats, p.canonical)
	if err != nil {
		t.remove()
		return fail(err)
	}
	b.push(it)
	return info.Clone(), nil
}

// limitedReader fails once more than left bytes are read.
type limitedReader struct {
	r    io.Reader
	left int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	l.left -= int64(n)
	if l.left < 0 {
		return n, fmt.Errorf("%w: text is longer than %d bytes", store.ErrInvalid, MaxTextSize)
	}
	return n, err
}

// writeFile writes the bytes of src to the slot as a regular file (executable
// or not), and returns the content address hash (with algo, of the bytes, or of
// their NAR form when overNar) and the sha256 and size of their NAR form. With a
// known size it is one pass; otherwise the file is read back for the NAR hash.
// The file is left canonical (mode, time, no extended attributes), all through
// its descriptor.
func writeFile(t *slot, src source, algo nixhash.Algorithm, overNar bool) (ca, narHash nixhash.Hash, narSize uint64, err error) {
	mode := uint32(modeFile)
	if src.exec {
		mode = modeExec
	}
	// A file created read-only is still writable through this descriptor.
	fd, unnamed, err := t.create(mode)
	if err != nil {
		return ca, narHash, 0, err
	}
	f := io.ReadWriter(fdFile{fd: fd})
	if t.t.s.writesBehind() {
		f = &writeBehind{fdFile: fdFile{fd: fd}}
	}
	defer func() {
		if unnamed && err == nil {
			t.keep(fd)
			return
		}
		unix.Close(fd)
		if unnamed {
			t.t.s.tmpfiles.open.Add(-1)
		}
	}()
	sha := nixhash.NewHasher(nixhash.SHA256)
	cah := sha
	narOut := io.Writer(sha)
	if !overNar || algo != nixhash.SHA256 {
		cah = nixhash.NewHasher(algo)
		if overNar {
			narOut = io.MultiWriter(sha, cah)
		}
	}
	size := src.size
	r := src.r
	var bufp *[]byte
	buf := func() []byte {
		if bufp == nil {
			bufp = copyBuffers.Get().(*[]byte)
		}
		return *bufp
	}
	defer func() {
		if bufp != nil {
			copyBuffers.Put(bufp)
		}
	}()
	if size < 0 {
		// First pass: the file, and the content hash if it is of the bytes.
		w := io.Writer(f)
		if !overNar {
			w = io.MultiWriter(f, cah)
		}
		if size, err = io.CopyBuffer(w, r, buf()); err != nil {
			return ca, narHash, 0, err
		}
		if _, err := unix.Seek(fd, 0, io.SeekStart); err != nil {
			return ca, narHash, 0, err
		}
		r = f
	}
	var frame [narFileHeaderMax]byte
	if _, err := narOut.Write(narFileHeader(frame[:0], size, src.exec)); err != nil {
		return ca, narHash, 0, err
	}
	w := narOut
	if src.size >= 0 {
		w = io.MultiWriter(f, narOut)
		if !overNar {
			w = io.MultiWriter(f, cah, narOut)
		}
	}
	var n int64
	if size <= smallFile {
		// Small files: one read, no pooled buffer.
		var small [smallFile]byte
		var m int
		m, err = io.ReadFull(r, small[:size])
		n = int64(m)
		if err == nil {
			_, err = w.Write(small[:m])
		}
	} else {
		n, err = io.CopyBuffer(w, io.LimitReader(r, size), buf())
	}
	if err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			err = fmt.Errorf("%s: file changed size while reading", t.contentPath())
		}
		return ca, narHash, 0, err
	}
	if n != size {
		return ca, narHash, 0, fmt.Errorf("%s: file changed size while reading", t.contentPath())
	}
	if _, err := narOut.Write(narFileTrailer(frame[:0], size)); err != nil {
		return ca, narHash, 0, err
	}
	if err := canonicaliseFD(fd, mode, t.contentPath(), t.t.inherits, t.t.s.umask&0o555 != 0); err != nil {
		return ca, narHash, 0, err
	}
	return cah.Sum(), sha.Sum(), uint64(sha.Size()), nil
}

// writeBehindChunk is how much a big file being written may have dirty before
// its write-out is started.
const writeBehindChunk = 16 << 20

// writeBehind starts the write-out of each writeBehindChunk of a file as soon
// as it is written (sync_file_range, which does not wait), so that Commit's
// sync finds little left to write: the disk works while the rest is read and
// hashed, instead of all at the end.
type writeBehind struct {
	fdFile
	written, started int64
}

func (w *writeBehind) Write(p []byte) (int, error) {
	n, err := w.fdFile.Write(p)
	w.written += int64(n)
	if w.written-w.started >= writeBehindChunk {
		// An error here only means the sync at commit does all the work.
		unix.SyncFileRange(w.fd, w.started, w.written-w.started, unix.SYNC_FILE_RANGE_WRITE)
		w.started = w.written
	}
	return n, err
}

// writesBehind says whether big files start their write-out as they are
// written (writeBehind): not without syncing, nor when the store's last
// sync runs behind the command (Options.SyncBehind), which then need not
// wait for the disk at all.
func (s *Store) writesBehind() bool {
	return !s.opts.NoFsync && s.opts.SyncBehind == nil
}

// smallFile is the largest file writeFile reads in one go into a stack buffer.
const smallFile = 4 << 10

// fdFile reads and writes a raw descriptor: no os.File, whose creation costs
// a few fcntl calls and a poller registration attempt per file.
type fdFile struct{ fd int }

func (f fdFile) Read(p []byte) (int, error) {
	for {
		n, err := unix.Read(f.fd, p)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 && len(p) > 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}

func (f fdFile) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		n, err := unix.Write(f.fd, p[done:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

// NAR framing of a single regular file (package nar's grammar):
// "nix-archive-1" "(" "type" "regular" ["executable" ""] "contents" size … ")".
var (
	narFilePrefix = narStrings("nix-archive-1", "(", "type", "regular")
	narExecutable = narStrings("executable", "")
	narContents   = narStrings("contents")
	narClose      = narStrings(")")
)

// narFileHeaderMax bounds the framing narFileHeader writes.
const narFileHeaderMax = 160

func narStrings(ss ...string) []byte {
	var b []byte
	for _, s := range ss {
		b = binary.LittleEndian.AppendUint64(b, uint64(len(s)))
		b = append(b, s...)
		b = append(b, make([]byte, -len(s)&7)...)
	}
	return b
}

// narFileHeader appends the NAR framing before the contents of a file.
func narFileHeader(b []byte, size int64, exec bool) []byte {
	b = append(b, narFilePrefix...)
	if exec {
		b = append(b, narExecutable...)
	}
	b = append(b, narContents...)
	return binary.LittleEndian.AppendUint64(b, uint64(size))
}

// narFileTrailer appends the padding after size bytes of contents and the close.
func narFileTrailer(b []byte, size int64) []byte {
	var zero [8]byte
	b = append(b, zero[:-size&7]...)
	return append(b, narClose...)
}

// copyBuffers recycles file copy buffers across the paths of a batch.
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, copyBufferSize); return &b }}

// AddPath adds the file or tree at src as name filepath.Base(src), the way
// `nix-store --add` (method Recursive, sha256) and `nix-store --add-fixed`
// (Flat or Recursive, any algorithm) do. No symlink is followed, src included;
// Flat needs a regular file, and keeps its execute bit as Nix does.
func (b *Batch) AddPath(ctx context.Context, src string, method nixhash.Method, algo nixhash.Algorithm) (*store.PathInfo, error) {
	p, err := b.s.preparePath(ctx, 0, src, -1, nil, method, algo)
	if err != nil {
		return nil, err
	}
	return b.pushCA(ctx, p)
}

// preparePath is AddPath up to the batch: it may run alongside others.
func (s *Store) preparePath(ctx context.Context, lane int, src string, fd int, opener *sourceOpener, method nixhash.Method, algo nixhash.Algorithm) (*preparedCA, error) {
	name := filepath.Base(filepath.Clean(src))
	switch method {
	case nixhash.Flat, nixhash.Recursive:
	default:
		if fd >= 0 {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("add %s: %w: method %v", src, store.ErrInvalid, method)
	}
	// A regular file is read directly: one pass, no NAR parsing. Flat (as
	// nix-store --add-fixed) needs one, and keeps its execute bit. fd, when
	// not -1, is src opened already (by opener).
	var err error
	opened := fd >= 0
	if !opened {
		fd, err = openat(unix.AT_FDCWD, src, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY)
	}
	if err == nil {
		defer unix.Close(fd)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return nil, &os.PathError{Op: "add", Path: src, Err: err}
		}
		if st.Mode&unix.S_IFMT == unix.S_IFREG {
			if !opened {
				opener.probe(fd, st.Size)
			}
			// O_NONBLOCK (so that a FIFO could not hang the open) means
			// nothing for a regular file.
			return s.prepareCA(lane, name, method, algo, nil, source{r: fdFile{fd: fd}, size: st.Size, exec: st.Mode&0o100 != 0, file: true})
		}
	} else if !errors.Is(err, unix.ELOOP) {
		return nil, &os.PathError{Op: "add", Path: src, Err: err}
	}
	if method == nixhash.Flat {
		return nil, fmt.Errorf("add %s: %w: regular file expected", src, store.ErrInvalid)
	}
	// A directory or symlink: dump it into a pipe that the restorer reads.
	d := startTreeDump(ctx, src, algo)
	p, err := s.prepareCA(lane, name, method, algo, nil, source{r: bufio.NewReaderSize(d.pr, copyBufferSize), size: -1, dump: d})
	d.wait()
	return p, err
}

// Commit registers every path of the batch: the files made durable, the paths
// locked (Nix's lock files), moved into the store dir, and registered in one
// SQLite transaction (durable.go says in which order). Paths that became
// valid meanwhile (another writer) are dropped, not replaced. References must
// be valid or in the batch. On error nothing is registered and the batch is
// discarded.
func (b *Batch) Commit(ctx context.Context) error {
	defer b.Discard()
	if len(b.items) == 0 {
		return nil
	}
	s := b.s
	// Record what is about to be moved into place (intent.go), durable with the data.
	intent, err := b.writeIntent()
	if err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	defer s.releaseIntent(intent)
	// Sync now, or leave it to the syncer (durable.go): only a repair, whose
	// path may keep its old row and id, must be on disk before it registers.
	syncFirst := !s.opts.NoFsync && (!s.deferred.Load() || b.repairs())
	if syncFirst {
		if err := b.syncSlots(intent); err != nil {
			return fmt.Errorf("commit: %w", err)
		}
	}
	bases := make([]string, len(b.items))
	paths := make([]storepath.StorePath, len(b.items))
	for i, it := range b.items {
		bases[i] = it.info.Path.Base()
		paths[i] = it.info.Path
	}
	// Keep a collector from taking the paths for garbage (gc.go).
	release, err := s.protectAdd(ctx, paths)
	if err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	defer release()
	toLock := bases
	if len(b.held) > 0 {
		toLock = slices.DeleteFunc(slices.Clone(bases), func(base string) bool { return b.held[base] })
	}
	var locks *PathLocks
	if !b.sole {
		if locks, err = s.lockStorePaths(ctx, toLock); err != nil {
			return fmt.Errorf("commit: %w", err)
		}
	}
	ok := false
	defer func() { locks.Unlock(ok) }()

	err = s.commitLocked(ctx, b, syncFirst)
	if err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	ok = true
	// Still under the paths' locks and temporary roots, but no longer
	// holding up this process's other writers.
	if s.opts.AutoOptimise {
		var added []storepath.StorePath
		for _, it := range b.items {
			if !it.skip {
				added = append(added, it.info.Path)
			}
		}
		s.AutoOptimise(ctx, added)
	}
	if !syncFirst && s.syncer != nil {
		items := make([]syncItem, 0, len(b.items))
		for _, it := range b.items {
			if !it.skip {
				items = append(items, syncItem{base: it.info.Path.Base(), stats: it.stats})
			}
		}
		if len(items) > 0 {
			s.syncer.notify(items...)
		}
	}
	b.skipped = b.skipped[:0]
	for _, it := range b.items {
		if it.skip {
			b.skipped = append(b.skipped, it.info.Path)
		}
	}
	return nil
}

// commitLocked registers the batch and moves it into place in one write
// transaction, under this process's write lock (the paths locked already).
func (s *Store) commitLocked(ctx context.Context, b *Batch, syncFirst bool) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.wstmts.prepare(ctx)
	err := retryBusy(ctx, func() error {
		tx, err := s.wdb.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		// The renames run beside the inserts: the store dir's work and
		// SQLite's need nothing from each other once the batch's valid
		// paths are known.
		var moved []*pending
		var moveErr error
		err = b.register(ctx, tx, func() { moved, moveErr = b.moveIntoPlace() })
		if err == nil {
			err = moveErr
		}
		if err != nil {
			b.undo(moved)
			tx.Rollback()
			return err
		}
		if syncFirst {
			if err := b.syncPlaced(moved); err != nil {
				b.undo(moved)
				tx.Rollback()
				return err
			}
		}
		if err := tx.Commit(); err != nil {
			b.undo(moved)
			return err
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.infos.registered(b.cacheStamp, b.items)
	return nil
}

// commitSole is Commit with the store to itself (Store.trySole), without
// path locks, when it can have it without waiting; else Commit.
func (b *Batch) commitSole(ctx context.Context) error {
	b.sole = b.s.trySole()
	err := b.Commit(ctx)
	if b.sole {
		b.sole = false
		b.s.endSole()
	}
	return err
}

// repairs reports whether the batch replaces the files of some path.
func (b *Batch) repairs() bool {
	for _, it := range b.items {
		if it.repair {
			return true
		}
	}
	return false
}

// register writes the batch's rows inside tx: paths first, then references
// (which may point into the batch) and derivation outputs. It takes a handful
// of statements whatever the batch's size: new paths one statement per
// registerRows (a VALUES list), references and outputs one statement over a
// JSON array (json_each), since SQLite parses a statement in about as long as
// it takes to run a point lookup.
//
// alongside, when not nil, runs on another goroutine once it is known which
// paths are valid already (pending.skip), and has returned when register
// does.
func (b *Batch) register(ctx context.Context, sqltx *sql.Tx, alongside func()) error {
	tx := newWriteCache(sqltx, b.s.wstmts)
	defer tx.Close()
	b.cacheStamp = b.s.infos.writeStamp()
	// Which of the batch's paths are valid already.
	batchPaths := make([]string, len(b.items))
	for i, it := range b.items {
		it.skip, it.id = false, 0
		batchPaths[i] = it.info.Path.String()
	}
	ids, err := queryIDs(ctx, tx, batchPaths)
	if err != nil {
		return err
	}
	for _, it := range b.items {
		_, valid := ids[it.info.Path.String()]
		it.skip = valid && !it.repair
	}
	if alongside != nil {
		done := make(chan struct{})
		go func() {
			defer close(done)
			alongside()
		}()
		defer func() { <-done }()
	}
	var fresh []any
	for _, it := range b.items {
		id, valid := ids[it.info.Path.String()]
		switch {
		case it.skip:
		case valid:
			it.id = id
			if _, err := tx.ExecContext(ctx, sqlUpdatePathInfo, updateArgs(it.info)...); err != nil {
				return fmt.Errorf("update %s: %w", it.info.Path, err)
			}
		default:
			args := registerArgs(it.info)
			if len(b.items) > pointMax {
				fresh = append(fresh, args...)
				continue
			}
			// A small batch: a statement of its own.
			res, err := tx.ExecContext(ctx, sqlRegisterPath, args...)
			if err != nil {
				return fmt.Errorf("register %s: %w", it.info.Path, err)
			}
			if it.id, err = res.LastInsertId(); err != nil {
				return err
			}
		}
	}
	for len(fresh) > 0 {
		n := min(len(fresh)/registerColumns, registerRows)
		if err := insertPaths(ctx, tx, fresh[:n*registerColumns], ids); err != nil {
			return err
		}
		fresh = fresh[n*registerColumns:]
	}
	for _, it := range b.items {
		if !it.skip && it.id == 0 {
			if it.id = ids[it.info.Path.String()]; it.id == 0 {
				return fmt.Errorf("register %s: no row id", it.info.Path)
			}
		}
	}
	// References outside the batch (or to batch paths that were valid).
	var outside []string
	for _, it := range b.items {
		if it.skip {
			continue
		}
		for _, ref := range it.info.References {
			if other, ok := b.byPath[ref]; ok && !other.skip {
				continue
			}
			if _, known := ids[ref.String()]; !known {
				outside = append(outside, ref.String())
			}
		}
	}
	if len(outside) > 0 {
		slices.Sort(outside)
		outside = slices.Compact(outside)
		more, err := queryIDs(ctx, tx, outside)
		if err != nil {
			return err
		}
		for p, id := range more {
			ids[p] = id
		}
	}
	var refs, outs []any
	for _, it := range b.items {
		if it.skip {
			continue
		}
		for _, ref := range it.info.References {
			var refID int64
			if other, ok := b.byPath[ref]; ok && !other.skip {
				refID = other.id
			} else if id, ok := ids[ref.String()]; ok {
				refID = id
			} else {
				return fmt.Errorf("register %s: reference %w", it.info.Path, store.NotValid(ref))
			}
			refs = append(refs, []int64{it.id, refID})
		}
		for name, out := range it.drvOutputs {
			outs = append(outs, []any{it.id, name, out.String()})
		}
	}
	if len(refs) > pointMax {
		if _, err := tx.ExecContext(ctx, sqlAddReferences, jsonArg(refs)); err != nil {
			return fmt.Errorf("register references: %w", err)
		}
	} else {
		for _, r := range refs {
			r := r.([]int64)
			if _, err := tx.ExecContext(ctx, sqlAddReference, r[0], r[1]); err != nil {
				return fmt.Errorf("register references: %w", err)
			}
		}
	}
	if len(outs) > pointMax {
		if _, err := tx.ExecContext(ctx, sqlAddDrvOutputs, jsonArg(outs)); err != nil {
			return fmt.Errorf("register derivation outputs: %w", err)
		}
	} else {
		for _, o := range outs {
			if _, err := tx.ExecContext(ctx, sqlAddDrvOutput, o.([]any)...); err != nil {
				return fmt.Errorf("register derivation outputs: %w", err)
			}
		}
	}
	return nil
}

// insertPaths inserts the ValidPaths rows whose registerArgs are args, one
// after another, in one statement, and records their ids.
func insertPaths(ctx context.Context, tx queryer, args []any, ids map[string]int64) error {
	rows, err := tx.QueryContext(ctx, sqlRegisterValues(len(args)/registerColumns), args...)
	if err != nil {
		return fmt.Errorf("register paths: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var path string
		if err := rows.Scan(&id, &path); err != nil {
			return fmt.Errorf("register paths: %w", err)
		}
		ids[path] = id
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("register paths: %w", err)
	}
	return nil
}

// pointMax is the most rows register handles with one prepared point
// statement each rather than one statement over a JSON array: for a few rows
// the JSON costs more than it saves.
const pointMax = 4

// queryIDs returns the ValidPaths ids of the valid paths among paths.
func queryIDs(ctx context.Context, q queryer, paths []string) (map[string]int64, error) {
	ids := make(map[string]int64, len(paths))
	if len(paths) <= pointMax {
		for _, p := range paths {
			var id int64
			err := q.QueryRowContext(ctx, sqlQueryPathID, p).Scan(&id)
			if errors.Is(err, sql.ErrNoRows) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("query path ids: %w", err)
			}
			ids[p] = id
		}
		return ids, nil
	}
	rows, err := q.QueryContext(ctx, sqlQueryPathIDs, jsonArg(paths))
	if err != nil {
		return nil, fmt.Errorf("query path ids: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var path string
		if err := rows.Scan(&id, &path); err != nil {
			return nil, fmt.Errorf("query path ids: %w", err)
		}
		ids[path] = id
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query path ids: %w", err)
	}
	return ids, nil
}

// jsonArg encodes v, made of store paths, output names, integers, nil and
// slices of these (all of which JSON and SQLite's ->> pass unchanged), as
// JSON for json_each. Nothing else goes in, so encoding cannot fail.
func jsonArg(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func registerArgs(info *store.PathInfo) []any {
	return []any{
		info.Path.String(),
		info.NarHash.Format(nixhash.Base16, true),
		info.RegistrationTime.Unix(),
		nullString(info.Deriver.String()),
		nullSize(info.NarSize),
		nullUltimate(info.Ultimate),
		nullString(strings.Join(info.Signatures, " ")),
		nullString(info.CA.String()),
	}
}

func updateArgs(info *store.PathInfo) []any {
	return []any{
		nullSize(info.NarSize),
		info.NarHash.Format(nixhash.Base16, true),
		nullUltimate(info.Ultimate),
		nullString(strings.Join(info.Signatures, " ")),
		nullString(info.CA.String()),
		info.Path.String(),
	}
}

func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func nullSize(n uint64) any {
	if n == 0 {
		return nil
	}
	return int64(n)
}

func nullUltimate(u bool) any {
	if !u {
		return nil
	}
	return 1
}

// moveIntoPlace renames each registered item's temporary over its store path.
// Whatever is already there (an invalid leftover, or the old files of a repair)
// is swapped into the temporary and goes away with it. It returns the items
// moved so far, also on error.
func (b *Batch) moveIntoPlace() ([]*pending, error) {
	s := b.s
	var moved []*pending
	for _, it := range b.items {
		if it.skip {
			continue
		}
		base := it.info.Path.Base()
		if it.temp.placeFD(s.realFD, base) {
			it.emptied = true
			moved = append(moved, it)
			continue
		}
		// Named, or its name taken (an invalid leftover).
		if err := it.temp.link(); err != nil {
			return moved, err
		}
		err := unix.Renameat2(it.temp.dirfd, it.temp.name, s.realFD, base, unix.RENAME_NOREPLACE)
		it.emptied = err == nil
		if errors.Is(err, unix.EEXIST) {
			// A directory being moved to another parent must be writable.
			unix.Fchmodat(s.realFD, base, 0o755, 0)
			err = unix.Renameat2(it.temp.dirfd, it.temp.name, s.realFD, base, unix.RENAME_EXCHANGE)
			if errors.Is(err, unix.EINVAL) {
				if err = removeTree(s.realFD, base); err == nil {
					err = unix.Renameat(it.temp.dirfd, it.temp.name, s.realFD, base)
				}
			}
		} else if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
			// No renameat2 on this file system: Nix's way, delete then rename.
			if err = removeTree(s.realFD, base); err == nil {
				err = unix.Renameat(it.temp.dirfd, it.temp.name, s.realFD, base)
			}
		}
		if err != nil {
			return moved, &os.PathError{Op: "move into place", Path: s.RealPath(it.info.Path), Err: err}
		}
		moved = append(moved, it)
	}
	for _, it := range moved {
		if !it.stats.rootDir {
			continue
		}
		if err := CanonicaliseRoot(s.realFD, it.info.Path.Base()); err != nil {
			return moved, err
		}
	}
	return moved, nil
}

// undo moves the items back into their temporaries, as far as it can; whatever
// stays behind is an invalid path, which the next add of it replaces.
func (b *Batch) undo(moved []*pending) {
	s := b.s
	for _, it := range moved {
		it.emptied = false
		base := it.info.Path.Base()
		unix.Fchmodat(s.realFD, base, 0o755, 0)
		removeTree(it.temp.dirfd, it.temp.name)
		if unix.Renameat(s.realFD, base, it.temp.dirfd, it.temp.name) != nil {
			removeTree(s.realFD, base)
		}
	}
}

// AddNar adds one path from its NAR (store.NarAdder).
func (s *Store) AddNar(ctx context.Context, info *store.PathInfo, r io.Reader, opts store.AddNarOptions) error {
	b := s.NewBatch()
	defer b.Discard()
	if err := b.AddNar(ctx, info, r, opts); err != nil {
		return err
	}
	return b.Commit(ctx)
}

// AddCA adds content under its content-addressed path (store.CAAdder).
func (s *Store) AddCA(ctx context.Context, name string, method nixhash.Method, algo nixhash.Algorithm,
	refs []storepath.StorePath, r io.Reader) (*store.PathInfo, error) {
	b := s.NewBatch()
	defer b.Discard()
	// Commit finds out whether the path is valid already, inside its
	// transaction: a lookup before it would go through the read connection,
	// which rereads what the last commit changed (a tenth of the daemon's
	// CPU time for an add of a small file).
	b.lateValid = true
	info, err := b.AddCA(ctx, name, method, algo, refs, r)
	if err != nil {
		return nil, err
	}
	if err := b.Commit(ctx); err != nil {
		return nil, err
	}
	if len(b.skipped) > 0 {
		return s.QueryPathInfo(ctx, info.Path)
	}
	return info, nil
}

// AddText adds a text file with references, as builtins.toFile and .drv files are.
func (s *Store) AddText(ctx context.Context, name, text string, refs []storepath.StorePath) (*store.PathInfo, error) {
	return s.AddCA(ctx, name, nixhash.Text, nixhash.SHA256, refs, strings.NewReader(text))
}

// preparedResult is one source's preparePath.
type preparedResult struct {
	p   *preparedCA
	err error
}

// Sources of AddPaths are prepared on addPathWorkers goroutines, at most
// addPathAhead past the last one the caller took: each is mostly system
// calls on its own file (read, create, write, set the time), which one
// goroutine left a core idle for, and the next chunk is prepared while the
// last one commits.
const (
	addPathWorkers = 2
	addPathAhead   = 2 * maxSpareLocks
)

// pathPreparer prepares sources in the background; take returns them in
// order.
type pathPreparer struct {
	out    []chan preparedResult
	tokens chan struct{}
	stopAt atomic.Int64 // sources from here on are not prepared
	next   int          // the next one take returns
}

func (s *Store) preparePaths(ctx context.Context, srcs []string, method nixhash.Method, algo nixhash.Algorithm) *pathPreparer {
	pp := &pathPreparer{out: make([]chan preparedResult, len(srcs)), tokens: make(chan struct{}, addPathAhead)}
	for i := range pp.out {
		pp.out[i] = make(chan preparedResult, 1)
	}
	for range min(addPathAhead, len(srcs)) {
		pp.tokens <- struct{}{}
	}
	pp.stopAt.Store(int64(len(srcs)))
	var next atomic.Int64
	workers := min(addPathWorkers, len(srcs))
	var running atomic.Int32
	running.Store(int32(workers))
	opener := startOpeners(srcs)
	for lane := range workers {
		go func() {
			defer func() {
				if running.Add(-1) == 0 {
					opener.finish()
				}
			}()
			for {
				<-pp.tokens
				i := int(next.Add(1) - 1)
				if i >= len(srcs) {
					return
				}
				fd := opener.claim(i)
				if int64(i) >= pp.stopAt.Load() {
					if fd >= 0 {
						unix.Close(fd)
					}
					pp.out[i] <- preparedResult{err: errors.New("not prepared: an earlier source failed")}
					continue
				}
				p, err := s.preparePath(ctx, lane, srcs[i], fd, opener, method, algo)
				if err != nil {
					pp.stop(i + 1)
				}
				pp.out[i] <- preparedResult{p: p, err: err}
			}
		}()
	}
	return pp
}

// take returns the next source's preparation.
func (pp *pathPreparer) take() preparedResult {
	r := <-pp.out[pp.next]
	pp.next++
	pp.tokens <- struct{}{}
	return r
}

// stop prepares no source from index i on.
func (pp *pathPreparer) stop(i int) {
	for f := pp.stopAt.Load(); int64(i) < f && !pp.stopAt.CompareAndSwap(f, int64(i)); f = pp.stopAt.Load() {
	}
}

// discard stops the preparation and removes what was prepared and not taken.
func (pp *pathPreparer) discard() {
	pp.stop(pp.next)
	for pp.next < len(pp.out) {
		if r := pp.take(); r.p != nil {
			r.p.t.remove()
		}
	}
}

// AddPaths adds the files or trees at srcs (see Batch.AddPath), returning
// their infos in order. They are registered maxSpareLocks at a time, one
// transaction each, so that every path lock is a spare lock file of the pool
// (lock.go): a batch locking more paths at once makes and deletes a lock
// file for each extra one, which cost a quarter of an add of 2000 small
// files. As with nix-store --add, which adds one at a time, a source that
// cannot be added ends the call with the ones before it added: the infos
// returned with the error are theirs.
func (s *Store) AddPaths(ctx context.Context, srcs []string, method nixhash.Method, algo nixhash.Algorithm) ([]*store.PathInfo, error) {
	out := make([]*store.PathInfo, 0, len(srcs))
	var skipped []storepath.StorePath
	var srcErr error
	pp := s.preparePaths(ctx, srcs, method, algo)
	defer pp.discard()
	for start := 0; start < len(srcs) && srcErr == nil; start += maxSpareLocks {
		end := min(start+maxSpareLocks, len(srcs))
		b := s.NewBatch()
		b.lateValid = true
		n := len(out)
		for range srcs[start:end] {
			r := pp.take()
			err := r.err
			var info *store.PathInfo
			if err == nil {
				info, err = b.pushCA(ctx, r.p)
			}
			if err != nil {
				srcErr = err
				break
			}
			out = append(out, info)
		}
		if err := b.commitSole(ctx); err != nil {
			return out[:n], err
		}
		skipped = append(skipped, b.skipped...)
	}
	if len(skipped) > 0 {
		// Paths that were valid already: return their infos as registered.
		valid, err := s.QueryPathInfos(ctx, skipped)
		if err != nil {
			return nil, err
		}
		byPath := make(map[storepath.StorePath]*store.PathInfo, len(valid))
		for _, info := range valid {
			byPath[info.Path] = info
		}
		for i, info := range out {
			if v, ok := byPath[info.Path]; ok {
				out[i] = v.Clone()
			}
		}
	}
	return out, srcErr
}

// RegisterValidPaths records infos in the database in one transaction, for paths
// whose files are already in place and canonical (a loaded database dump, a
// build's outputs): new paths are added and valid ones updated (hash, size,
// ultimate, signatures, ca; Nix keeps registration time and deriver). References
// must be valid or among infos. A derivation's outputs are read from its file.
// The caller holds whatever path locks it needs.
func (s *Store) RegisterValidPaths(ctx context.Context, infos []*store.PathInfo) error {
	b := s.NewBatch()
	for _, info := range infos {
		if err := s.checkInfo(info, false); err != nil {
			return err
		}
		info = info.Clone()
		storepath.SortPaths(info.References)
		info.References = slices.Compact(info.References)
		if info.RegistrationTime.IsZero() {
			info.RegistrationTime = time.Now()
		}
		it := &pending{info: info, repair: true}
		if info.Path.IsDerivation() {
			outs, err := s.readDrvFile(s.RealPath(info.Path), info.Path)
			if err != nil {
				return err
			}
			it.drvOutputs = outs
		}
		b.push(it)
	}
	if err := s.syncBeforeRegister(ctx, infos); err != nil {
		return fmt.Errorf("register valid paths: %w", err)
	}
	err := s.writeTx(ctx, func(tx *sql.Tx) error { return b.register(ctx, tx, nil) })
	if err != nil {
		return fmt.Errorf("register valid paths: %w", err)
	}
	if s.deferred.Load() {
		s.syncer.notify()
	}
	return nil
}

// syncBeforeRegister makes the files of infos durable before
// RegisterValidPaths registers them, when the syncer cannot do it afterwards:
// a path that is valid already keeps its row and id (its files may have been
// replaced: a repair), and without the syncer nothing would.
func (s *Store) syncBeforeRegister(ctx context.Context, infos []*store.PathInfo) error {
	if s.opts.NoFsync {
		return nil
	}
	if s.deferred.Load() {
		paths := make([]string, len(infos))
		for i, info := range infos {
			paths[i] = info.Path.String()
		}
		valid, err := queryIDs(ctx, s.rdb, paths)
		if err != nil {
			return err
		}
		if len(valid) == 0 {
			return nil
		}
	}
	return s.syncNow()
}
