package wire

import (
	"errors"
	"fmt"
	"io"
)

// ErrClosed is returned by a FramedWriter used after Close.
var ErrClosed = errors.New("framed stream closed")

// A FramedReader reads the payload of a framed stream: frames of (u64 len,
// len bytes, no padding) up to a zero length. Read returns io.EOF at the
// terminator, and never reads past it.
type FramedReader struct {
	r    *Reader
	left uint64 // bytes left in the current frame
	done bool
	err  error
}

// NewFramedReader returns a FramedReader on r's stream.
func NewFramedReader(r *Reader) *FramedReader { return &FramedReader{r: r} }

func (f *FramedReader) fail(err error) error {
	if f.err == nil {
		f.err = err
		f.r.Fail(err)
	}
	return f.err
}

// Read reads payload bytes.
func (f *FramedReader) Read(p []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	if f.done {
		return 0, io.EOF
	}
	for f.left == 0 {
		n := f.r.Uint64()
		if err := f.r.Err(); err != nil {
			return 0, f.fail(fmt.Errorf("read frame: %w", unexpected(err)))
		}
		if n == 0 {
			f.done = true
			return 0, io.EOF
		}
		if n > MaxFrameSize {
			return 0, f.fail(fmt.Errorf("read frame: length %d: %w (%d)", n, ErrTooLong, MaxFrameSize))
		}
		f.left = n
	}
	if len(p) == 0 {
		return 0, nil
	}
	if uint64(len(p)) > f.left {
		p = p[:f.left]
	}
	n, err := f.r.br.Read(p)
	f.left -= uint64(n)
	if err != nil {
		return n, f.fail(fmt.Errorf("read frame: %w", unexpected(err)))
	}
	return n, nil
}

// Drain reads and discards the rest of the stream up to its terminator, so
// that an operation that fails part-way still consumes its upload and the
// connection stays in step. It returns nil once the terminator is read.
func (f *FramedReader) Drain() error {
	_, err := io.Copy(io.Discard, f)
	if err != nil {
		return err
	}
	return f.err
}

// Done reports whether the terminator has been read.
func (f *FramedReader) Done() bool { return f.done }

// A FramedWriter writes a framed stream onto a Writer. Writes are gathered into
// frames of up to BufferSize bytes; a large write when nothing is buffered goes
// out as one frame of its own. Close writes the terminator and flushes.
type FramedWriter struct {
	w      *Writer
	buf    []byte
	closed bool
}

// NewFramedWriter returns a FramedWriter on w.
func NewFramedWriter(w *Writer) *FramedWriter {
	return &FramedWriter{w: w, buf: make([]byte, 0, BufferSize)}
}

func (f *FramedWriter) frame(p []byte) {
	if len(p) == 0 {
		return
	}
	f.w.Uint64(uint64(len(p)))
	f.w.Write(p)
}

// Write adds p to the stream.
func (f *FramedWriter) Write(p []byte) (int, error) {
	if f.closed {
		return 0, ErrClosed
	}
	if err := f.w.Err(); err != nil {
		return 0, err
	}
	n := len(p)
	for len(p) > 0 {
		if len(f.buf) == 0 && len(p) >= cap(f.buf) {
			chunk := p[:min(len(p), MaxFrameSize)]
			f.frame(chunk)
			p = p[len(chunk):]
			continue
		}
		c := copy(f.buf[len(f.buf):cap(f.buf)], p)
		f.buf = f.buf[:len(f.buf)+c]
		p = p[c:]
		if len(f.buf) == cap(f.buf) {
			f.frame(f.buf)
			f.buf = f.buf[:0]
		}
	}
	if err := f.w.Err(); err != nil {
		return 0, err
	}
	return n, nil
}

// Flush sends the buffered bytes as a frame and flushes the Writer.
func (f *FramedWriter) Flush() error {
	f.frame(f.buf)
	f.buf = f.buf[:0]
	return f.w.Flush()
}

// Close sends any buffered bytes, the terminator, and flushes the Writer. It
// does not close the underlying stream.
func (f *FramedWriter) Close() error {
	if f.closed {
		return ErrClosed
	}
	f.closed = true
	f.frame(f.buf)
	f.buf = f.buf[:0]
	f.w.Uint64(0)
	return f.w.Flush()
}
