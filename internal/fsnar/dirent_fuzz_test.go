package fsnar

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// direntRecord is one struct linux_dirent64 as getdents64 writes it.
func direntRecord(name string, typ uint8) []byte {
	reclen := (19 + len(name) + 1 + 7) &^ 7
	b := make([]byte, reclen)
	binary.NativeEndian.PutUint64(b[0:], 42)
	binary.NativeEndian.PutUint16(b[16:], uint16(reclen))
	b[18] = typ
	copy(b[19:], name)
	return b
}

// FuzzParseDirents: whatever a getdents64 buffer holds, parsing it never
// reads outside it, and every name it gives is non-empty, NUL-free and
// neither "." nor "..".
func FuzzParseDirents(f *testing.F) {
	f.Add(append(append(direntRecord(".", 4), direntRecord("..", 4)...), direntRecord("file", 8)...))
	f.Add(direntRecord("a-rather-long-name-for-a-file.txt", 8))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		parseDirents(b, func(name []byte, typ uint8) {
			if len(name) == 0 || string(name) == "." || string(name) == ".." || bytes.IndexByte(name, 0) >= 0 {
				t.Fatalf("entry %q", name)
			}
		})
	})
}
