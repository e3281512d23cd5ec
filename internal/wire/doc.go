// Package wire reads and writes the primitive encoding of the Nix daemon and
// serve protocols and of export streams.
//
// Grammar (all integers little-endian):
//
//	u64        = 8 bytes
//	bool       = u64 (0 or 1; any non-zero value reads as true)
//	bytes      = u64 len, len bytes, zero padding to a multiple of 8
//	string     = bytes
//	strings    = u64 count, count × string          (lists and sets alike)
//	map        = u64 count, count × (key, value)
//	storePath  = string holding the full path "/nix/store/<hash>-<name>"
//	optPath    = string; "" means none
//	framed     = { u64 len (> 0), len raw bytes (no padding) } u64 0
//
// Every length read from the peer is checked against a named limit (MaxPathLen,
// MaxStringLen, MaxTextLen, MaxListCount, MaxFrameSize …) before anything is
// allocated, and non-zero padding is an error.
//
// Reader and Writer wrap a bufio buffer and keep the first error: after a
// failure every later call does nothing and Err reports the failure, so a codec
// may read or write a whole message and check Err once. The hot path (u64s and
// short strings read with Bytes) does not allocate.
//
// FramedReader turns a framed stream into an io.Reader (Drain consumes the rest
// of it up to the terminator, so a failed operation still swallows its upload);
// FramedWriter produces one.
package wire
