// Package nixbase32 implements Nix's base-32 encoding of hashes.
//
// The alphabet is the 32 characters
//
//	0123456789abcdfghijklmnpqrsvwxyz
//
// (no e, o, u or t). An n-byte input encodes to ⌈8n/5⌉ characters. The input is read as one little-endian bit
// string and cut into 5-bit digits; the most significant digit is written first. So, unlike RFC 4648, the last
// character holds the low bits of the first byte. Decoding refuses characters outside the alphabet and any bits
// that would overflow the last byte.
package nixbase32

import (
	"errors"
	"fmt"
)

// Alphabet is the set of Nix base-32 digits in order.
const Alphabet = "0123456789abcdfghijklmnpqrsvwxyz"

// invalid marks a byte that is not a digit in the decode table.
const invalid = 0xff

var decodeTable = func() (t [256]byte) {
	for i := range t {
		t[i] = invalid
	}
	for i := 0; i < len(Alphabet); i++ {
		t[Alphabet[i]] = byte(i)
	}
	return t
}()

// ErrInvalid is wrapped by every decode error.
var ErrInvalid = errors.New("invalid nixbase32")

// EncodedLen returns the length of the encoding of n bytes.
func EncodedLen(n int) int {
	if n == 0 {
		return 0
	}
	return (n*8-1)/5 + 1
}

// DecodedLen returns the number of bytes that n characters decode to.
func DecodedLen(n int) int { return n * 5 / 8 }

// IsAlphabet reports whether c is a Nix base-32 digit.
func IsAlphabet(c byte) bool { return decodeTable[c] != invalid }

// Encode writes the encoding of src to dst, which must hold EncodedLen(len(src)) bytes.
func Encode(dst, src []byte) {
	n := EncodedLen(len(src))
	for i := 0; i < n; i++ {
		b := (n - 1 - i) * 5
		j, k := b/8, uint(b%8)
		c := src[j] >> k
		if j+1 < len(src) {
			c |= src[j+1] << (8 - k)
		}
		dst[i] = Alphabet[c&0x1f]
	}
}

// EncodeToString returns the encoding of src.
func EncodeToString(src []byte) string {
	dst := make([]byte, EncodedLen(len(src)))
	Encode(dst, src)
	return string(dst)
}

// Decode decodes src into dst, which must hold DecodedLen(len(src)) bytes, and returns the number of bytes
// written. src must be a complete encoding: its length must be EncodedLen of the decoded length.
func Decode(dst, src []byte) (int, error) {
	n := DecodedLen(len(src))
	if EncodedLen(n) != len(src) {
		return 0, fmt.Errorf("%w: length %d is not an encoded length", ErrInvalid, len(src))
	}
	clear(dst[:n])
	for i := 0; i < len(src); i++ {
		d := decodeTable[src[len(src)-1-i]]
		if d == invalid {
			return 0, fmt.Errorf("%w: character %q at offset %d", ErrInvalid, src[len(src)-1-i], len(src)-1-i)
		}
		b := i * 5
		j, k := b/8, uint(b%8)
		dst[j] |= d << k
		carry := d >> (8 - k)
		if k > 3 {
			if j+1 < n {
				dst[j+1] |= carry
			} else if carry != 0 {
				return 0, fmt.Errorf("%w: excess bits in %q", ErrInvalid, src)
			}
		}
	}
	return n, nil
}

// DecodeString decodes s.
func DecodeString(s string) ([]byte, error) {
	dst := make([]byte, DecodedLen(len(s)))
	n, err := Decode(dst, []byte(s))
	if err != nil {
		return nil, err
	}
	return dst[:n], nil
}

// ValidateString reports whether s is a complete, canonical encoding, without allocating.
func ValidateString(s string) error {
	n := DecodedLen(len(s))
	if EncodedLen(n) != len(s) {
		return fmt.Errorf("%w: length %d is not an encoded length", ErrInvalid, len(s))
	}
	for i := 0; i < len(s); i++ {
		if decodeTable[s[i]] == invalid {
			return fmt.Errorf("%w: character %q at offset %d", ErrInvalid, s[i], i)
		}
	}
	// The first character holds the top digit; bits above 8n must be zero.
	if extra := len(s)*5 - n*8; extra > 0 && len(s) > 0 {
		if decodeTable[s[0]]>>(5-extra) != 0 {
			return fmt.Errorf("%w: excess bits in %q", ErrInvalid, s)
		}
	}
	return nil
}
