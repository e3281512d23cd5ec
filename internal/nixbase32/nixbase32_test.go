package nixbase32

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math/rand"
	"testing"
)

func TestKnownVectors(t *testing.T) {
	tests := []struct{ hex, nix32 string }{
		{"", ""},
		{"00", "00"},
		{"ff", "7z"},
		// sha256 of the empty string, as nix-hash --type sha256 --to-base32 prints it.
		{"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"},
		// sha1 of the empty string.
		{"da39a3ee5e6b4b0d3255bfef95601890afd80709", "143xibwh31h9bvxzalr0sjvbbvpa6ffs"},
	}
	for _, tt := range tests {
		t.Run(tt.nix32, func(t *testing.T) {
			raw, _ := hex.DecodeString(tt.hex)
			if got := EncodeToString(raw); got != tt.nix32 {
				t.Errorf("EncodeToString(%s) = %q, want %q", tt.hex, got, tt.nix32)
			}
			dec, err := DecodeString(tt.nix32)
			if err != nil {
				t.Fatalf("DecodeString(%q): %v", tt.nix32, err)
			}
			if !bytes.Equal(dec, raw) {
				t.Errorf("DecodeString(%q) = %x, want %s", tt.nix32, dec, tt.hex)
			}
			if err := ValidateString(tt.nix32); err != nil {
				t.Errorf("ValidateString(%q): %v", tt.nix32, err)
			}
		})
	}
}

func TestRoundTripRandom(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	for n := 0; n < 70; n++ {
		src := make([]byte, n)
		r.Read(src)
		enc := EncodeToString(src)
		if len(enc) != EncodedLen(n) {
			t.Fatalf("len(Encode(%d bytes)) = %d, want %d", n, len(enc), EncodedLen(n))
		}
		if err := ValidateString(enc); err != nil {
			t.Fatalf("ValidateString(%q): %v", enc, err)
		}
		dec, err := DecodeString(enc)
		if err != nil || !bytes.Equal(dec, src) {
			t.Fatalf("DecodeString(%q) = %x, %v; want %x", enc, dec, err, src)
		}
	}
}

func TestInvalid(t *testing.T) {
	tests := []struct{ name, in string }{
		{"bad char e", "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7e"},
		{"bad char upper", "0MDQA9W1P6CMLI6976V4WI0SW9R4P5PRKJ7LZFD1877WK11C9C73"},
		{"bad length", "0md"},
		{"excess bits", "zz"},
		{"excess bits sha256", "zmdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := DecodeString(tt.in); !errors.Is(err, ErrInvalid) {
				t.Errorf("DecodeString(%q) error = %v, want ErrInvalid", tt.in, err)
			}
			if err := ValidateString(tt.in); !errors.Is(err, ErrInvalid) {
				t.Errorf("ValidateString(%q) error = %v, want ErrInvalid", tt.in, err)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	f.Add("0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73")
	f.Add("143xibwh31h9bvxzalr0sjvbbvpa6ffs")
	f.Add("7z")
	f.Fuzz(func(t *testing.T, s string) {
		dec, err := DecodeString(s)
		verr := ValidateString(s)
		if (err == nil) != (verr == nil) {
			t.Fatalf("DecodeString and ValidateString disagree on %q: %v vs %v", s, err, verr)
		}
		if err != nil {
			return
		}
		if got := EncodeToString(dec); got != s {
			t.Fatalf("round trip %q -> %x -> %q", s, dec, got)
		}
	})
}

func BenchmarkEncode32(b *testing.B) {
	src := make([]byte, 32)
	dst := make([]byte, EncodedLen(32))
	b.SetBytes(32)
	b.ReportAllocs()
	for b.Loop() {
		Encode(dst, src)
	}
}

func BenchmarkDecode32(b *testing.B) {
	src := []byte("0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73")
	dst := make([]byte, 32)
	b.SetBytes(int64(len(src)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(dst, src); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkValidateString(b *testing.B) {
	s := "143xibwh31h9bvxzalr0sjvbbvpa6ffs"
	b.ReportAllocs()
	for b.Loop() {
		if err := ValidateString(s); err != nil {
			b.Fatal(err)
		}
	}
}
