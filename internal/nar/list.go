package nar

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ListOptions are the flags of `nix nar ls`.
type ListOptions struct {
	Recursive bool // -R: list subdirectories recursively
	Long      bool // -l: type, size and symlink target
	Directory bool // -d: show a directory itself rather than its contents
}

// ErrNotFound is wrapped when the listed path is not in the archive.
var ErrNotFound = errors.New("path not in nar")

// notFound carries Nix's exact message for a missing path.
type notFound struct{ msg string }

func (e *notFound) Error() string { return e.msg }
func (e *notFound) Unwrap() error { return ErrNotFound }

// ListText writes what `nix nar ls [-R] [-l] [-d] NAR PATH` prints for the NAR
// read from r. path is "/" or "" for the root, else absolute ("/a/b"); as in Nix
// 2.8, it is matched literally ("/a/" and "/a/." do not exist). Output appears
// only once the whole archive has been read and checked.
func ListText(w io.Writer, r io.Reader, path string, opts ListOptions) error {
	var out bytes.Buffer
	line := func(h *Header, rel string) {
		if opts.Long {
			tp := "dr-xr-xr-x"
			switch {
			case h.Type == TypeRegular && h.Executable:
				tp = "-r-xr-xr-x"
			case h.Type == TypeRegular:
				tp = "-r--r--r--"
			case h.Type == TypeSymlink:
				tp = "lrwxrwxrwx"
			}
			fmt.Fprintf(&out, "%s %20d %s", tp, h.Size, rel)
			if h.Type == TypeSymlink {
				out.WriteString(" -> " + h.LinkTarget)
			}
		} else {
			out.WriteString(rel)
		}
		out.WriteByte('\n')
	}
	var target Header
	err := walkSubtree(r, path, func(h *Header, rel string, depth int, _ int64) {
		if depth == 0 {
			target = *h
			switch {
			case h.Type != TypeDirectory:
				line(h, baseName(path))
			case opts.Directory:
				line(h, ".")
			}
			return
		}
		if target.Type != TypeDirectory {
			return
		}
		if depth == 1 && (!opts.Directory || opts.Recursive) || depth > 1 && opts.Recursive {
			line(h, "./"+rel)
		}
	})
	if err == errMissing {
		return &notFound{fmt.Sprintf("path '%s' does not exist", lsPath(path))}
	}
	if err != nil {
		return err
	}
	_, err = w.Write(out.Bytes())
	return err
}

// ListJSON writes what `nix nar ls --json [-R] NAR PATH` prints (no trailing
// newline). Like Nix, for a missing path it writes "{}" before failing.
func ListJSON(w io.Writer, r io.Reader, path string, recursive bool) error {
	var out bytes.Buffer
	// open holds, per open directory object, whether it has an entry yet.
	var open []bool
	obj := func(h *Header, narOffset int64) {
		switch h.Type {
		case TypeRegular:
			out.WriteString(`{"type":"regular","size":`)
			out.WriteString(strconv.FormatInt(h.Size, 10))
			if h.Executable {
				out.WriteString(`,"executable":true`)
			}
			if narOffset != 0 {
				out.WriteString(`,"narOffset":`)
				out.WriteString(strconv.FormatInt(narOffset, 10))
			}
			out.WriteByte('}')
		case TypeSymlink:
			out.WriteString(`{"type":"symlink","target":`)
			writeJSONString(&out, h.LinkTarget)
			out.WriteByte('}')
		case TypeDirectory:
			out.WriteString(`{"type":"directory","entries":{`)
			open = append(open, false)
		}
	}
	err := walkSubtree(r, path, func(h *Header, rel string, depth int, narOffset int64) {
		if depth > 1 && !recursive {
			return
		}
		for len(open) > depth {
			out.WriteString("}}")
			open = open[:len(open)-1]
		}
		if depth > 0 {
			if open[depth-1] {
				out.WriteByte(',')
			}
			open[depth-1] = true
			writeJSONString(&out, rel[strings.LastIndexByte(rel, '/')+1:])
			out.WriteByte(':')
			if !recursive {
				out.WriteString("{}")
				return
			}
		}
		obj(h, narOffset)
	})
	if err == errMissing {
		io.WriteString(w, "{}")
		return &notFound{fmt.Sprintf("path '%s' does not exist in NAR", lsPath(path))}
	}
	if err != nil {
		return err
	}
	for range open {
		out.WriteString("}}")
	}
	_, err = w.Write(out.Bytes())
	return err
}

var errMissing = errors.New("missing")

// walkSubtree reads the whole archive and calls fn, in archive order, for the
// node at path (depth 0, rel "") and every node below it (rel relative to it).
// It returns errMissing if path is not in the archive.
func walkSubtree(r io.Reader, path string, fn func(h *Header, rel string, depth int, narOffset int64)) error {
	p := lsPath(path)
	if p != "" && !strings.HasPrefix(p, "/") {
		return fmt.Errorf("not an absolute path: '%s'", p)
	}
	if p != "" {
		p = p[1:]
	}
	nr := NewReader(r)
	found := false
	for {
		h, err := nr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("list nar: %w", err)
		}
		var rel string
		switch {
		case h.Path == p:
		case p == "":
			rel = h.Path
		case strings.HasPrefix(h.Path, p) && len(h.Path) > len(p) && h.Path[len(p)] == '/':
			rel = h.Path[len(p)+1:]
		default:
			continue
		}
		found = true
		depth := 0
		if h.Path != p {
			depth = strings.Count(rel, "/") + 1
		}
		fn(h, rel, depth, nr.Offset())
	}
	if !found {
		return errMissing
	}
	return nil
}

// lsPath is Nix's reading of the path argument: "/" means the root, "".
func lsPath(path string) string {
	if path == "/" {
		return ""
	}
	return path
}

// baseName is Nix's baseNameOf: the part after the last "/" (ignoring one trailing "/").
func baseName(path string) string {
	path = lsPath(path)
	if path == "" {
		return ""
	}
	last := len(path)
	if path[last-1] == '/' {
		last--
	}
	i := strings.LastIndexByte(path[:last], '/')
	return path[i+1 : last]
}

// writeJSONString quotes s as Nix 2.8's JSON writer does: only '"', '\\' and
// control characters are escaped; other bytes, including invalid UTF-8, pass
// through unchanged.
func writeJSONString(b *bytes.Buffer, s string) {
	const hex = "0123456789abcdef"
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\r':
			b.WriteString(`\r`)
		case c == '\t':
			b.WriteString(`\t`)
		case c < 0x20:
			b.WriteString(`\u00`)
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&0xf])
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
}
