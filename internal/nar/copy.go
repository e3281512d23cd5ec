package nar

import (
	"bufio"
	"io"
)

// Copy copies exactly one NAR from src to dst, checking it as it goes, and
// returns its length. It reads nothing from src past the archive's end, which
// suits a NAR embedded in a protocol stream. On a malformed archive, dst may
// already hold a prefix of it.
func Copy(dst io.Writer, src io.Reader) (int64, error) {
	bw := bufio.NewWriterSize(dst, writeBufferSize)
	r := NewReader(io.TeeReader(src, bw))
	for {
		_, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			bw.Flush()
			return r.Offset(), err
		}
	}
	return r.Offset(), bw.Flush()
}
