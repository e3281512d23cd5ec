package protocol

import (
	"bytes"
	"testing"

	"cairn/internal/nixhash"
	"cairn/internal/wire"
)

func BenchmarkReadPathInfo(b *testing.B) {
	info := &PathInfo{Path: mustPath(b, outStr), Deriver: mustPath(b, drvStr),
		NarHash: nixhash.Sum(nixhash.SHA256, []byte("x")), NarSize: 120, Signatures: []string{"k-1:abc"}}
	for range 10 {
		info.References = append(info.References, mustPath(b, outStr))
	}
	var one bytes.Buffer
	w := wire.NewWriter(&one)
	WritePathInfo(w, Params{Version: Nix28}, info)
	w.Flush()
	data := bytes.Repeat(one.Bytes(), 256)
	b.SetBytes(int64(one.Len()))
	b.ReportAllocs()
	src := bytes.NewReader(data)
	r := wire.NewReader(src)
	for i := 0; i < b.N; i++ {
		if i%256 == 0 {
			src.Reset(data)
			r = wire.NewReader(src)
		}
		if ReadPathInfo(r, Params{Version: Nix28}) == nil {
			b.Fatal(r.Err())
		}
	}
}
