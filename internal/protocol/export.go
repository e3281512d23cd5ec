package protocol

import (
	"fmt"
	"io"

	"cairn/internal/nar"
	"cairn/internal/storepath"
	"cairn/internal/wire"
)

// ExportMagic ("NIXE") follows each NAR of an export stream.
const ExportMagic = 0x4558494e

// ExportEntry is the trailer of one path in an export stream.
type ExportEntry struct {
	Path       storepath.StorePath
	References []storepath.StorePath
	Deriver    storepath.StorePath
}

// An ExportReader reads an export stream (nix-store --export, ImportPaths,
// the serve protocol's ImportPaths):
//
//	stream = { u64 1, NAR, u64 "NIXE", path, refs, optPath deriver, u64 0 } u64 0
//
// It copies each NAR through to the caller's writer without holding it.
type ExportReader struct {
	r   *wire.Reader
	err error
}

// NewExportReader returns an ExportReader on r.
func NewExportReader(r *wire.Reader) *ExportReader { return &ExportReader{r: r} }

// Next copies the next path's NAR to dst and returns its trailer, or io.EOF at
// the end of the stream. dst sees exactly the NAR's bytes.
func (e *ExportReader) Next(dst io.Writer) (*ExportEntry, error) {
	if e.err != nil {
		return nil, e.err
	}
	ent, err := e.next(dst)
	if err != nil {
		e.err = err
	}
	return ent, err
}

func (e *ExportReader) next(dst io.Writer) (*ExportEntry, error) {
	r := e.r
	switch flag := r.Uint64(); {
	case r.Err() != nil:
		return nil, fmt.Errorf("read export: %w", eofUnexpected(r.Err()))
	case flag == 0:
		return nil, io.EOF
	case flag != 1:
		return nil, fmt.Errorf("read export: flag %d: %w", flag, ErrProtocol)
	}
	if err := CopyNAR(dst, r); err != nil {
		return nil, fmt.Errorf("read export: %w", err)
	}
	if m := r.Uint64(); r.Err() == nil && m != ExportMagic {
		return nil, fmt.Errorf("read export: magic %#x: %w", m, ErrProtocol)
	}
	ent := &ExportEntry{Path: r.StorePath(), References: r.StorePaths(), Deriver: r.OptStorePath()}
	if sig := r.Uint64(); r.Err() == nil && sig != 0 {
		return nil, fmt.Errorf("read export: legacy signature: %w", ErrProtocol)
	}
	if r.Err() != nil {
		return nil, fmt.Errorf("read export: %w", eofUnexpected(r.Err()))
	}
	return ent, nil
}

// CopyNAR copies one NAR from src to dst, using the NAR grammar to find its
// end, in constant memory.
func CopyNAR(dst io.Writer, src io.Reader) error {
	nr := nar.NewReader(io.TeeReader(src, dst))
	for {
		if _, err := nr.Next(); err == io.EOF {
			return nil
		} else if err != nil {
			return eofUnexpected(err)
		}
	}
}

// An ExportWriter writes an export stream.
type ExportWriter struct{ w *wire.Writer }

// NewExportWriter returns an ExportWriter on w.
func NewExportWriter(w *wire.Writer) *ExportWriter { return &ExportWriter{w: w} }

// Add writes one path: the NAR read from narSrc (copied as is), then ent.
func (e *ExportWriter) Add(ent *ExportEntry, narSrc io.Reader) error {
	w := e.w
	w.Uint64(1)
	if _, err := io.Copy(w, narSrc); err != nil {
		return fmt.Errorf("write export: %w", err)
	}
	w.Uint64(ExportMagic)
	w.StorePath(ent.Path)
	w.StorePaths(ent.References)
	w.OptStorePath(ent.Deriver)
	w.Uint64(0)
	return w.Err()
}

// Close writes the end of the stream (it does not flush).
func (e *ExportWriter) Close() error {
	e.w.Uint64(0)
	return e.w.Err()
}

// A MultipleReader reads the framed payload of AddMultipleToStore:
//
//	payload = u64 count, count × (ValidPathInfo in the 1.16 layout, narSize NAR bytes)
type MultipleReader struct {
	r     *wire.Reader
	count int
	read  int
	nar   *io.LimitedReader
	begun bool
}

// NewMultipleReader returns a MultipleReader on the payload (a FramedReader).
func NewMultipleReader(payload io.Reader, dir storepath.StoreDir) *MultipleReader {
	r := wire.NewReader(payload)
	r.StoreDir = dir
	return &MultipleReader{r: r}
}

// Next returns the next path's info and a reader of exactly its NarSize NAR
// bytes, valid until the next call (which skips what was left unread), or
// io.EOF after the last.
func (m *MultipleReader) Next() (*PathInfo, io.Reader, error) {
	r := m.r
	if !m.begun {
		m.begun = true
		m.count = r.Count()
	}
	if m.nar != nil && m.nar.N > 0 {
		r.Skip(m.nar.N)
	}
	if err := r.Err(); err != nil {
		return nil, nil, fmt.Errorf("read AddMultipleToStore: %w", eofUnexpected(err))
	}
	if m.read == m.count {
		return nil, nil, io.EOF
	}
	m.read++
	info := ReadPathInfo(r, MultipleParams)
	if err := r.Err(); err != nil {
		return nil, nil, fmt.Errorf("read AddMultipleToStore: %w", eofUnexpected(err))
	}
	m.nar = &io.LimitedReader{R: r, N: int64(min(info.NarSize, 1<<62))}
	return info, m.nar, nil
}

// WriteMultipleCount writes an AddMultipleToStore payload header (the count) to w;
// follow it with AddMultiple for each path.
func WriteMultipleCount(w *wire.Writer, count int) { w.Uint64(uint64(count)) }

// AddMultiple writes one path of an AddMultipleToStore payload: info in the
// 1.16 layout, then exactly info.NarSize bytes from narSrc.
func AddMultiple(w *wire.Writer, info *PathInfo, narSrc io.Reader) error {
	WritePathInfo(w, MultipleParams, info)
	n, err := io.CopyN(w, narSrc, int64(info.NarSize))
	if err != nil {
		return fmt.Errorf("write AddMultipleToStore: %s: %d of %d NAR bytes: %w", info.Path, n, info.NarSize, err)
	}
	return w.Err()
}
