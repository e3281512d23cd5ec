package nar

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
)

// Limits on what a NAR may contain. Nix itself has none beyond the grammar; these
// keep the Reader in bounded memory and match what Linux can restore.
const (
	// MaxNameLen is the longest directory entry name (Linux NAME_MAX).
	MaxNameLen = 255
	// MaxTargetLen is the longest symlink target (Linux PATH_MAX minus the NUL).
	MaxTargetLen = 4095
	// MaxDepth is how deeply directories may nest; the root directory is depth 1.
	MaxDepth = 256

	// maxKeywordLen bounds the fixed tokens ("executable" is the longest).
	maxKeywordLen = 16
)

// Magic is the token every NAR starts with.
const Magic = "nix-archive-1"

// Type is the kind of a node.
type Type uint8

const (
	TypeRegular Type = iota + 1
	TypeDirectory
	TypeSymlink
)

func (t Type) String() string {
	switch t {
	case TypeRegular:
		return "regular"
	case TypeDirectory:
		return "directory"
	case TypeSymlink:
		return "symlink"
	}
	return fmt.Sprintf("Type(%d)", uint8(t))
}

// Header describes one node of an archive.
type Header struct {
	// Path is the node's place in the tree: "" for the root, "a" for an entry of a
	// root directory, "a/b" below that.
	Path       string
	Type       Type
	Executable bool   // regular files only
	Size       int64  // regular files only: the length of the contents
	LinkTarget string // symlinks only
}

// ErrFormat is wrapped by every error about a malformed archive.
var ErrFormat = errors.New("malformed nar")

// Error is a read failure at a byte offset of the archive. Err wraps ErrFormat
// for a malformed archive, io.ErrUnexpectedEOF for a truncated one, or the
// underlying reader's error.
type Error struct {
	Offset int64
	Err    error
}

func (e *Error) Error() string { return fmt.Sprintf("read nar at byte %d: %v", e.Offset, e.Err) }
func (e *Error) Unwrap() error { return e.Err }

// dirFrame is an open directory while reading.
type dirFrame struct {
	path string // the directory's Header.Path
	prev string // the previous entry name, for the ordering check
}

// Reader reads a NAR node by node. It reads exactly the archive's bytes from the
// underlying reader and no more; it does no buffering of its own, so wrap a slow
// reader (a socket, a pipe) in a bufio.Reader.
type Reader struct {
	r   io.Reader
	off int64
	err error // sticky

	started bool
	done    bool // the root node has closed

	inFile  bool  // the last header was a regular file whose contents are pending
	left    int64 // contents bytes not yet read
	padding int64 // padding after the contents

	dirs []dirFrame
	buf  [MaxTargetLen + 8 + 1]byte // scratch for one padded token
}

// NewReader returns a Reader reading a NAR from r.
func NewReader(r io.Reader) *Reader { return &Reader{r: r} }

// Offset is the number of archive bytes consumed so far. After Next returns a
// regular file it is the offset of that file's contents; after Next returns
// io.EOF it is the length of the whole archive.
func (r *Reader) Offset() int64 { return r.off }

// Next advances to the next node and returns its header. Any unread contents of
// the current file are skipped. At the end of the archive it returns io.EOF,
// having read nothing past the root node's closing token.
func (r *Reader) Next() (*Header, error) {
	if r.err != nil {
		return nil, r.err
	}
	h, err := r.next()
	if err != nil {
		if err != io.EOF {
			r.err = err
		}
		return nil, err
	}
	return h, nil
}

func (r *Reader) next() (*Header, error) {
	if r.done {
		return nil, io.EOF
	}
	if !r.started {
		r.started = true
		if err := r.expect(Magic); err != nil {
			return nil, err
		}
		return r.node("")
	}
	if r.inFile {
		if err := r.finishFile(); err != nil {
			return nil, err
		}
	}
	for {
		if r.done {
			return nil, io.EOF
		}
		top := &r.dirs[len(r.dirs)-1]
		at := r.off
		tok, err := r.keyword()
		if err != nil {
			return nil, err
		}
		switch string(tok) {
		case ")":
			r.dirs = r.dirs[:len(r.dirs)-1]
			if err := r.closeNode(); err != nil {
				return nil, err
			}
		case "entry":
			if err := r.expect("("); err != nil {
				return nil, err
			}
			if err := r.expect("name"); err != nil {
				return nil, err
			}
			at = r.off
			name, err := r.bytes(MaxNameLen, "entry name")
			if err != nil {
				return nil, err
			}
			if err := checkName(name); err != nil {
				return nil, r.formatErr(at, "%v in directory %q", err, top.path)
			}
			if top.prev != "" && string(name) <= top.prev {
				if string(name) == top.prev {
					return nil, r.formatErr(at, "duplicate entry %q in directory %q", name, top.path)
				}
				return nil, r.formatErr(at, "entry %q after %q in directory %q is out of order", name, top.prev, top.path)
			}
			var p string
			if top.path == "" {
				p = string(name)
			} else {
				p = top.path + "/" + string(name)
			}
			top.prev = p[len(p)-len(name):]
			if err := r.expect("node"); err != nil {
				return nil, err
			}
			return r.node(p)
		default:
			return nil, r.formatErr(at, "expected \"entry\" or \")\" in directory %q, got %q", top.path, tok)
		}
	}
}

// node reads a node's opening up to its contents (regular file), its end
// (symlink) or its first entry (directory).
func (r *Reader) node(p string) (*Header, error) {
	if err := r.expect("("); err != nil {
		return nil, err
	}
	if err := r.expect("type"); err != nil {
		return nil, err
	}
	at := r.off
	tok, err := r.keyword()
	if err != nil {
		return nil, err
	}
	switch string(tok) {
	case "regular":
		h := &Header{Path: p, Type: TypeRegular}
		at = r.off
		tok, err := r.keyword()
		if err != nil {
			return nil, err
		}
		if string(tok) == "executable" {
			h.Executable = true
			if err := r.expect(""); err != nil {
				return nil, err
			}
			at = r.off
			if tok, err = r.keyword(); err != nil {
				return nil, err
			}
		}
		if string(tok) != "contents" {
			return nil, r.formatErr(at, "expected \"contents\" for file %q, got %q", p, tok)
		}
		at = r.off
		size, err := r.u64()
		if err != nil {
			return nil, err
		}
		if size > math.MaxInt64 {
			return nil, r.formatErr(at, "file %q: size %d too large", p, size)
		}
		h.Size = int64(size)
		r.inFile, r.left, r.padding = true, h.Size, pad(size)
		return h, nil
	case "symlink":
		if err := r.expect("target"); err != nil {
			return nil, err
		}
		at = r.off
		target, err := r.bytes(MaxTargetLen, "symlink target")
		if err != nil {
			return nil, err
		}
		if len(target) == 0 {
			return nil, r.formatErr(at, "symlink %q has an empty target", p)
		}
		if i := strings.IndexByte(string(target), 0); i >= 0 {
			return nil, r.formatErr(at, "symlink %q target contains NUL", p)
		}
		h := &Header{Path: p, Type: TypeSymlink, LinkTarget: string(target)}
		if err := r.expect(")"); err != nil {
			return nil, err
		}
		if err := r.closeNode(); err != nil {
			return nil, err
		}
		return h, nil
	case "directory":
		if len(r.dirs) >= MaxDepth {
			return nil, r.formatErr(at, "directory %q nests deeper than %d", p, MaxDepth)
		}
		r.dirs = append(r.dirs, dirFrame{path: p})
		return &Header{Path: p, Type: TypeDirectory}, nil
	default:
		return nil, r.formatErr(at, "unknown node type %q for %q", tok, p)
	}
}

// closeNode is called after a node's ")" was read: it reads the ")" that ends
// the enclosing entry, or marks the archive done if the node was the root.
func (r *Reader) closeNode() error {
	if len(r.dirs) == 0 {
		r.done = true
		return nil
	}
	return r.expect(")")
}

// finishFile skips unread contents, checks the padding and closes the node.
func (r *Reader) finishFile() error {
	if r.left > 0 {
		n, err := io.CopyN(io.Discard, r.r, r.left)
		r.off += n
		r.left -= n
		if err != nil {
			return r.ioErr(err)
		}
	}
	r.inFile = false
	if err := r.checkPadding(int(r.padding)); err != nil {
		return err
	}
	if err := r.expect(")"); err != nil {
		return err
	}
	return r.closeNode()
}

// Read reads from the contents of the current regular file. It returns io.EOF at
// the end of the contents, or at once if the current node is not a regular file.
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if !r.inFile || r.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.r.Read(p)
	r.off += int64(n)
	r.left -= int64(n)
	if err == io.EOF {
		if r.left == 0 {
			err = nil
		} else {
			err = io.ErrUnexpectedEOF
		}
	}
	if err != nil {
		r.err = &Error{Offset: r.off, Err: err}
		return n, r.err
	}
	return n, nil
}

// expect reads one token that must equal want. A wrong length is refused before
// anything more is read.
func (r *Reader) expect(want string) error {
	at := r.off
	n, err := r.u64()
	if err != nil {
		return err
	}
	if n != uint64(len(want)) {
		return r.formatErr(at, "expected %q, got a token of %d bytes", want, n)
	}
	b, err := r.padded(int(n))
	if err != nil {
		return err
	}
	if string(b) != want {
		return r.formatErr(at, "expected %q, got %q", want, b)
	}
	return nil
}

// keyword reads a short token; the result is valid until the next read.
func (r *Reader) keyword() ([]byte, error) {
	at := r.off
	n, err := r.u64()
	if err != nil {
		return nil, err
	}
	if n > maxKeywordLen {
		return nil, r.formatErr(at, "unexpected token of %d bytes", n)
	}
	return r.padded(int(n))
}

// bytes reads a string of at most max bytes; the result is valid until the next read.
func (r *Reader) bytes(max int, what string) ([]byte, error) {
	at := r.off
	n, err := r.u64()
	if err != nil {
		return nil, err
	}
	if n > uint64(max) {
		return nil, r.formatErr(at, "%s of %d bytes exceeds the limit of %d", what, n, max)
	}
	return r.padded(int(n))
}

// padded reads n bytes and their padding into r.buf (n ≤ MaxTargetLen).
func (r *Reader) padded(n int) ([]byte, error) {
	total := n + int(pad(uint64(n)))
	if err := r.full(r.buf[:total]); err != nil {
		return nil, err
	}
	for i := n; i < total; i++ {
		if r.buf[i] != 0 {
			return nil, r.formatErr(r.off-int64(total-i), "non-zero padding")
		}
	}
	return r.buf[:n], nil
}

func (r *Reader) checkPadding(n int) error {
	if n == 0 {
		return nil
	}
	if err := r.full(r.buf[:n]); err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		if r.buf[i] != 0 {
			return r.formatErr(r.off-int64(n-i), "non-zero padding")
		}
	}
	return nil
}

func (r *Reader) u64() (uint64, error) {
	if err := r.full(r.buf[:8]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(r.buf[:8]), nil
}

func (r *Reader) full(p []byte) error {
	n, err := io.ReadFull(r.r, p)
	r.off += int64(n)
	if err != nil {
		return r.ioErr(err)
	}
	return nil
}

func (r *Reader) ioErr(err error) error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return &Error{Offset: r.off, Err: err}
}

func (r *Reader) formatErr(at int64, format string, args ...any) error {
	return &Error{Offset: at, Err: fmt.Errorf("%w: "+format, append([]any{ErrFormat}, args...)...)}
}

// checkName reports why name cannot be a directory entry.
func checkName[T string | []byte](name T) error {
	switch {
	case len(name) == 0:
		return errors.New("empty entry name")
	case len(name) > MaxNameLen:
		return fmt.Errorf("entry name of %d bytes exceeds the limit of %d", len(name), MaxNameLen)
	case string(name) == "." || string(name) == "..":
		return fmt.Errorf("invalid entry name %q", name)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c == '/' || c == 0 {
			return fmt.Errorf("invalid entry name %q", name)
		}
	}
	return nil
}

// pad is the number of zero bytes that follow n bytes.
func pad(n uint64) int64 { return int64((8 - n%8) % 8) }
