package nixtest

import (
	"bytes"
	"encoding/binary"
)

// ExportStream is what nix-store --export writes for one path whose NAR is
// nar: fed to nix-store --import, it registers an input-addressed path with
// references and a deriver, which nix-store --add cannot make.
func ExportStream(nar []byte, path string, refs []string, deriver string) []byte {
	var b bytes.Buffer
	num := func(n uint64) { binary.Write(&b, binary.LittleEndian, n) }
	str := func(s string) {
		num(uint64(len(s)))
		b.WriteString(s)
		b.Write(make([]byte, (8-len(s)%8)%8))
	}
	num(1) // a path follows
	b.Write(nar)
	num(0x4558494e) // export magic
	str(path)
	num(uint64(len(refs)))
	for _, r := range refs {
		str(r)
	}
	str(deriver)
	num(0) // no legacy signature
	num(0) // no more paths
	return b.Bytes()
}
