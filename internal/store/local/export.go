package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"cairn/internal/fsnar"
	"cairn/internal/nar"
	"cairn/internal/nixhash"
	"cairn/internal/store"
	"cairn/internal/storepath"
	"cairn/internal/wire"
)

// The export format of `nix-store --export` and `--import` (Nix's
// export-import.cc), in wire encoding (package wire):
//
//	stream := { u64 1, nar, u64 ExportMagic, string path, strings references,
//	            string deriver, u64 0 } u64 0
//
// Paths go out dependencies first (a reversed topological sort). The deriver
// is "" when unknown. The last u64 of a record says whether a legacy signature
// string follows; Nix writes 0 and skips one when it reads 1.
//
// Import is one pass and constant memory: each NAR is unpacked into a
// temporary while it is hashed (its path is only known after it, from the
// trailer), then the whole stream is registered in one transaction through a
// Batch. Export refuses a path whose files no longer match its narHash, as
// Nix does, so corruption does not travel.

// ExportMagic ("NIXE") follows each NAR in an export stream.
const ExportMagic = 0x4558494e

// MaxLegacySigLen bounds the legacy signature an import skips.
const MaxLegacySigLen = 64 << 10

// smallNar is the NAR size below which a path is dumped on the calling
// goroutine: fsnar's read-ahead goroutines only pay off for bigger trees.
const smallNar = 1 << 20

// dumpPath writes the NAR of the tree at real, whose NAR is expected to be
// about size bytes (0 when unknown).
func dumpPath(ctx context.Context, w io.Writer, real string, size uint64) error {
	if size != 0 && size < smallNar {
		return nar.Dump(w, real, nar.DumpOptions{})
	}
	return fsnar.Dump(ctx, w, real)
}

// Export writes paths (each must be valid) to w in `nix-store --export`
// format, streaming every NAR.
func (s *Store) Export(ctx context.Context, w io.Writer, paths []storepath.StorePath) error {
	paths = slices.Clone(paths)
	storepath.SortPaths(paths)
	paths = slices.Compact(paths)
	infos := make(map[storepath.StorePath]*store.PathInfo, len(paths))
	for i := 0; i < len(paths); i += dumpChunk {
		chunk := paths[i:min(i+dumpChunk, len(paths))]
		got, err := s.QueryPathInfos(ctx, chunk)
		if err != nil {
			return fmt.Errorf("export: %w", err)
		}
		for _, info := range got {
			infos[info.Path] = info
		}
	}
	sorted, err := store.TopoSort(paths, func(p storepath.StorePath) []storepath.StorePath { return infos[p].References })
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	slices.Reverse(sorted)
	ww := wire.NewWriter(w)
	for _, p := range sorted {
		info := infos[p]
		ww.Uint64(1)
		h := nixhash.NewHasher(nixhash.SHA256)
		if err := dumpPath(ctx, io.MultiWriter(ww, h), s.RealPath(p), info.NarSize); err != nil {
			return fmt.Errorf("export %s: %w", p, err)
		}
		if got := h.Sum(); !zeroDigest(info.NarHash) && got != info.NarHash {
			return fmt.Errorf("hash of path '%s' has changed from '%s' to '%s'!: %w", p, info.NarHash, got, store.ErrHashMismatch)
		}
		ww.Uint64(ExportMagic)
		ww.StorePath(p)
		ww.StorePaths(info.References)
		ww.OptStorePath(info.Deriver)
		ww.Uint64(0)
		if err := ww.Err(); err != nil {
			return fmt.Errorf("export %s: %w", p, err)
		}
	}
	ww.Uint64(0)
	if err := ww.Flush(); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	return nil
}

// Import reads a `nix-store --export` stream from r and adds its paths (see
// the comment above), returning them in stream order, already valid ones
// included, as `nix-store --import` prints them. The NARs are checked
// against nothing but themselves (there is no hash in the stream); the
// references must be valid or earlier in the stream. On error nothing is
// registered.
func (s *Store) Import(ctx context.Context, r io.Reader) ([]storepath.StorePath, error) {
	wr := wire.NewReader(r)
	wr.StoreDir = s.dir
	b := s.NewBatch()
	defer b.Discard()
	var out []storepath.StorePath
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n := wr.Uint64()
		if err := wr.Err(); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("import: %w", err)
		}
		if n == 0 {
			break
		}
		if n != 1 {
			return nil, fmt.Errorf("import: input doesn't look like something created by 'nix-store --export'")
		}
		p, err := s.importOne(b, wr)
		if err != nil {
			return nil, fmt.Errorf("import: %w", err)
		}
		out = append(out, p)
	}
	if err := b.commitSole(ctx); err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	return out, nil
}

// importOne unpacks one record's NAR into a temporary, reads its trailer and
// queues the path in b (or drops it when it is valid already).
func (s *Store) importOne(b *Batch, wr *wire.Reader) (storepath.StorePath, error) {
	t, err := b.newSlot()
	if err != nil {
		return storepath.StorePath{}, err
	}
	keep := false
	defer func() {
		if !keep {
			t.remove()
		}
	}()
	res, err := restoreNar(t, wr, 0, nil)
	if err != nil {
		return storepath.StorePath{}, err
	}
	if magic := wr.Int("export magic", 1<<32-1); wr.Err() == nil && magic != ExportMagic {
		return storepath.StorePath{}, fmt.Errorf("Nix archive cannot be imported; wrong format")
	}
	info := &store.PathInfo{NarHash: res.narHash, NarSize: res.narSize}
	info.Path = wr.StorePath()
	info.References = wr.StorePaths()
	info.Deriver = wr.OptStorePath()
	if wr.Int("signature flag", 1<<32-1) == 1 {
		wr.Bytes(MaxLegacySigLen)
	}
	if err := wr.Err(); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return storepath.StorePath{}, err
	}
	if err := s.checkInfo(info, false); err != nil {
		return storepath.StorePath{}, err
	}
	if _, dup := b.byPath[info.Path]; dup {
		return info.Path, nil
	}
	// A path that is valid already is dropped by Commit, under its lock.
	it, err := b.finish(t, info, res.stats, res.canonical)
	if err != nil {
		return storepath.StorePath{}, fmt.Errorf("import %s: %w", info.Path, err)
	}
	keep = true
	b.push(it)
	return info.Path, nil
}
