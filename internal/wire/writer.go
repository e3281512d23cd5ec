package wire

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"slices"

	"cairn/internal/storepath"
)

// A Writer encodes wire values into a buffered stream. Its first error is
// sticky. Nothing reaches the peer until Flush.
type Writer struct {
	bw  *bufio.Writer
	err error
}

// NewWriter returns a Writer on w, reusing w if it is already a large enough
// *bufio.Writer.
func NewWriter(w io.Writer) *Writer {
	return &Writer{bw: bufio.NewWriterSize(w, BufferSize)}
}

// Err returns the first error the Writer met, or nil.
func (w *Writer) Err() error {
	if w.err == nil {
		return nil
	}
	return w.err
}

func (w *Writer) fail(err error) {
	if w.err == nil && err != nil {
		w.err = fmt.Errorf("write: %w", err)
	}
}

// Flush sends everything buffered and returns the sticky error.
func (w *Writer) Flush() error {
	if w.err == nil {
		w.fail(w.bw.Flush())
	}
	return w.err
}

// Write writes raw bytes (a NAR sent unframed, say).
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.bw.Write(p)
	w.fail(err)
	return n, w.err
}

// Uint64 writes a u64.
func (w *Writer) Uint64(v uint64) {
	if w.err != nil {
		return
	}
	b := binary.LittleEndian.AppendUint64(w.bw.AvailableBuffer(), v)
	_, err := w.bw.Write(b)
	w.fail(err)
}

// Bool writes a boolean as u64 0 or 1.
func (w *Writer) Bool(b bool) {
	if b {
		w.Uint64(1)
	} else {
		w.Uint64(0)
	}
}

func (w *Writer) pad(n int) {
	if p := padLen(uint64(n)); p != 0 && w.err == nil {
		_, err := w.bw.Write(zeros[:p])
		w.fail(err)
	}
}

// Bytes writes a byte string.
func (w *Writer) Bytes(b []byte) {
	w.Uint64(uint64(len(b)))
	if w.err != nil {
		return
	}
	_, err := w.bw.Write(b)
	w.fail(err)
	w.pad(len(b))
}

// String writes a string.
func (w *Writer) String(s string) {
	w.Uint64(uint64(len(s)))
	if w.err != nil {
		return
	}
	_, err := w.bw.WriteString(s)
	w.fail(err)
	w.pad(len(s))
}

// Strings writes a string list or set in the order given.
func (w *Writer) Strings(ss []string) {
	w.Uint64(uint64(len(ss)))
	for _, s := range ss {
		w.String(s)
	}
}

// StringMap writes a map of strings with keys sorted byte-wise, as Nix's
// std::map goes out.
func (w *Writer) StringMap(m map[string]string) {
	w.Uint64(uint64(len(m)))
	for _, k := range SortedKeys(m) {
		w.String(k)
		w.String(m[k])
	}
}

// StorePath writes a store path as its full path string.
func (w *Writer) StorePath(p storepath.StorePath) { w.String(p.String()) }

// OptStorePath writes an optional store path: the zero StorePath goes out as "".
func (w *Writer) OptStorePath(p storepath.StorePath) {
	if p.IsZero() {
		w.String("")
		return
	}
	w.String(p.String())
}

// StorePaths writes a list or set of store paths in the order given (callers
// sort sets with storepath.SortPaths).
func (w *Writer) StorePaths(ps []storepath.StorePath) {
	w.Uint64(uint64(len(ps)))
	for _, p := range ps {
		w.StorePath(p)
	}
}

// SortedKeys returns m's keys sorted byte-wise.
func SortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
