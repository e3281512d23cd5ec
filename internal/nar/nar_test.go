package nar

import (
	"bytes"
	"errors"
	"io"
	"math"
	"runtime"
	"slices"
	"strings"
	"testing"
)

func TestReaderHeaders(t *testing.T) {
	data := sample(t)
	r := NewReader(bytes.NewReader(data))
	type got struct {
		Header
		data string
	}
	var all []got
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, got{*h, string(b)})
	}
	want := []got{
		{Header{Path: "", Type: TypeDirectory}, ""},
		{Header{Path: "a", Type: TypeRegular, Size: 5}, "hello"},
		{Header{Path: "d", Type: TypeDirectory}, ""},
		{Header{Path: "d/run", Type: TypeRegular, Size: 18, Executable: true}, "#!/bin/sh\necho hi\n"},
		{Header{Path: "d/z", Type: TypeRegular}, ""},
		{Header{Path: "e", Type: TypeDirectory}, ""},
		{Header{Path: "l", Type: TypeSymlink, LinkTarget: "d/run"}, ""},
		{Header{Path: "m", Type: TypeRegular, Size: 8}, "12345678"},
	}
	if len(all) != len(want) {
		t.Fatalf("got %d headers, want %d: %+v", len(all), len(want), all)
	}
	for i := range want {
		if all[i] != want[i] {
			t.Errorf("header %d: got %+v, want %+v", i, all[i], want[i])
		}
	}
	if r.Offset() != int64(len(data)) {
		t.Errorf("Offset() = %d, want %d", r.Offset(), len(data))
	}
	if _, err := r.Next(); err != io.EOF {
		t.Errorf("Next after the end: %v, want io.EOF", err)
	}
}

// A flat file ingested as a NAR: Nix's own example is 120 bytes for 6 bytes of data.
func TestSingleFileEncoding(t *testing.T) {
	got := writeNAR(t, file("", "abcdef"))
	var want tokens
	want.s(Magic, "(", "type", "regular", "contents", "abcdef", ")")
	if !bytes.Equal(got, want.Bytes()) || len(got) != 120 {
		t.Fatalf("got %d bytes %q, want 120 bytes %q", len(got), got, want.Bytes())
	}
}

func TestRoundTrip(t *testing.T) {
	for name, data := range map[string][]byte{
		"sample":  sample(t),
		"file":    writeNAR(t, file("", "x")),
		"exe":     writeNAR(t, exe("", "")),
		"symlink": writeNAR(t, symlink("", "/nix/store/x")),
		"empty":   writeNAR(t, dir("")),
		"deep":    deepNAR(MaxDepth),
	} {
		t.Run(name, func(t *testing.T) {
			got, n, err := readAll(data)
			if err != nil {
				t.Fatal(err)
			}
			if n != int64(len(data)) || !bytes.Equal(got, data) {
				t.Fatalf("re-encoding differs: %s", firstDiff(got, data))
			}
		})
	}
}

// deepNAR nests depth directories, with a file at the bottom.
func deepNAR(depth int) []byte {
	var b tokens
	b.s(Magic)
	for i := 0; i < depth; i++ {
		if i > 0 {
			b.s("entry", "(", "name", "d", "node")
		}
		b.s("(", "type", "directory")
	}
	b.s("entry", "(", "name", "f", "node", "(", "type", "regular", "contents", "", ")", ")")
	for i := 0; i < depth; i++ {
		b.s(")")
		if i < depth-1 {
			b.s(")")
		}
	}
	return b.Bytes()
}

func TestHostile(t *testing.T) {
	valid := func(f func(b *tokens)) []byte {
		var b tokens
		f(&b)
		return b.Bytes()
	}
	regular := func(b *tokens) { b.s("(", "type", "regular", "contents", "x", ")") }
	for _, tc := range []struct {
		name string
		data []byte
		want error // ErrFormat or io.ErrUnexpectedEOF
	}{
		{"empty input", nil, io.ErrUnexpectedEOF},
		{"bad magic", valid(func(b *tokens) { b.s("nix-archive-2"); regular(b) }), ErrFormat},
		{"huge magic length", valid(func(b *tokens) { b.u64(math.MaxUint64) }), ErrFormat},
		{"dot-dot", entryNAR(".."), ErrFormat},
		{"dot", entryNAR("."), ErrFormat},
		{"slash", entryNAR("a/b"), ErrFormat},
		{"only slash", entryNAR("/"), ErrFormat},
		{"NUL", entryNAR("a\x00b"), ErrFormat},
		{"empty name", entryNAR(""), ErrFormat},
		{"unsorted", entryNAR("b", "a"), ErrFormat},
		{"unsorted bytewise (upper after lower)", entryNAR("a", "B"), ErrFormat},
		{"duplicate", entryNAR("a", "a"), ErrFormat},
		{"name too long", entryNAR(strings.Repeat("n", MaxNameLen+1)), ErrFormat},
		{"1 GB name", valid(func(b *tokens) {
			b.s(Magic, "(", "type", "directory", "entry", "(", "name").u64(1 << 30)
		}), ErrFormat},
		{"symlink then directory of the same name", valid(func(b *tokens) {
			b.s(Magic, "(", "type", "directory")
			b.s("entry", "(", "name", "a", "node", "(", "type", "symlink", "target", "/tmp", ")", ")")
			b.s("entry", "(", "name", "a", "node", "(", "type", "directory")
			b.s("entry", "(", "name", "x", "node")
			regular(b)
			b.s(")", ")", ")", ")")
		}), ErrFormat},
		{"symlink then file through it", valid(func(b *tokens) {
			b.s(Magic, "(", "type", "directory")
			b.s("entry", "(", "name", "a", "node", "(", "type", "symlink", "target", "/tmp", ")", ")")
			b.s("entry", "(", "name", "a/x", "node")
			regular(b)
			b.s(")", ")")
		}), ErrFormat},
		{"non-zero token padding", valid(func(b *tokens) {
			b.s(Magic).u64(1).raw([]byte("(\x00\x00\x00\x00\x00\x00\x01"))
		}), ErrFormat},
		{"non-zero contents padding", valid(func(b *tokens) {
			b.s(Magic, "(", "type", "regular", "contents").u64(3).raw([]byte("abc\x00\x00\x00\x00\x01")).s(")")
		}), ErrFormat},
		{"excessive depth", deepNAR(MaxDepth + 1), ErrFormat},
		{"2^62-byte file", valid(func(b *tokens) {
			b.s(Magic, "(", "type", "regular", "contents").u64(1 << 62).raw([]byte("short"))
		}), io.ErrUnexpectedEOF},
		{"size over int64", valid(func(b *tokens) {
			b.s(Magic, "(", "type", "regular", "contents").u64(1 << 63)
		}), ErrFormat},
		{"unknown type", valid(func(b *tokens) { b.s(Magic, "(", "type", "fifo", ")") }), ErrFormat},
		{"unknown field", valid(func(b *tokens) { b.s(Magic, "(", "type", "regular", "mtime", "1", "contents", "", ")") }), ErrFormat},
		{"missing type", valid(func(b *tokens) { b.s(Magic, "(", "contents", "", ")") }), ErrFormat},
		{"two types", valid(func(b *tokens) { b.s(Magic, "(", "type", "regular", "type", "regular", "contents", "", ")") }), ErrFormat},
		{"executable with a value", valid(func(b *tokens) { b.s(Magic, "(", "type", "regular", "executable", "1", "contents", "", ")") }), ErrFormat},
		{"executable after contents", valid(func(b *tokens) { b.s(Magic, "(", "type", "regular", "contents", "", "executable", "", ")") }), ErrFormat},
		{"executable symlink", valid(func(b *tokens) { b.s(Magic, "(", "type", "symlink", "executable", "", "target", "x", ")") }), ErrFormat},
		{"regular without contents", valid(func(b *tokens) { b.s(Magic, "(", "type", "regular", ")") }), ErrFormat},
		{"empty target", valid(func(b *tokens) { b.s(Magic, "(", "type", "symlink", "target", "", ")") }), ErrFormat},
		{"target with NUL", valid(func(b *tokens) { b.s(Magic, "(", "type", "symlink", "target", "a\x00b", ")") }), ErrFormat},
		{"target too long", valid(func(b *tokens) {
			b.s(Magic, "(", "type", "symlink", "target", strings.Repeat("t", MaxTargetLen+1), ")")
		}), ErrFormat},
		{"entry without node", valid(func(b *tokens) { b.s(Magic, "(", "type", "directory", "entry", "(", "name", "a", ")", ")") }), ErrFormat},
		{"entry without name", valid(func(b *tokens) {
			b.s(Magic, "(", "type", "directory", "entry", "(", "node")
			regular(b)
			b.s(")", ")")
		}), ErrFormat},
		{"entry not closed", valid(func(b *tokens) {
			b.s(Magic, "(", "type", "directory", "entry", "(", "name", "a", "node")
			regular(b)
			b.s("entry")
		}), ErrFormat},
		{"entries in a file", valid(func(b *tokens) { b.s(Magic, "(", "type", "regular", "contents", "", "entry", ")") }), ErrFormat},
		{"unclosed root", valid(func(b *tokens) { b.s(Magic, "(", "type", "directory") }), io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, _, err := readAll(tc.data)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want an error wrapping %v", err, tc.want)
			}
			var e *Error
			if !errors.As(err, &e) || !strings.Contains(err.Error(), "at byte") {
				t.Errorf("error %q does not say where", err)
			}
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 8<<20 {
				t.Errorf("parsing allocated %d bytes", grew)
			}
		})
	}
}

func TestErrorOffset(t *testing.T) {
	data := entryNAR("b", "a")
	_, _, err := readAll(data)
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("got %v", err)
	}
	// The offending name token starts where "a" is first found after "name".
	want := bytes.LastIndex(data, []byte("name")) + 8
	if e.Offset != int64(want) {
		t.Errorf("offset %d, want %d (%v)", e.Offset, want, err)
	}
}

func TestTruncated(t *testing.T) {
	data := sample(t)
	for n := 0; n < len(data); n++ {
		_, _, err := readAll(data[:n])
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("prefix of %d bytes: got %v, want unexpected EOF", n, err)
		}
	}
}

// The Reader stops at the root's closing token: trailing bytes stay unread in
// the underlying reader, whatever the root's type.
func TestTrailingData(t *testing.T) {
	for name, data := range map[string][]byte{
		"directory": sample(t),
		"file":      writeNAR(t, file("", "abc")),
		"symlink":   writeNAR(t, symlink("", "abc")),
	} {
		t.Run(name, func(t *testing.T) {
			src := bytes.NewReader(append(append([]byte{}, data...), "trailing garbage"...))
			r := NewReader(src)
			for {
				_, err := r.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			if r.Offset() != int64(len(data)) || src.Len() != len("trailing garbage") {
				t.Fatalf("offset %d (want %d), %d bytes left (want %d)", r.Offset(), len(data), src.Len(), len("trailing garbage"))
			}
		})
	}
}

func TestStickyError(t *testing.T) {
	r := NewReader(bytes.NewReader(entryNAR("b", "a")))
	var first error
	for first == nil {
		_, first = r.Next()
	}
	if _, err := r.Next(); err != first {
		t.Errorf("second Next: %v, want %v", err, first)
	}
	if _, err := r.Read(make([]byte, 1)); err != first {
		t.Errorf("Read: %v, want %v", err, first)
	}
}

func TestReadSkipsUnreadContents(t *testing.T) {
	data := sample(t)
	r := NewReader(bytes.NewReader(data))
	var paths []string
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Path == "d/run" { // read part of one file
			var b [3]byte
			if _, err := io.ReadFull(r, b[:]); err != nil || string(b[:]) != "#!/" {
				t.Fatalf("read %q, %v", b, err)
			}
		}
		paths = append(paths, h.Path)
	}
	if got := strings.Join(paths, ","); got != ",a,d,d/run,d/z,e,l,m" {
		t.Errorf("paths %q", got)
	}
}

func TestWriterMisuse(t *testing.T) {
	for _, tc := range []struct {
		name  string
		nodes []node
		extra string // written after the last header
	}{
		{"first not root", []node{file("a", "")}, ""},
		{"two roots", []node{file("", ""), file("", "")}, ""},
		{"child of a file root", []node{file("", ""), file("a", "")}, ""},
		{"unsorted", []node{dir(""), file("b", ""), file("a", "")}, ""},
		{"duplicate", []node{dir(""), file("a", ""), dir("a")}, ""},
		{"child of a closed dir", []node{dir(""), dir("a"), file("b", ""), file("a/c", "")}, ""},
		{"child of a file", []node{dir(""), file("a", ""), file("a/b", "")}, ""},
		{"dot-dot", []node{dir(""), file("..", "")}, ""},
		{"empty component", []node{dir(""), dir("a"), file("a//b", "")}, ""},
		{"trailing slash", []node{dir(""), dir("a/")}, ""},
		{"empty target", []node{symlink("", "")}, ""},
		{"too much data", []node{file("", "ab")}, "c"},
		{"data for a dir", []node{dir("")}, "c"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := NewWriter(io.Discard)
			var err error
			for _, n := range tc.nodes {
				h := n.Header
				if err = w.WriteHeader(&h); err != nil {
					break
				}
				if _, err = io.WriteString(w, n.data); err != nil {
					break
				}
			}
			if err == nil && tc.extra != "" {
				_, err = io.WriteString(w, tc.extra)
			}
			if err == nil {
				err = w.Close()
			}
			if err == nil {
				t.Fatal("no error")
			}
		})
	}
	t.Run("short contents", func(t *testing.T) {
		w := NewWriter(io.Discard)
		if err := w.WriteHeader(&Header{Type: TypeRegular, Size: 5}); err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, "abc")
		if err := w.Close(); err == nil {
			t.Fatal("Close accepted a short file")
		}
	})
}

func TestWriterReadFrom(t *testing.T) {
	var a, b bytes.Buffer
	for _, buf := range []*bytes.Buffer{&a, &b} {
		w := NewWriter(buf)
		w.WriteHeader(&Header{Type: TypeRegular, Size: 11})
		var err error
		if buf == &a {
			_, err = w.ReadFrom(strings.NewReader("hello world"))
		} else {
			_, err = w.Write([]byte("hello world"))
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("ReadFrom and Write differ")
	}
	w := NewWriter(io.Discard)
	w.WriteHeader(&Header{Type: TypeRegular, Size: 2})
	if _, err := w.ReadFrom(strings.NewReader("abc")); !errors.Is(err, ErrWriteTooLong) {
		t.Fatalf("ReadFrom of too much: %v", err)
	}
}

func TestCopy(t *testing.T) {
	data := sample(t)
	src := bytes.NewReader(append(append([]byte{}, data...), "next message"...))
	var dst bytes.Buffer
	n, err := Copy(&dst, src)
	if err != nil || n != int64(len(data)) || !bytes.Equal(dst.Bytes(), data) || src.Len() != len("next message") {
		t.Fatalf("Copy: n=%d err=%v, copied %d bytes, %d left", n, err, dst.Len(), src.Len())
	}
	if _, err := Copy(io.Discard, bytes.NewReader(entryNAR("b", "a"))); !errors.Is(err, ErrFormat) {
		t.Fatalf("Copy of a bad archive: %v", err)
	}
}

// recordWriter keeps each Write's length.
type recordWriter struct {
	bytes.Buffer
	writes []int
}

func (r *recordWriter) Write(p []byte) (int, error) {
	r.writes = append(r.writes, len(p))
	return r.Buffer.Write(p)
}

// A direct Writer writes the same archive, handing large contents over as they are.
func TestWriterDirect(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 300) // 4800 bytes
	for _, tc := range []struct {
		name   string
		writes [][]byte // one file per element
	}{
		{"small", [][]byte{[]byte("a"), []byte("hello world"), {}}},
		{"at the threshold", [][]byte{big[:directMin-1], big[:directMin], big[:directMin+1]}},
		{"large", [][]byte{big, []byte("x"), big}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var plain bytes.Buffer
			var direct recordWriter
			for _, nw := range []*Writer{NewWriter(&plain), NewWriterDirect(&direct)} {
				must(t, nw.WriteHeader(&Header{Type: TypeDirectory}))
				for i, data := range tc.writes {
					must(t, nw.WriteHeader(&Header{Path: string(rune('a' + i)), Type: TypeRegular, Size: int64(len(data))}))
					if _, err := nw.Write(data); err != nil {
						t.Fatal(err)
					}
				}
				must(t, nw.Close())
			}
			if !bytes.Equal(plain.Bytes(), direct.Bytes()) {
				t.Fatalf("direct Writer's archive differs (%d vs %d bytes)", direct.Len(), plain.Len())
			}
			for _, data := range tc.writes {
				if len(data) >= directMin && !slices.Contains(direct.writes, len(data)) {
					t.Errorf("contents of %d bytes not written as they are; writes %v", len(data), direct.writes)
				}
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
