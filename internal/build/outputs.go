package build

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"cairn/internal/nar"
	"cairn/internal/refscan"
	"cairn/internal/store/local"

	"cairn/internal/derivation"
	"cairn/internal/fsnar"
	"cairn/internal/narinfo"
	"cairn/internal/nixhash"
	"cairn/internal/store"
	"cairn/internal/storepath"
)

// registerOutputs checks, scans and registers every output the builder
// left in dirs, together, with g's .drv as their deriver. The caller holds
// the outputs' path locks. Outputs are canonicalised where the builder left
// them, hashed and scanned in one pass, moved into the store dir and
// registered in one transaction. A fixed output is first copied out of the
// builder's reach (isolateFixedOutput), and the copy is what is checked.
//
// In Check mode nothing is registered: the outputs are compared with the
// valid ones (compareOutputs). In Repair mode only the bad outputs are
// looked at, and they replace the old files.
func (b *Builder) registerOutputs(ctx context.Context, g *goal, r *request, dirs *buildDirs, inputs []storepath.StorePath) (Status, error) {
	st := b.store
	drv := g.drv
	candidates := append([]storepath.StorePath(nil), inputs...)
	for _, o := range drv.Outputs {
		candidates = append(candidates, o.Path)
	}
	var delayed error
	var infos []*store.PathInfo
	var srcs []string
	for _, name := range drv.OutputNames() {
		o := drv.Outputs[name]
		if g.mode == Repair && !g.repair[o.Path] {
			continue // good: kept
		}
		dir := dirs.outputDir(st, o.Path)
		fi, err := os.Lstat(dir)
		if err != nil {
			return OutputRejected, fmt.Errorf("builder for '%s' failed to produce output path for output '%s' at '%s'",
				hl(g.drvPath.String()), hl(name), hl(o.Path.String()))
		}
		if g.mode == Normal {
			if ok, err := st.IsValidPath(ctx, o.Path); err != nil {
				return MiscFailure, err
			} else if ok {
				continue // made by someone else meanwhile; keep theirs
			}
		}
		owner := dirs // the builder's ids: what it left must be its own
		if !o.Hash.IsZero() {
			copied, cleanup, err := b.isolateFixedOutput(dir)
			if err != nil {
				return MiscFailure, err
			}
			defer cleanup()
			dir, owner = copied, nil
			if fi, err = os.Lstat(dir); err != nil {
				return MiscFailure, err
			}
		}
		if err := canonicalise(dir, owner); err != nil {
			var oe *local.OwnershipError
			if errors.As(err, &oe) {
				return OutputRejected, fmt.Errorf("output '%s' of '%s': %w", name, hl(g.drvPath.String()), err)
			}
			return MiscFailure, fmt.Errorf("canonicalise output '%s' of '%s': %w", name, g.drvPath, err)
		}
		info := &store.PathInfo{Path: o.Path, Deriver: g.drvPath, Ultimate: true}
		if err := hashAndScan(ctx, info, dir, candidates); err != nil {
			return MiscFailure, fmt.Errorf("hash output '%s' of '%s': %w", name, g.drvPath, err)
		}
		if !o.Hash.IsZero() {
			got, err := fixedHash(ctx, dir, fi, o)
			if err != nil {
				return OutputRejected, fmt.Errorf("fixed-output derivation '%s': %w", hl(g.drvPath.String()), err)
			}
			if len(info.References) > 0 {
				return OutputRejected, fmt.Errorf("illegal path references in fixed-output derivation '%s'", hl(g.drvPath.String()))
			}
			info.CA = nixhash.ContentAddress{Method: o.Method, Hash: got}
			if got != o.Hash {
				p, err := st.StoreDir().MakeFixedOutputPath(o.Path.Name(), info.CA, nil, false)
				if err != nil {
					return MiscFailure, err
				}
				info.Path = p
				info.Deriver = storepath.StorePath{}
				delayed = fmt.Errorf("hash mismatch in fixed-output derivation '%s':\n  specified: %s\n     got:    %s",
					hl(g.drvPath.String()), hl(o.Hash.SRI()), hl(got.SRI()))
			}
		}
		infos = append(infos, info)
		srcs = append(srcs, dir)
	}
	if err := checkOutputCycles(g.drvPath, infos); err != nil {
		return OutputRejected, err
	}
	if g.mode == Check {
		return b.compareOutputs(ctx, g, r, dirs, infos, srcs, delayed)
	}
	if err := checkReferences(ctx, st, drv, g.drvPath, infos); err != nil {
		return OutputRejected, err
	}
	if g.rounds > 1 {
		if status, err, done := b.compareRound(ctx, g, r, dirs, infos, srcs); done {
			return status, err
		}
	}
	if err := signOutputs(infos, r.opts.SecretKeyFiles); err != nil {
		return MiscFailure, err
	}
	for i, info := range infos {
		if err := b.moveIntoStore(srcs[i], info.Path); err != nil {
			return MiscFailure, err
		}
	}
	if len(infos) > 0 {
		if err := st.RegisterValidPaths(ctx, infos); err != nil {
			return MiscFailure, err
		}
		paths := make([]storepath.StorePath, len(infos))
		for i, info := range infos {
			paths[i] = info.Path
		}
		st.AutoOptimise(ctx, paths)
	}
	if delayed != nil {
		return OutputRejected, delayed
	}
	return Built, nil
}

// hashAndScan sets info's NAR hash, size and references (the candidates
// that occur) from one dump of the tree at path.
func hashAndScan(ctx context.Context, info *store.PathInfo, path string, candidates []storepath.StorePath) error {
	sc := refscan.NewForPaths(candidates)
	h := nixhash.NewHasher(nixhash.SHA256)
	cw := &countWriter{}
	if err := fsnar.DumpDirect(ctx, io.MultiWriter(h, sc, cw), path); err != nil {
		return err
	}
	info.NarHash = h.Sum()
	info.NarSize = uint64(cw.n)
	info.References = sc.FoundPaths()
	storepath.SortPaths(info.References)
	return nil
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// moveIntoStore puts the finished output at src at p's real path and makes
// its root read-only. Whatever is there (an invalid leftover, or the files
// of a path being repaired) is swapped out in one rename and then removed.
func (b *Builder) moveIntoStore(src string, p storepath.StorePath) error {
	st := b.store
	dst := st.RealPath(p)
	if src != dst {
		if err := moveTree(src, dst); err != nil {
			return fmt.Errorf("move output %s: %w", p, err)
		}
	}
	fd, err := unix.Open(filepath.Dir(dst), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return local.CanonicaliseRoot(fd, filepath.Base(dst))
}

// moveTree renames the tree at src to dst, exchanging it with whatever is
// at dst (which then goes away), or copies it across file systems.
func moveTree(src, dst string) error {
	err := unix.Renameat2(unix.AT_FDCWD, src, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EEXIST):
		// A directory moved to another parent must be writable (its "..").
		if fi, err := os.Lstat(dst); err == nil && fi.IsDir() {
			os.Chmod(dst, 0o755)
		}
		err = unix.Renameat2(unix.AT_FDCWD, src, unix.AT_FDCWD, dst, unix.RENAME_EXCHANGE)
		if err == nil {
			return removeAll(src) // the old files
		}
		if errors.Is(err, unix.EXDEV) {
			return moveAcross(src, dst)
		}
		if !errors.Is(err, unix.EINVAL) {
			return err
		}
	case errors.Is(err, unix.EXDEV):
		return moveAcross(src, dst)
	case !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS):
		return err
	}
	// No renameat2 here: delete, then rename.
	if err := removeAll(dst); err != nil {
		return err
	}
	return os.Rename(src, dst)
}

// moveAcross copies src next to dst, then moves the copy into place.
func moveAcross(src, dst string) error {
	tmp := fmt.Sprintf("%s.tmp-%d-%d", dst, os.Getpid(), tmpSeq.Add(1))
	if err := copyTree(src, tmp); err != nil {
		removeAll(tmp)
		return err
	}
	if err := moveTree(tmp, dst); err != nil {
		removeAll(tmp)
		return err
	}
	return removeAll(src)
}

var tmpSeq atomic.Uint64

// copyTree copies a canonical tree by dumping and restoring it.
func copyTree(src, dst string) error {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(nar.Dump(pw, src, nar.DumpOptions{})) }()
	err := nar.Restore(pr, dst, nar.RestoreOptions{})
	pr.CloseWithError(io.ErrClosedPipe)
	if err != nil {
		return err
	}
	return canonicalise(dst, nil)
}

// fixedHash hashes a fixed output as its content address says: the file's
// bytes (flat) or its NAR (recursive).
func fixedHash(ctx context.Context, dir string, fi os.FileInfo, o derivation.Output) (nixhash.Hash, error) {
	h := nixhash.NewHasher(o.HashAlgo)
	switch o.Method {
	case nixhash.Recursive:
		if err := fsnar.DumpDirect(ctx, h, dir); err != nil {
			return nixhash.Hash{}, err
		}
	default:
		if !fi.Mode().IsRegular() || fi.Mode()&0o100 != 0 {
			return nixhash.Hash{}, fmt.Errorf("output path '%s' should be a non-executable regular file since recursive hashing is not enabled (outputHashMode=flat)", dir)
		}
		f, err := os.Open(dir)
		if err != nil {
			return nixhash.Hash{}, err
		}
		defer f.Close()
		if _, err := io.Copy(h, f); err != nil {
			return nixhash.Hash{}, err
		}
	}
	return h.Sum(), nil
}

// checkOutputCycles rejects outputs that refer to each other in a cycle, as
// Nix 2.8 does (self-references are fine), naming the first cycle its
// depth-first walk over the sorted output names would find.
func checkOutputCycles(drvPath storepath.StorePath, infos []*store.PathInfo) error {
	byPath := map[storepath.StorePath]*store.PathInfo{}
	for _, info := range infos {
		byPath[info.Path] = info
	}
	names := map[storepath.StorePath]string{}
	for _, info := range infos {
		names[info.Path] = outputName(drvPath, info.Path)
	}
	sorted := append([]*store.PathInfo(nil), infos...)
	slices.SortFunc(sorted, func(a, b *store.PathInfo) int { return strings.Compare(names[a.Path], names[b.Path]) })
	visited := map[storepath.StorePath]bool{}
	parents := map[storepath.StorePath]bool{}
	var visit func(p, parent storepath.StorePath) error
	visit = func(p, parent storepath.StorePath) error {
		if parents[p] {
			return fmt.Errorf("cycle detected in build of '%s' in the references of output '%s' from output '%s'",
				hl(drvPath.String()), hl(names[p]), hl(names[parent]))
		}
		if visited[p] {
			return nil
		}
		visited[p], parents[p] = true, true
		refs := byPath[p].References
		var outs []storepath.StorePath
		for _, r := range refs {
			if r != p && byPath[r] != nil {
				outs = append(outs, r)
			}
		}
		slices.SortFunc(outs, func(a, b storepath.StorePath) int { return strings.Compare(names[a], names[b]) })
		for _, r := range outs {
			if err := visit(r, p); err != nil {
				return err
			}
		}
		delete(parents, p)
		return nil
	}
	for _, info := range sorted {
		if err := visit(info.Path, storepath.StorePath{}); err != nil {
			return err
		}
	}
	return nil
}

// outputName recovers an output's name from its path: the part after the
// derivation's name ("out" when nothing follows).
func outputName(drvPath, out storepath.StorePath) string {
	drvName := strings.TrimSuffix(drvPath.Name(), ".drv")
	if rest, ok := strings.CutPrefix(out.Name(), drvName+"-"); ok {
		return rest
	}
	return "out"
}

// signOutputs adds to each output a signature by every key of keyFiles
// (secret-key-files), as Nix signs the paths it builds. A key file that
// cannot be read or parsed fails the build, as in Nix.
func signOutputs(infos []*store.PathInfo, keyFiles []string) error {
	if len(keyFiles) == 0 {
		return nil
	}
	keys := make([]narinfo.SecretKey, 0, len(keyFiles))
	for _, f := range keyFiles {
		text, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("sign outputs: %w", err)
		}
		k, err := narinfo.ParseSecretKey(string(text))
		if err != nil {
			return fmt.Errorf("sign outputs with %s: %w", f, err)
		}
		keys = append(keys, k)
	}
	for _, info := range infos {
		fp, err := narinfo.Fingerprint(info.Path, info.NarHash, info.NarSize, info.References)
		if err != nil {
			return fmt.Errorf("sign %s: %w", info.Path, err)
		}
		for _, k := range keys {
			info.Signatures = append(info.Signatures, k.Sign(fp).String())
		}
		slices.Sort(info.Signatures)
		info.Signatures = slices.Compact(info.Signatures)
	}
	return nil
}
