package nixhash

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cairn/internal/testutil/nixtest"
)

func TestFormsOfEmptySHA256(t *testing.T) {
	h := Sum(SHA256, nil)
	want := map[string]string{
		"base16": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		"nix32":  "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
		"base64": "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
		"sri":    "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
		"string": "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
	}
	got := map[string]string{
		"base16": h.Base16(), "nix32": h.Nix32(), "base64": h.Base64(), "sri": h.SRI(), "string": h.String(),
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s = %q, want %q", k, got[k], w)
		}
	}
	// Every form parses back to the same hash.
	for _, s := range []string{"sha256:" + want["base16"], want["string"], "sha256:" + want["base64"], want["sri"],
		"sha256:" + strings.ToUpper(want["base16"])} {
		p, err := Parse(s)
		if err != nil || p != h {
			t.Errorf("Parse(%q) = %v, %v; want %v", s, p, err, h)
		}
	}
	for _, s := range []string{want["base16"], want["nix32"], want["base64"]} {
		p, err := ParseAny(s, SHA256)
		if err != nil || p != h {
			t.Errorf("ParseAny(%q, sha256) = %v, %v; want %v", s, p, err, h)
		}
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		in   string
		algo Algorithm
	}{
		{"", 0},
		{"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", 0}, // no algorithm
		{"sha255:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", 0},
		{"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85", 0},  // short
		{"sha256:g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", 0}, // bad hex
		{"sha1:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73", 0},               // wrong length for sha1
		{"sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7e", 0},             // bad nix32
		{"sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU", 0},                      // SRI without padding
		{"sha256-e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", 0}, // SRI must be base64
		{"sha1:143xibwh31h9bvxzalr0sjvbbvpa6ffs", SHA256},                              // prefix disagrees
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if _, err := ParseAny(tt.in, tt.algo); !errors.Is(err, ErrInvalid) {
				t.Errorf("ParseAny(%q, %v) error = %v, want ErrInvalid", tt.in, tt.algo, err)
			}
		})
	}
}

func TestContentAddress(t *testing.T) {
	h := Sum(SHA256, nil)
	s1 := Sum(SHA1, nil)
	tests := []struct {
		in   string
		want ContentAddress
	}{
		{"text:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73", ContentAddress{Text, h}},
		{"fixed:r:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73", ContentAddress{Recursive, h}},
		{"fixed:sha1:143xibwh31h9bvxzalr0sjvbbvpa6ffs", ContentAddress{Flat, s1}},
	}
	for _, tt := range tests {
		got, err := ParseContentAddress(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseContentAddress(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
		if got.String() != tt.in {
			t.Errorf("String() = %q, want %q", got.String(), tt.in)
		}
	}
	for _, bad := range []string{"", "text", "text:sha1:143xibwh31h9bvxzalr0sjvbbvpa6ffs", "fixed:r:", "blob:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"} {
		if _, err := ParseContentAddress(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseContentAddress(%q) error = %v, want ErrInvalid", bad, err)
		}
	}
}

// TestAgainstNixHash checks every algorithm and encoding against nix-hash 2.8.
func TestAgainstNixHash(t *testing.T) {
	nixtest.Require(t, "nix-hash")
	file := filepath.Join(t.TempDir(), "data")
	data := []byte("hello, nix\n\x00\xff binary too")
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, a := range []Algorithm{MD5, SHA1, SHA256, SHA512} {
		h := Sum(a, data)
		for _, enc := range []struct {
			flag string
			want string
		}{{"", h.Base16()}, {"--base32", h.Nix32()}} {
			t.Run(fmt.Sprint(a, enc.flag), func(t *testing.T) {
				args := []string{"--flat", "--type", a.String(), file}
				if enc.flag != "" {
					args = append([]string{enc.flag}, args...)
				}
				got := nixtest.Run(t, nil, "nix-hash", args...)
				if got != enc.want {
					t.Errorf("nix-hash %s: %q, Cairn %q", enc.flag, got, enc.want)
				}
			})
		}
		t.Run(fmt.Sprint(a, " to-base32"), func(t *testing.T) {
			got := nixtest.Run(t, nil, "nix-hash", "--type", a.String(), "--to-base32", h.Base16())
			if got != h.Nix32() {
				t.Errorf("nix-hash --to-base32: %q, Cairn %q", got, h.Nix32())
			}
		})
		t.Run(fmt.Sprint(a, " to-sri"), func(t *testing.T) {
			got := nixtest.Run(t, nil, "nix", "--extra-experimental-features", "nix-command", "hash", "to-sri", "--type", a.String(), h.Nix32())
			if got != h.SRI() {
				t.Errorf("nix hash to-sri: %q, Cairn %q", got, h.SRI())
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add("sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73")
	f.Add("sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=")
	f.Add("sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709")
	f.Add("md5:1B2M2Y8AsgTpgAmY7PhCfg==")
	f.Add("fixed:r:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73")
	f.Fuzz(func(t *testing.T, s string) {
		if h, err := Parse(s); err == nil {
			for _, e := range []Encoding{Base16, Nix32, Base64, SRI} {
				back, err := Parse(h.Format(e, true))
				if err != nil || back != h {
					t.Fatalf("round trip of %q via %v: %v, %v", s, e, back, err)
				}
			}
		}
		if ca, err := ParseContentAddress(s); err == nil {
			back, err := ParseContentAddress(ca.String())
			if err != nil || back != ca {
				t.Fatalf("content address round trip of %q: %v, %v", s, back, err)
			}
		}
	})
}

func BenchmarkParseNix32(b *testing.B) {
	s := "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(s); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSHA256(b *testing.B) {
	data := make([]byte, 1<<20)
	b.SetBytes(int64(len(data)))
	h := NewHasher(SHA256)
	for b.Loop() {
		h.Write(data)
	}
}
