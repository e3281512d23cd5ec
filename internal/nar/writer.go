package nar

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Errors the Writer returns for misuse.
var (
	ErrWriteTooLong    = errors.New("write nar: write too long")
	ErrWriteAfterClose = errors.New("write nar: write after close")
)

// writeBufferSize is the Writer's buffer for tokens and small writes; larger
// writes go straight through.
const writeBufferSize = 64 << 10

// directMin is the shortest Write of contents a direct Writer (NewWriterDirect)
// hands to its destination as it is.
const directMin = 1 << 10

// Writer writes a NAR. Headers must come in the archive's order: the root first,
// then depth first, each directory's entries after it in byte-wise order of their
// names. Writer buffers tokens; Close flushes.
type Writer struct {
	w      *bufio.Writer
	dst    io.Writer // what w writes to; written directly when direct
	direct bool
	err    error // sticky

	started bool
	closed  bool
	done    bool // the root node has been completed

	inFile  bool
	left    int64 // contents bytes still owed by Write
	padding int64

	dirs    []dirFrame
	scratch [8]byte
}

// NewWriter returns a Writer writing a NAR to w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: bufio.NewWriterSize(w, writeBufferSize), dst: w}
}

// NewWriterDirect is NewWriter for a destination that is as cheap to call as to
// copy into: a hash, a reference scanner, a counter, or a MultiWriter of those. It
// buffers the archive's tokens as NewWriter's Writer does, but hands each Write of
// contents of directMin bytes or more to w as it is, instead of copying it into
// the buffer first (for `cairn hash path` of the Go tree, 5 ms less on the hashing
// goroutine). A destination that makes a system call or wakes a goroutine per
// Write (a file, a socket, an io.Pipe) wants NewWriter.
func NewWriterDirect(w io.Writer) *Writer {
	nw := NewWriter(w)
	nw.direct = true
	return nw
}

// WriteHeader starts a new node. Any open directories that are not ancestors of
// h.Path are closed; for a regular file, exactly h.Size bytes must follow by Write.
func (w *Writer) WriteHeader(h *Header) error {
	if w.err != nil {
		return w.err
	}
	if err := w.writeHeader(h); err != nil {
		w.err = err
		return err
	}
	return nil
}

func (w *Writer) writeHeader(h *Header) error {
	if w.closed {
		return ErrWriteAfterClose
	}
	if err := w.finishFile(); err != nil {
		return err
	}
	if !w.started {
		if h.Path != "" {
			return fmt.Errorf("write nar header %q: the first header must be the root \"\"", h.Path)
		}
		w.started = true
		w.str(Magic)
		return w.node(h)
	}
	if w.done || h.Path == "" {
		return fmt.Errorf("write nar header %q: the archive's root is already complete", h.Path)
	}
	parent, name := "", h.Path
	if i := strings.LastIndexByte(h.Path, '/'); i >= 0 {
		parent, name = h.Path[:i], h.Path[i+1:]
	}
	if err := checkName(name); err != nil {
		return fmt.Errorf("write nar header %q: %v", h.Path, err)
	}
	// Close directories until the parent is on top.
	for len(w.dirs) > 0 && w.dirs[len(w.dirs)-1].path != parent {
		w.dirs = w.dirs[:len(w.dirs)-1]
		w.closeNode()
	}
	if len(w.dirs) == 0 {
		return fmt.Errorf("write nar header %q: parent %q is not an open directory", h.Path, parent)
	}
	top := &w.dirs[len(w.dirs)-1]
	if top.prev != "" && name <= top.prev {
		return fmt.Errorf("write nar header %q: entry %q does not sort after %q", h.Path, name, top.prev)
	}
	top.prev = name
	w.str("entry")
	w.str("(")
	w.str("name")
	w.str(name)
	w.str("node")
	return w.node(h)
}

func (w *Writer) node(h *Header) error {
	switch h.Type {
	case TypeRegular:
		if h.Size < 0 {
			return fmt.Errorf("write nar header %q: negative size %d", h.Path, h.Size)
		}
		w.str("(")
		w.str("type")
		w.str("regular")
		if h.Executable {
			w.str("executable")
			w.str("")
		}
		w.str("contents")
		w.u64(uint64(h.Size))
		w.inFile, w.left, w.padding = true, h.Size, pad(uint64(h.Size))
	case TypeSymlink:
		t := h.LinkTarget
		if t == "" || len(t) > MaxTargetLen || strings.IndexByte(t, 0) >= 0 {
			return fmt.Errorf("write nar header %q: invalid symlink target %q", h.Path, t)
		}
		w.str("(")
		w.str("type")
		w.str("symlink")
		w.str("target")
		w.str(t)
		w.closeNode()
	case TypeDirectory:
		if len(w.dirs) >= MaxDepth {
			return fmt.Errorf("write nar header %q: directories nest deeper than %d", h.Path, MaxDepth)
		}
		w.str("(")
		w.str("type")
		w.str("directory")
		w.dirs = append(w.dirs, dirFrame{path: h.Path})
	default:
		return fmt.Errorf("write nar header %q: unknown type %v", h.Path, h.Type)
	}
	return w.flushErr()
}

// closeNode writes the ")" ending a node and, for an entry, the ")" ending the entry.
func (w *Writer) closeNode() {
	w.str(")")
	if len(w.dirs) > 0 {
		w.str(")")
	} else {
		w.done = true
	}
}

func (w *Writer) finishFile() error {
	if !w.inFile {
		return nil
	}
	if w.left > 0 {
		return fmt.Errorf("write nar: %d bytes of file contents missing", w.left)
	}
	w.inFile = false
	w.pad(w.padding)
	w.closeNode()
	return nil
}

// Write writes contents of the current regular file.
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if !w.inFile || int64(len(p)) > w.left {
		n := 0
		if w.inFile {
			n, _ = w.Write(p[:w.left])
		}
		if w.err == nil {
			return n, ErrWriteTooLong
		}
		return n, w.err
	}
	var n int
	var err error
	if w.direct && len(p) >= directMin {
		if err = w.w.Flush(); err == nil {
			n, err = w.dst.Write(p)
		}
	} else {
		n, err = w.w.Write(p)
	}
	w.left -= int64(n)
	if err != nil {
		w.err = err
	}
	return n, err
}

// ReadFrom copies the current file's remaining contents from src, letting the
// destination use its own fast path (copy_file_range, splice) when it has one.
// It fails with ErrWriteTooLong if src holds more than the header's Size.
func (w *Writer) ReadFrom(src io.Reader) (int64, error) {
	if w.err != nil {
		return 0, w.err
	}
	var n int64
	if w.inFile && w.left > 0 {
		var err error
		if n, err = w.readFrom(src, w.left); err != nil {
			return n, err
		}
	}
	var one [1]byte
	if m, _ := io.ReadFull(src, one[:]); m > 0 {
		return n, ErrWriteTooLong
	}
	return n, nil
}

// readFrom copies exactly size bytes from src.
func (w *Writer) readFrom(src io.Reader, size int64) (int64, error) {
	if w.err != nil {
		return 0, w.err
	}
	if !w.inFile || size > w.left {
		return 0, ErrWriteTooLong
	}
	if err := w.w.Flush(); err != nil {
		w.err = err
		return 0, err
	}
	n, err := w.w.ReadFrom(&io.LimitedReader{R: src, N: size})
	w.left -= n
	if err == nil && n < size {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		w.err = fmt.Errorf("write nar: copy contents: %w", err)
		return n, w.err
	}
	return n, nil
}

// Close completes the archive, closing any open directories, and flushes. It
// does not close the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return w.err
	}
	if w.err == nil {
		w.err = w.close()
	}
	w.closed = true
	return w.err
}

func (w *Writer) close() error {
	if !w.started {
		return errors.New("write nar: close before the root header")
	}
	if err := w.finishFile(); err != nil {
		return err
	}
	for len(w.dirs) > 0 {
		w.dirs = w.dirs[:len(w.dirs)-1]
		w.closeNode()
	}
	return w.w.Flush()
}

// Flush writes any buffered tokens to the underlying writer.
func (w *Writer) Flush() error {
	if w.err != nil {
		return w.err
	}
	w.err = w.w.Flush()
	return w.err
}

var zeros [8]byte

func (w *Writer) u64(n uint64) {
	binary.LittleEndian.PutUint64(w.scratch[:], n)
	w.w.Write(w.scratch[:])
}

func (w *Writer) str(s string) {
	w.u64(uint64(len(s)))
	w.w.WriteString(s)
	w.pad(pad(uint64(len(s))))
}

func (w *Writer) pad(n int64) { w.w.Write(zeros[:n]) }

// flushErr surfaces an error the bufio.Writer met on a token write: it keeps
// its first error and returns it from every later Write.
func (w *Writer) flushErr() error {
	_, err := w.w.Write(nil)
	return err
}
