package local

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"cairn/internal/storepath"
)

// Optimising deduplicates identical files by hard links, as Nix 2.8's
// `nix-store --optimise` and auto-optimise-store do:
//
//	<real store dir>/.links/<nix32 of the sha256 of the file's NAR>
//
// is one link of every regular file (and symlink) with that NAR, so files with
// the same contents and execute bit share one inode. For each file of a valid
// path: skip it if its inode is already one of .links (found by listing
// .links once); hash it; if no link of that name exists, hard-link the file
// there and go on; otherwise hard-link the .links entry to a temporary name and
// rename that over the file, which atomically swaps the file for an identical
// one. The file's directory is made writable for the rename and then gets its
// canonical mode and time back.
//
// Nix's exceptions hold: a writable regular file is suspicious and skipped, a
// .links entry whose size differs from the file is corrupt and replaced, and
// running out of links (EMLINK) or directory space (ENOSPC on .links) just
// leaves the file unshared. A link whose count drops to 1 is no longer used;
// Delete removes such links.
//
// Deleting either copy later is safe: the other name keeps the inode (and
// .links keeps one more).

// linksDirName is the hard-link pool inside the real store dir.
const linksDirName = ".links"

// tempLink is the name, inside a temporary, of a link about to replace a file.
const tempLink = "l"

func (s *Store) linksPath(name string) string {
	if name == "" {
		return s.cfg.RealStoreDir + "/" + linksDirName
	}
	return s.cfg.RealStoreDir + "/" + linksDirName + "/" + name
}

// OptimiseOptions adjusts Optimise.
type OptimiseOptions struct {
	// Log receives Nix's warnings; nil discards them.
	Log io.Writer
}

// OptimiseStats counts what optimising did.
type OptimiseStats struct {
	FilesLinked uint64
	BytesFreed  uint64 // the sizes of the files replaced by links
	BlocksFreed uint64 // their 512-byte blocks
}

// String is Nix's summary: "0.01 MiB freed by hard-linking 3 files".
func (st *OptimiseStats) String() string {
	return fmt.Sprintf("%.2f MiB freed by hard-linking %d files", float64(st.BytesFreed)/(1024*1024), st.FilesLinked)
}

// Optimise deduplicates every valid path (see the comment above). It holds the
// GC lock shared, so no collector deletes paths under it.
func (s *Store) Optimise(ctx context.Context, opts OptimiseOptions) (*OptimiseStats, error) {
	gc, err := s.lockGC(ctx, unix.LOCK_SH)
	if err != nil {
		return nil, fmt.Errorf("optimise: %w", err)
	}
	defer gc.Close()
	paths, err := s.QueryAllValidPaths(ctx)
	if err != nil {
		return nil, fmt.Errorf("optimise: %w", err)
	}
	return s.optimisePaths(ctx, paths, opts)
}

// OptimisePaths deduplicates the given paths only (auto-optimise-store after an
// add). The caller keeps the paths from being deleted meanwhile.
func (s *Store) OptimisePaths(ctx context.Context, paths []storepath.StorePath, opts OptimiseOptions) (*OptimiseStats, error) {
	return s.optimisePaths(ctx, paths, opts)
}

func (s *Store) optimisePaths(ctx context.Context, paths []storepath.StorePath, opts OptimiseOptions) (*OptimiseStats, error) {
	// Replacing a file of a valid path by a link to a .links entry changes
	// what an old row describes, which the syncer does not cover (a repair,
	// in durable.go's terms): every entry linked here must be on disk
	// first. The paths were valid, so their files were in place, before this
	// sync; .links entries are made from them.
	if s.deferred.Load() {
		if err := s.syncNow(); err != nil {
			return nil, fmt.Errorf("optimise: %w", err)
		}
	}
	o, err := s.newOptimiser(opts, true)
	if err != nil {
		return nil, fmt.Errorf("optimise: %w", err)
	}
	defer o.close()
	return o.paths(ctx, paths)
}

// AutoOptimise deduplicates paths this process has just registered, as Nix
// does for every path it adds or builds when auto-optimise-store is set
// (Options.AutoOptimise; otherwise it does nothing). A failure leaves files
// unshared and is a warning: the paths are valid and whole either way.
//
// Unlike Optimise it neither lists .links (a fresh file is never one of its
// entries) nor syncs first: the files it replaces belong to paths whose
// durability is still the syncer's to ensure, and it makes each of them
// durable by name, whichever inode the name now has (durable.go).
func (s *Store) AutoOptimise(ctx context.Context, paths []storepath.StorePath) {
	if !s.opts.AutoOptimise || len(paths) == 0 {
		return
	}
	o, err := s.newOptimiser(OptimiseOptions{Log: s.warnings()}, false)
	if err == nil {
		defer o.close()
		_, err = o.paths(ctx, paths)
	}
	if err != nil {
		s.warnf("warning: auto-optimise-store: %v", err)
	}
}

// newOptimiser opens .links (making it if need be) and a temporary; with
// listLinks it notes the inodes .links already holds, so that files linked
// before are not hashed again.
func (s *Store) newOptimiser(opts OptimiseOptions, listLinks bool) (*optimiser, error) {
	o := &optimiser{s: s, stats: &OptimiseStats{}, log: opts.Log, inodes: map[uint64]bool{}}
	if o.log == nil {
		o.log = io.Discard
	}
	if err := unix.Mkdirat(s.realFD, linksDirName, 0o777); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, &os.PathError{Op: "mkdir", Path: s.linksPath(""), Err: err}
	}
	var err error
	if o.linksFD, err = openat(s.realFD, linksDirName, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW); err != nil {
		return nil, &os.PathError{Op: "open", Path: s.linksPath(""), Err: err}
	}
	if listLinks {
		links, err := readDirEntries(o.linksFD, s.linksPath(""))
		if err != nil {
			unix.Close(o.linksFD)
			return nil, err
		}
		for _, e := range links {
			o.inodes[e.ino] = true
		}
	}
	if o.temp, err = s.newTemp(); err != nil {
		unix.Close(o.linksFD)
		return nil, err
	}
	return o, nil
}

func (o *optimiser) close() {
	o.temp.remove()
	unix.Close(o.linksFD)
}

// paths optimises each of paths that is still valid.
func (o *optimiser) paths(ctx context.Context, paths []storepath.StorePath) (*OptimiseStats, error) {
	s := o.s
	for _, p := range paths {
		if err := ctx.Err(); err != nil {
			return o.stats, err
		}
		if ok, err := s.IsValidPath(ctx, p); err != nil {
			return o.stats, fmt.Errorf("optimise: %w", err)
		} else if !ok {
			continue // deleted meanwhile
		}
		var st unix.Stat_t
		if err := fstatat(s.realFD, p.Base(), &st); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return o.stats, &os.PathError{Op: "optimise: stat", Path: s.RealPath(p), Err: err}
		}
		if err := o.walk(ctx, s.realFD, p.Base(), s.RealPath(p), &st, true); err != nil {
			return o.stats, fmt.Errorf("optimise %s: %w", p, err)
		}
	}
	return o.stats, nil
}

type optimiser struct {
	s       *Store
	stats   *OptimiseStats
	log     io.Writer
	linksFD int
	inodes  map[uint64]bool // inodes that are .links entries
	temp    *tempDir
}

// walk optimises the entry name of dirfd, whose lstat is st. atRoot says dirfd
// is the store dir itself, whose mode and time are left alone.
func (o *optimiser) walk(ctx context.Context, dirfd int, name, disk string, st *unix.Stat_t, atRoot bool) error {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		if err := ctx.Err(); err != nil {
			return err
		}
		fd, err := openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW)
		if err != nil {
			return &os.PathError{Op: "open", Path: disk, Err: err}
		}
		defer unix.Close(fd)
		ents, err := readDirEntries(fd, disk)
		if err != nil {
			return err
		}
		dir := &dirState{parent: dirfd, name: name, disk: disk, st: st}
		defer dir.restore()
		for _, e := range ents {
			if o.inodes[e.ino] {
				continue // already linked
			}
			var cst unix.Stat_t
			if err := fstatat(fd, e.name, &cst); err != nil {
				return &os.PathError{Op: "stat", Path: disk + "/" + e.name, Err: err}
			}
			if cst.Mode&unix.S_IFMT == unix.S_IFDIR {
				if err := o.walk(ctx, fd, e.name, disk+"/"+e.name, &cst, false); err != nil {
					return err
				}
				continue
			}
			if err := o.linkFile(fd, e.name, disk+"/"+e.name, &cst, dir); err != nil {
				return err
			}
		}
		return nil
	default:
		// A path that is a single file lives directly in the store dir.
		return o.linkFile(dirfd, name, disk, st, nil)
	}
}

// dirState remembers a directory made writable to replace an entry, so its
// canonical mode and time can be put back.
type dirState struct {
	parent   int
	name     string
	disk     string
	st       *unix.Stat_t
	writable bool
}

func (d *dirState) makeWritable(fd int) error {
	if d == nil || d.writable {
		return nil
	}
	if err := unix.Fchmod(fd, d.st.Mode&0o7777|unix.S_IWUSR); err != nil {
		return &os.PathError{Op: "changing writability of", Path: d.disk, Err: err}
	}
	d.writable = true
	return nil
}

func (d *dirState) restore() {
	if !d.writable {
		return
	}
	unix.Fchmodat(d.parent, d.name, d.st.Mode&0o7777, 0)
	ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Sec: StoreMtime}}
	unix.UtimesNanoAt(d.parent, d.name, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// linkFile deduplicates one regular file or symlink; dir is its directory's
// state (nil for the store dir).
func (o *optimiser) linkFile(dirfd int, name, disk string, st *unix.Stat_t, dir *dirState) error {
	typ := st.Mode & unix.S_IFMT
	if typ != unix.S_IFREG && typ != unix.S_IFLNK {
		return nil
	}
	if typ == unix.S_IFREG && st.Mode&unix.S_IWUSR != 0 {
		fmt.Fprintf(o.log, "warning: skipping suspicious writable file '%s'\n", disk)
		return nil
	}
	if st.Nlink > 1 && o.inodes[st.Ino] {
		return nil
	}
	h, _, err := hashEntry(dirfd, name)
	if err != nil {
		return fmt.Errorf("hash %s: %w", disk, err)
	}
	link := h.Nix32()
	linkDisk := o.s.linksPath(link)

	var lst unix.Stat_t
	if err := fstatat(o.linksFD, link, &lst); err == nil && lst.Size != st.Size {
		fmt.Fprintf(o.log, "warning: removing corrupted link '%s'\n", linkDisk)
		fmt.Fprintf(o.log, "warning: There may be more corrupted paths.\nYou should run `nix-store --verify --check-contents --repair` to fix them all\n")
		unix.Unlinkat(o.linksFD, link, 0)
	}
	err = unix.Linkat(dirfd, name, o.linksFD, link, 0)
	switch {
	case err == nil:
		o.inodes[st.Ino] = true
		return nil
	case errors.Is(err, unix.EEXIST):
		// Known contents: replace the file by a link to them.
	case errors.Is(err, unix.ENOSPC):
		fmt.Fprintf(o.log, "cannot link '%s' to '%s': %v\n", linkDisk, disk, err)
		return nil
	default:
		return &os.PathError{Op: "link to " + linkDisk, Path: disk, Err: err}
	}
	if err := fstatat(o.linksFD, link, &lst); err != nil {
		return &os.PathError{Op: "stat", Path: linkDisk, Err: err}
	}
	if lst.Ino == st.Ino {
		return nil
	}
	if err := unix.Linkat(o.linksFD, link, o.temp.fd, tempLink, 0); err != nil {
		if errors.Is(err, unix.EMLINK) {
			// Too many links to one inode (common for empty files): leave it.
			return nil
		}
		return &os.PathError{Op: "link", Path: linkDisk, Err: err}
	}
	if err := dir.makeWritable(dirfd); err != nil {
		unix.Unlinkat(o.temp.fd, tempLink, 0)
		return err
	}
	if err := unix.Renameat(o.temp.fd, tempLink, dirfd, name); err != nil {
		unix.Unlinkat(o.temp.fd, tempLink, 0)
		if errors.Is(err, unix.EMLINK) {
			return nil
		}
		return &os.PathError{Op: "replace with a link to " + linkDisk, Path: disk, Err: err}
	}
	o.stats.FilesLinked++
	o.stats.BytesFreed += uint64(st.Size)
	o.stats.BlocksFreed += uint64(st.Blocks)
	return nil
}

// dirEntry is one directory entry with its inode number.
type dirEntry struct {
	name string
	ino  uint64
}

// direntBufSize is the getdents buffer.
const direntBufSize = 32 << 10

// readDirEntries lists a directory with inode numbers (which Readdirnames
// drops), through a fresh descriptor of it.
func readDirEntries(dirfd int, disk string) ([]dirEntry, error) {
	fd, err := openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: disk, Err: err}
	}
	defer unix.Close(fd)
	var out []dirEntry
	buf := make([]byte, direntBufSize)
	for {
		n, err := unix.Getdents(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read directory", Path: disk, Err: err}
		}
		if n <= 0 {
			return out, nil
		}
		// struct linux_dirent64 { u64 ino; s64 off; u16 reclen; u8 type; char name[]; }
		for b := buf[:n]; len(b) >= 19; {
			reclen := int(binary.NativeEndian.Uint16(b[16:18]))
			if reclen < 19 || reclen > len(b) {
				return nil, fmt.Errorf("read directory %s: bad dirent", disk)
			}
			ino := binary.NativeEndian.Uint64(b[0:8])
			nameb := b[19:reclen]
			for i, c := range nameb {
				if c == 0 {
					nameb = nameb[:i]
					break
				}
			}
			if name := string(nameb); name != "." && name != ".." {
				out = append(out, dirEntry{name: name, ino: ino})
			}
			b = b[reclen:]
		}
	}
}
