package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"cairn/internal/storepath"
)

// Limits on what a peer may send. A length or count over its limit fails
// before anything is allocated.
const (
	// MaxPathLen bounds a store path string (PATH_MAX).
	MaxPathLen = 4096
	// MaxStringLen bounds an ordinary string: a name, hash, content address,
	// signature, option value, log line, error message or JSON document.
	MaxStringLen = 1 << 20
	// MaxTextLen bounds a string that carries file contents inline
	// (AddTextToStore, a derivation's ATerm).
	MaxTextLen = 64 << 20
	// MaxListCount bounds the number of elements of a list, set or map.
	MaxListCount = 1 << 24
	// MaxFrameSize bounds one frame of a framed stream. Frames are streamed, not
	// buffered, so this is a sanity check rather than a memory bound.
	MaxFrameSize = 1 << 30
	// BufferSize is the size of the bufio buffers NewReader and NewWriter make.
	BufferSize = 32 << 10

	// maxScratch is the largest Bytes result the Reader keeps its buffer for.
	maxScratch = 64 << 10
	// maxPrealloc caps how many list elements are allocated ahead of reading them.
	maxPrealloc = 1024
)

// Errors a Reader reports, wrapped with the field that failed.
var (
	ErrTooLong = errors.New("over limit")
	ErrPadding = errors.New("non-zero padding")
	ErrFormat  = errors.New("malformed value")
)

var zeros [8]byte

// padLen is the padding after n bytes of a string.
func padLen(n uint64) int { return int((8 - n%8) % 8) }

// A Reader decodes wire values from a buffered stream. Its first error is
// sticky: later calls return zero values and Err reports it.
type Reader struct {
	br      *bufio.Reader
	err     error
	scratch []byte
	// StoreDir, when set, is the store directory every store path read must lie
	// in; when empty the directory is taken from each path.
	StoreDir storepath.StoreDir
}

// NewReader returns a Reader on r, reusing r if it is already a large enough
// *bufio.Reader.
func NewReader(r io.Reader) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, BufferSize)}
}

// Err returns the first error the Reader met, or nil.
func (r *Reader) Err() error { return r.err }

// Fail records err as the Reader's error unless it already has one. Codecs use
// it to report a value that decoded but is invalid.
func (r *Reader) Fail(err error) {
	if r.err == nil && err != nil {
		r.err = err
	}
}

// Failf is Fail with a formatted error.
func (r *Reader) Failf(format string, args ...any) { r.Fail(fmt.Errorf(format, args...)) }

// Buffered is the number of bytes that can be read without touching the
// underlying reader.
func (r *Reader) Buffered() int { return r.br.Buffered() }

// Read reads raw bytes (a NAR sent unframed, say) from the stream. It reports
// the sticky error if there is one.
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	return r.br.Read(p)
}

// ReadFull fills p with raw bytes.
func (r *Reader) ReadFull(p []byte) {
	if r.err != nil {
		return
	}
	if _, err := io.ReadFull(r.br, p); err != nil {
		r.err = fmt.Errorf("read raw bytes: %w", unexpected(err))
	}
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Uint64 reads a u64. At a clean end of stream (no byte of it read) the error
// is io.EOF itself, so a server can tell a client that hung up between
// operations from a truncated message.
func (r *Reader) Uint64() uint64 {
	if r.err != nil {
		return 0
	}
	b, err := r.br.Peek(8)
	if err != nil {
		if err == io.EOF && len(b) == 0 {
			r.err = io.EOF
		} else {
			r.err = fmt.Errorf("read u64: %w", unexpected(err))
		}
		return 0
	}
	v := binary.LittleEndian.Uint64(b)
	r.br.Discard(8)
	return v
}

// Bool reads a u64 as a boolean: any non-zero value is true, as Nix reads it.
func (r *Reader) Bool() bool { return r.Uint64() != 0 }

// Int reads a u64 that must be at most max (Nix's readInt of a narrower type).
func (r *Reader) Int(what string, max uint64) uint64 {
	v := r.Uint64()
	if r.err == nil && v > max {
		r.err = fmt.Errorf("read %s: value %d: %w (%d)", what, v, ErrTooLong, max)
		return 0
	}
	return v
}

// Count reads a list, set or map element count, bounded by MaxListCount.
func (r *Reader) Count() int {
	return int(r.Int("count", MaxListCount))
}

// length reads a string length and checks it against max.
func (r *Reader) length(max int) (int, bool) {
	n := r.Uint64()
	if r.err != nil {
		if r.err == io.EOF {
			r.err = fmt.Errorf("read string: %w", io.ErrUnexpectedEOF)
		}
		return 0, false
	}
	if n > uint64(max) {
		r.err = fmt.Errorf("read string: length %d: %w (%d)", n, ErrTooLong, max)
		return 0, false
	}
	return int(n), true
}

// padding consumes and checks the padding after n string bytes.
func (r *Reader) padding(n int) {
	p := padLen(uint64(n))
	if p == 0 || r.err != nil {
		return
	}
	b, err := r.br.Peek(p)
	if err != nil {
		r.err = fmt.Errorf("read string padding: %w", unexpected(err))
		return
	}
	for _, c := range b {
		if c != 0 {
			r.err = fmt.Errorf("read string: %w", ErrPadding)
			return
		}
	}
	r.br.Discard(p)
}

// Bytes reads a string of at most max bytes into a buffer the Reader owns; the
// result is valid until the next call. Short strings do not allocate.
func (r *Reader) Bytes(limit int) []byte {
	n, ok := r.length(limit)
	if !ok {
		return nil
	}
	var buf []byte
	if n <= maxScratch {
		if cap(r.scratch) < n {
			r.scratch = make([]byte, n, max(n, 256))
		}
		buf = r.scratch[:n]
	} else {
		buf = make([]byte, n)
	}
	if _, err := io.ReadFull(r.br, buf); err != nil {
		r.err = fmt.Errorf("read string: %w", unexpected(err))
		return nil
	}
	r.padding(n)
	if r.err != nil {
		return nil
	}
	return buf
}

// String reads a string of at most max bytes.
func (r *Reader) String(max int) string {
	n, ok := r.length(max)
	if !ok {
		return ""
	}
	if n == 0 {
		return ""
	}
	var s string
	if n <= r.br.Size() {
		// Read through the bufio buffer: one allocation, for the string.
		b, err := r.br.Peek(n)
		if err != nil {
			r.err = fmt.Errorf("read string: %w", unexpected(err))
			return ""
		}
		s = string(b)
		r.br.Discard(n)
	} else {
		buf := make([]byte, n)
		if _, err := io.ReadFull(r.br, buf); err != nil {
			r.err = fmt.Errorf("read string: %w", unexpected(err))
			return ""
		}
		s = string(buf)
	}
	r.padding(n)
	if r.err != nil {
		return ""
	}
	return s
}

// Strings reads a string list or set, each element at most maxLen bytes.
// Order is kept as sent.
func (r *Reader) Strings(maxLen int) []string {
	n := r.Count()
	if r.err != nil {
		return nil
	}
	out := make([]string, 0, min(n, maxPrealloc))
	for range n {
		s := r.String(maxLen)
		if r.err != nil {
			return nil
		}
		out = append(out, s)
	}
	return out
}

// StringMap reads a map of strings, keys and values at most maxLen bytes.
// A repeated key is an error.
func (r *Reader) StringMap(maxLen int) map[string]string {
	n := r.Count()
	if r.err != nil {
		return nil
	}
	out := make(map[string]string, min(n, maxPrealloc))
	for range n {
		k := r.String(maxLen)
		v := r.String(maxLen)
		if r.err != nil {
			return nil
		}
		if _, dup := out[k]; dup {
			r.err = fmt.Errorf("read map: duplicate key %q: %w", k, ErrFormat)
			return nil
		}
		out[k] = v
	}
	return out
}

// parsePath parses a store path string against r.StoreDir.
func (r *Reader) parsePath(b []byte) storepath.StorePath {
	var p storepath.StorePath
	var err error
	if r.StoreDir != "" {
		p, err = r.StoreDir.Parse(string(b))
	} else {
		p, err = storepath.Parse(string(b))
	}
	if err != nil {
		r.err = fmt.Errorf("read store path: %w", err)
	}
	return p
}

// StorePath reads a store path (the full path string).
func (r *Reader) StorePath() storepath.StorePath {
	b := r.Bytes(MaxPathLen)
	if r.err != nil {
		return storepath.StorePath{}
	}
	return r.parsePath(b)
}

// OptStorePath reads an optional store path: "" gives the zero StorePath.
func (r *Reader) OptStorePath() storepath.StorePath {
	b := r.Bytes(MaxPathLen)
	if r.err != nil || len(b) == 0 {
		return storepath.StorePath{}
	}
	return r.parsePath(b)
}

// StorePaths reads a list or set of store paths, in the order sent.
func (r *Reader) StorePaths() []storepath.StorePath {
	n := r.Count()
	if r.err != nil {
		return nil
	}
	out := make([]storepath.StorePath, 0, min(n, maxPrealloc))
	for range n {
		p := r.StorePath()
		if r.err != nil {
			return nil
		}
		out = append(out, p)
	}
	return out
}

// Skip discards n raw bytes.
func (r *Reader) Skip(n int64) {
	if r.err != nil {
		return
	}
	if _, err := io.CopyN(io.Discard, r.br, n); err != nil {
		r.err = fmt.Errorf("skip raw bytes: %w", unexpected(err))
	}
}

// Peek returns the next n raw bytes without consuming them (n must not exceed
// BufferSize).
func (r *Reader) Peek(n int) ([]byte, error) {
	if r.err != nil {
		return nil, r.err
	}
	return r.br.Peek(n)
}
