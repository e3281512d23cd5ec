// Package nixhash implements the hashes Nix uses and their text forms.
//
// Vocabulary:
//
//	algorithm   md5 | sha1 | sha256 | sha512
//	base16      lower-case hex                       e3b0c442…
//	nix32       nixbase32 (package nixbase32)        0mdqa9w1…
//	base64      standard base64 with padding         47DEQpj8…
//	SRI         algo "-" base64                      sha256-47DEQpj8…
//	prefixed    algo ":" (base16 | nix32 | base64)   sha256:0mdqa9w1…
//
// A digest's encoding is decided by its length, as Nix decides it. Content addresses
// (text:sha256:…, fixed:r:sha256:…, fixed:sha1:…) live in this package too, in ca.go.
package nixhash

import (
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strings"

	"cairn/internal/nixbase32"
)

// Algorithm is a hash algorithm Nix knows. The zero value is no algorithm.
type Algorithm uint8

// The algorithms, in Nix's order.
const (
	MD5 Algorithm = iota + 1
	SHA1
	SHA256
	SHA512
)

// MaxSize is the largest digest size of any algorithm.
const MaxSize = sha512.Size

// base64DecodeRoom fits the decoding of any base64 string as long as the longest digest's.
const base64DecodeRoom = (MaxSize + 2) / 3 * 3

var algorithms = [...]struct {
	name string
	size int
	new  func() hash.Hash
}{
	MD5:    {"md5", md5.Size, md5.New},
	SHA1:   {"sha1", sha1.Size, sha1.New},
	SHA256: {"sha256", sha256.Size, sha256.New},
	SHA512: {"sha512", sha512.Size, sha512.New},
}

// ErrInvalid is wrapped by every parse error of this package.
var ErrInvalid = errors.New("invalid hash")

// ParseAlgorithm parses an algorithm name such as "sha256".
func ParseAlgorithm(s string) (Algorithm, error) {
	for a := MD5; a <= SHA512; a++ {
		if algorithms[a].name == s {
			return a, nil
		}
	}
	return 0, fmt.Errorf("parse hash algorithm %q: %w: unknown algorithm", s, ErrInvalid)
}

func (a Algorithm) valid() bool { return a >= MD5 && a <= SHA512 }

// String returns the algorithm's name, as Nix spells it.
func (a Algorithm) String() string {
	if !a.valid() {
		return fmt.Sprintf("Algorithm(%d)", uint8(a))
	}
	return algorithms[a].name
}

// Size returns the digest size in bytes, or 0 for an invalid algorithm.
func (a Algorithm) Size() int {
	if !a.valid() {
		return 0
	}
	return algorithms[a].size
}

// New returns a new hash.Hash for the algorithm. It panics on an invalid algorithm,
// which only a programming error can produce: algorithms come from ParseAlgorithm or constants.
func (a Algorithm) New() hash.Hash {
	if !a.valid() {
		panic("nixhash: New of invalid algorithm")
	}
	return algorithms[a].new()
}

// Encoding is a text form of a digest.
type Encoding uint8

// The encodings Nix prints and parses.
const (
	Base16 Encoding = iota
	Nix32
	Base64
	SRI
)

// Hash is a digest together with its algorithm. It is a comparable value; the zero
// value is no hash.
type Hash struct {
	algo   Algorithm
	digest [MaxSize]byte
}

// New makes a Hash from a raw digest, which must have the algorithm's size.
func New(a Algorithm, digest []byte) (Hash, error) {
	if !a.valid() {
		return Hash{}, fmt.Errorf("new hash: %w: unknown algorithm", ErrInvalid)
	}
	if len(digest) != a.Size() {
		return Hash{}, fmt.Errorf("new %s hash: %w: digest has %d bytes, want %d", a, ErrInvalid, len(digest), a.Size())
	}
	h := Hash{algo: a}
	copy(h.digest[:], digest)
	return h, nil
}

// Sum returns the hash of data.
func Sum(a Algorithm, data []byte) Hash {
	h := NewHasher(a)
	h.Write(data)
	return h.Sum()
}

// Algorithm returns the hash's algorithm.
func (h Hash) Algorithm() Algorithm { return h.algo }

// Bytes returns a copy of the raw digest.
func (h Hash) Bytes() []byte { return append([]byte(nil), h.digest[:h.algo.Size()]...) }

// IsZero reports whether h is the zero Hash.
func (h Hash) IsZero() bool { return h.algo == 0 }

// Base16 returns the digest in lower-case hex, without the algorithm.
func (h Hash) Base16() string { return hex.EncodeToString(h.digest[:h.algo.Size()]) }

// Nix32 returns the digest in nixbase32, without the algorithm.
func (h Hash) Nix32() string { return nixbase32.EncodeToString(h.digest[:h.algo.Size()]) }

// Base64 returns the digest in standard base64, without the algorithm.
func (h Hash) Base64() string { return base64.StdEncoding.EncodeToString(h.digest[:h.algo.Size()]) }

// SRI returns the hash as a Subresource Integrity string, e.g. "sha256-47DEQ…=".
func (h Hash) SRI() string { return h.algo.String() + "-" + h.Base64() }

// String returns the hash as Nix prints it by default: "algo:" and nixbase32.
func (h Hash) String() string {
	if h.IsZero() {
		return ""
	}
	return h.Format(Nix32, true)
}

// Format returns the digest in encoding e, prefixed with "algo:" when withAlgo is set.
// SRI always carries the algorithm.
func (h Hash) Format(e Encoding, withAlgo bool) string {
	var s string
	switch e {
	case Base16:
		s = h.Base16()
	case Nix32:
		s = h.Nix32()
	case Base64:
		s = h.Base64()
	case SRI:
		return h.SRI()
	}
	if withAlgo {
		return h.algo.String() + ":" + s
	}
	return s
}

// MarshalText implements encoding.TextMarshaler with the String form.
func (h Hash) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; it accepts what Parse accepts.
func (h *Hash) UnmarshalText(b []byte) error {
	p, err := Parse(string(b))
	if err != nil {
		return err
	}
	*h = p
	return nil
}

// Parse parses a hash that names its algorithm: "algo:digest" with the digest in
// base16, nix32 or base64, or SRI "algo-base64".
func Parse(s string) (Hash, error) { return ParseAny(s, 0) }

// ParseAny parses a hash in any form. When a is non-zero a bare digest is accepted too,
// and a prefix, if present, must name a.
func ParseAny(s string, a Algorithm) (Hash, error) {
	h, err := parse(s, a)
	if err != nil {
		return Hash{}, fmt.Errorf("parse hash %q: %w", s, err)
	}
	return h, nil
}

func parse(s string, want Algorithm) (Hash, error) {
	rest := s
	algo := want
	sri := false
	if i := strings.IndexAny(s, ":-"); i >= 0 {
		a, err := ParseAlgorithm(s[:i])
		if err != nil {
			return Hash{}, fmt.Errorf("%w: unknown algorithm %q", ErrInvalid, s[:i])
		}
		if want != 0 && a != want {
			return Hash{}, fmt.Errorf("%w: algorithm %s, want %s", ErrInvalid, a, want)
		}
		algo, rest, sri = a, s[i+1:], s[i] == '-'
	} else if want == 0 {
		return Hash{}, fmt.Errorf("%w: no algorithm given", ErrInvalid)
	}
	size := algo.Size()
	var buf [MaxSize]byte
	switch {
	case sri:
		if len(rest) != base64.StdEncoding.EncodedLen(size) {
			return Hash{}, fmt.Errorf("%w: SRI digest has length %d, want %d", ErrInvalid, len(rest), base64.StdEncoding.EncodedLen(size))
		}
		if err := decodeBase64(buf[:size], rest); err != nil {
			return Hash{}, err
		}
	case len(rest) == 2*size:
		if _, err := hex.Decode(buf[:size], []byte(rest)); err != nil {
			return Hash{}, fmt.Errorf("%w: base16: %v", ErrInvalid, err)
		}
	case len(rest) == nixbase32.EncodedLen(size):
		if _, err := nixbase32.Decode(buf[:size], []byte(rest)); err != nil {
			return Hash{}, fmt.Errorf("%w: %v", ErrInvalid, err)
		}
	case len(rest) == base64.StdEncoding.EncodedLen(size):
		if err := decodeBase64(buf[:size], rest); err != nil {
			return Hash{}, err
		}
	default:
		return Hash{}, fmt.Errorf("%w: %s digest has length %d, which is no encoding of %d bytes", ErrInvalid, algo, len(rest), size)
	}
	h := Hash{algo: algo}
	copy(h.digest[:], buf[:size])
	return h, nil
}

func decodeBase64(dst []byte, s string) error {
	// Decode into room for whatever s holds: an unpadded string of the right length
	// decodes to more bytes than the digest has.
	var buf [base64DecodeRoom]byte
	if base64.StdEncoding.DecodedLen(len(s)) > len(buf) {
		return fmt.Errorf("%w: base64 digest %q is too long", ErrInvalid, s)
	}
	n, err := base64.StdEncoding.Decode(buf[:], []byte(s))
	if err == nil && n == len(dst) {
		copy(dst, buf[:n])
	}
	if err != nil || n != len(dst) {
		return fmt.Errorf("%w: base64 digest %q", ErrInvalid, s)
	}
	return nil
}

// Hasher computes a Hash over what is written to it. It is an io.Writer.
type Hasher struct {
	algo Algorithm
	h    hash.Hash
	n    int64
}

// NewHasher returns a Hasher for algorithm a.
func NewHasher(a Algorithm) *Hasher { return &Hasher{algo: a, h: a.New()} }

// Write adds p to the hash. It never fails.
func (h *Hasher) Write(p []byte) (int, error) {
	h.n += int64(len(p))
	return h.h.Write(p)
}

// Size returns the number of bytes written so far.
func (h *Hasher) Size() int64 { return h.n }

// Sum returns the hash of everything written so far.
func (h *Hasher) Sum() Hash {
	out := Hash{algo: h.algo}
	h.h.Sum(out.digest[:0])
	return out
}

// Reset clears the Hasher for reuse.
func (h *Hasher) Reset() { h.h.Reset(); h.n = 0 }
