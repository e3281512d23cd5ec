package nar

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// FuzzReader parses arbitrary input. Whatever the Reader accepts must re-encode
// through the Writer to exactly the bytes it consumed: a NAR has one encoding.
func FuzzReader(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*.nar")
	for _, s := range seeds {
		data, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add(sample(f))
	f.Add(entryNAR("b", "a"))
	f.Add(entryNAR("a", "a"))
	f.Add(deepNAR(3))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, n, err := readAll(data)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error without an offset: %v", err)
			}
			if !errors.Is(err, ErrFormat) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("unexpected kind of error: %v", err)
			}
			return
		}
		if !bytes.Equal(got, data[:n]) {
			t.Fatalf("accepted input re-encodes differently %s", firstDiff(got, data[:n]))
		}
	})
}
