package substitute

import (
	"fmt"
	"io"

	"github.com/dsnet/compress/bzip2"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// MaxZstdWindow bounds the window a zstd stream may ask for (what its decoder
// holds in memory); Nix's zstd levels use at most 8 MiB.
const MaxZstdWindow = 128 << 20

// decompressor returns a streaming reader of r decompressed as compression
// (a narinfo's Compression) says, and a function releasing it.
func decompressor(compression string, r io.Reader) (io.Reader, func(), error) {
	switch compression {
	case "none", "":
		return r, func() {}, nil
	case "xz":
		cfg := xz.ReaderConfig{SingleStream: false}
		xr, err := cfg.NewReader(r)
		if err != nil {
			return nil, nil, fmt.Errorf("xz: %w", err)
		}
		return xr, func() {}, nil
	case "bzip2":
		br, err := bzip2.NewReader(r, nil)
		if err != nil {
			return nil, nil, fmt.Errorf("bzip2: %w", err)
		}
		return br, func() { br.Close() }, nil
	case "zstd":
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(MaxZstdWindow))
		if err != nil {
			return nil, nil, fmt.Errorf("zstd: %w", err)
		}
		return zr, zr.Close, nil
	}
	return nil, nil, fmt.Errorf("unsupported compression method '%s'", compression)
}

// Decompress writes to w what r holds compressed as compression (a
// narinfo's Compression) says.
func Decompress(compression string, r io.Reader, w io.Writer) error {
	dr, done, err := decompressor(compression, r)
	if err != nil {
		return err
	}
	defer done()
	_, err = io.Copy(w, dr)
	return err
}
