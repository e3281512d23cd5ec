package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"cairn/internal/storepath"
)

const testPath = "/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432"

func u64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

func str(s string) []byte {
	b := append(u64(uint64(len(s))), s...)
	return append(b, make([]byte, padLen(uint64(len(s))))...)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func TestRoundTrip(t *testing.T) {
	p, err := storepath.Parse(testPath)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w := NewWriter(&buf)
	w.Uint64(0x6e697863)
	w.Bool(true)
	w.String("")
	w.String("abc")
	w.String("12345678")
	w.Bytes([]byte("x"))
	w.Strings([]string{"a", "bb"})
	w.StringMap(map[string]string{"z": "1", "a": "2"})
	w.StorePath(p)
	w.OptStorePath(storepath.StorePath{})
	w.OptStorePath(p)
	w.StorePaths([]storepath.StorePath{p, p})
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	want := cat(u64(0x6e697863), u64(1), str(""), str("abc"), str("12345678"), str("x"),
		u64(2), str("a"), str("bb"), u64(2), str("a"), str("2"), str("z"), str("1"),
		str(testPath), str(""), str(testPath), u64(2), str(testPath), str(testPath))
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("encoding:\n got %x\nwant %x", buf.Bytes(), want)
	}

	r := NewReader(bytes.NewReader(want))
	if v := r.Uint64(); v != 0x6e697863 {
		t.Errorf("Uint64 = %x", v)
	}
	if !r.Bool() {
		t.Error("Bool = false")
	}
	for _, s := range []string{"", "abc", "12345678"} {
		if got := r.String(MaxStringLen); got != s {
			t.Errorf("String = %q, want %q", got, s)
		}
	}
	if got := string(r.Bytes(10)); got != "x" {
		t.Errorf("Bytes = %q", got)
	}
	if got := r.Strings(10); strings.Join(got, ",") != "a,bb" {
		t.Errorf("Strings = %q", got)
	}
	if got := r.StringMap(10); len(got) != 2 || got["a"] != "2" || got["z"] != "1" {
		t.Errorf("StringMap = %q", got)
	}
	if got := r.StorePath(); got != p {
		t.Errorf("StorePath = %v", got)
	}
	if got := r.OptStorePath(); !got.IsZero() {
		t.Errorf("OptStorePath = %v", got)
	}
	if got := r.OptStorePath(); got != p {
		t.Errorf("OptStorePath = %v", got)
	}
	if got := r.StorePaths(); len(got) != 2 || got[1] != p {
		t.Errorf("StorePaths = %v", got)
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	r.Uint64()
	if r.Err() != io.EOF {
		t.Errorf("at end: %v, want io.EOF", r.Err())
	}
}

func TestBadInput(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		read func(r *Reader)
		want error
	}{
		{"string too long", u64(11), func(r *Reader) { r.String(10) }, ErrTooLong},
		{"huge string", u64(1 << 62), func(r *Reader) { r.String(MaxTextLen) }, ErrTooLong},
		{"bytes too long", u64(MaxPathLen + 1), func(r *Reader) { r.StorePath() }, ErrTooLong},
		{"padding", cat(u64(1), []byte{'a', 0, 0, 1, 0, 0, 0, 0}), func(r *Reader) { r.String(10) }, ErrPadding},
		{"padding bytes", cat(u64(1), []byte{'a', 1, 0, 0, 0, 0, 0, 0}), func(r *Reader) { r.Bytes(10) }, ErrPadding},
		{"count", u64(MaxListCount + 1), func(r *Reader) { r.Strings(10) }, ErrTooLong},
		{"path count", u64(1 << 40), func(r *Reader) { r.StorePaths() }, ErrTooLong},
		{"dup key", cat(u64(2), str("a"), str("1"), str("a"), str("2")), func(r *Reader) { r.StringMap(10) }, ErrFormat},
		{"bad path", str("/nix/store/foo"), func(r *Reader) { r.StorePath() }, storepath.ErrInvalid},
		{"int", u64(300), func(r *Reader) { r.Int("x", 255) }, ErrTooLong},
		{"short u64", []byte{1, 2, 3}, func(r *Reader) { r.Uint64() }, io.ErrUnexpectedEOF},
		{"short string", cat(u64(5), []byte("ab")), func(r *Reader) { r.String(10) }, io.ErrUnexpectedEOF},
		{"no padding", cat(u64(5), []byte("abcde")), func(r *Reader) { r.String(10) }, io.ErrUnexpectedEOF},
		{"no length", nil, func(r *Reader) { r.String(10) }, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewReader(bytes.NewReader(tt.in))
			tt.read(r)
			if !errors.Is(r.Err(), tt.want) {
				t.Fatalf("err = %v, want %v", r.Err(), tt.want)
			}
			// Sticky: further reads keep the error and return zero values.
			if r.Uint64() != 0 || !errors.Is(r.Err(), tt.want) {
				t.Fatalf("error not sticky: %v", r.Err())
			}
		})
	}
}

func TestStoreDir(t *testing.T) {
	r := NewReader(bytes.NewReader(str(testPath)))
	r.StoreDir = "/gnu/store"
	r.StorePath()
	if r.Err() == nil {
		t.Fatal("path outside StoreDir accepted")
	}
}

// TestTruncated cuts a valid message at every offset: the reader must fail
// (never panic, never succeed).
func TestTruncated(t *testing.T) {
	msg := cat(u64(7), str("hello"), u64(2), str(testPath), str(testPath), u64(1), str("k"), str("v"))
	read := func(r *Reader) {
		r.Uint64()
		r.String(100)
		r.StorePaths()
		r.StringMap(100)
	}
	for i := range len(msg) {
		r := NewReader(bytes.NewReader(msg[:i]))
		read(r)
		if r.Err() == nil {
			t.Fatalf("truncated at %d: no error", i)
		}
	}
	r := NewReader(iotest.OneByteReader(bytes.NewReader(msg)))
	read(r)
	if r.Err() != nil {
		t.Fatal(r.Err())
	}
}

func TestFramed(t *testing.T) {
	payload := bytes.Repeat([]byte("0123456789abcdef"), 5000) // 80000 bytes: several frames
	for _, chunk := range []int{1, 7, 4096, len(payload)} {
		var buf bytes.Buffer
		w := NewWriter(&buf)
		fw := NewFramedWriter(w)
		for p := payload; len(p) > 0; {
			n := min(chunk, len(p))
			if _, err := fw.Write(p[:n]); err != nil {
				t.Fatal(err)
			}
			p = p[n:]
		}
		if err := fw.Close(); err != nil {
			t.Fatal(err)
		}
		w.String("after")
		w.Flush()

		r := NewReader(&buf)
		got, err := io.ReadAll(NewFramedReader(r))
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("chunk %d: %d bytes, %v", chunk, len(got), err)
		}
		if s := r.String(10); s != "after" || r.Err() != nil {
			t.Fatalf("after stream: %q %v", s, r.Err())
		}
	}
}

func TestFramedDrain(t *testing.T) {
	in := cat(u64(3), []byte("abc"), u64(2), []byte("de"), u64(0), str("next"))
	r := NewReader(bytes.NewReader(in))
	f := NewFramedReader(r)
	b := make([]byte, 2)
	if n, err := f.Read(b); n != 2 || err != nil {
		t.Fatal(n, err)
	}
	if err := f.Drain(); err != nil {
		t.Fatal(err)
	}
	if s := r.String(10); s != "next" {
		t.Fatalf("after drain: %q %v", s, r.Err())
	}
	// Truncated at every offset: an error, not io.EOF.
	for i := range len(in) - len(str("next")) {
		f := NewFramedReader(NewReader(bytes.NewReader(in[:i])))
		if err := f.Drain(); err == nil {
			t.Fatalf("truncated at %d: no error", i)
		}
	}
	// A frame past the limit fails before reading it.
	f = NewFramedReader(NewReader(bytes.NewReader(u64(MaxFrameSize + 1))))
	if err := f.Drain(); !errors.Is(err, ErrTooLong) {
		t.Fatalf("oversized frame: %v", err)
	}
}

func FuzzReader(f *testing.F) {
	f.Add(cat(u64(7), str("hello"), u64(1), str(testPath), u64(1), str("k"), str("v"), u64(3), []byte("abc"), u64(0)))
	f.Add(cat(u64(0), u64(0), u64(0), u64(0)))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bytes.NewReader(data))
		a := r.Uint64()
		s := r.String(1000)
		ps := r.StorePaths()
		m := r.StringMap(1000)
		var payload []byte
		if r.Err() == nil {
			var err error
			payload, err = io.ReadAll(NewFramedReader(r))
			if err != nil {
				return
			}
		}
		if r.Err() != nil {
			return
		}
		// What decoded re-encodes to the same bytes (map order aside).
		var buf bytes.Buffer
		w := NewWriter(&buf)
		w.Uint64(a)
		w.String(s)
		w.StorePaths(ps)
		w.Flush()
		if !bytes.HasPrefix(data, buf.Bytes()) {
			t.Fatalf("re-encoding differs:\n got %x\n  in %x", buf.Bytes(), data)
		}
		_, _ = m, payload
	})
}

func BenchmarkUint64(b *testing.B) {
	data := bytes.Repeat(u64(12345), 4096)
	b.SetBytes(8)
	b.ReportAllocs()
	r := NewReader(bytes.NewReader(nil))
	src := bytes.NewReader(data)
	for i := 0; i < b.N; i++ {
		if i%4096 == 0 {
			src.Reset(data)
			r = &Reader{br: r.br}
			r.br.Reset(src)
		}
		r.Uint64()
	}
	if r.Err() != nil {
		b.Fatal(r.Err())
	}
}

func BenchmarkBytes(b *testing.B) { benchString(b, func(r *Reader) { r.Bytes(MaxPathLen) }) }

func BenchmarkString(b *testing.B) { benchString(b, func(r *Reader) { r.String(MaxPathLen) }) }

func BenchmarkStorePath(b *testing.B) { benchString(b, func(r *Reader) { r.StorePath() }) }

func benchString(b *testing.B, read func(*Reader)) {
	one := str(testPath)
	data := bytes.Repeat(one, 1024)
	b.SetBytes(int64(len(one)))
	b.ReportAllocs()
	r := NewReader(bytes.NewReader(nil))
	src := bytes.NewReader(data)
	for i := 0; i < b.N; i++ {
		if i%1024 == 0 {
			src.Reset(data)
			r.br.Reset(src)
		}
		read(r)
	}
	if r.Err() != nil {
		b.Fatal(r.Err())
	}
}

func BenchmarkWriteUint64String(b *testing.B) {
	w := NewWriter(io.Discard)
	b.SetBytes(8 + int64(len(str(testPath))))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		w.Uint64(uint64(i))
		w.String(testPath)
	}
	w.Flush()
}
