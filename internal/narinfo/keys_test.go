package narinfo

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func TestGoldenKeys(t *testing.T) {
	for _, name := range []string{"cache-1", "other-2"} {
		t.Run(name, func(t *testing.T) {
			secText := readFile(t, "testdata/"+name+".sec")
			pubText := readFile(t, "testdata/"+name+".pub")
			sk, err := ParseSecretKey(secText)
			if err != nil {
				t.Fatal(err)
			}
			pk, err := ParsePublicKey(pubText)
			if err != nil {
				t.Fatal(err)
			}
			if sk.Name() != name || pk.Name() != name {
				t.Errorf("names %q, %q, want %q", sk.Name(), pk.Name(), name)
			}
			if sk.String() != secText || pk.String() != pubText {
				t.Errorf("String() does not reproduce the key files")
			}
			if sk.Public() != pk {
				t.Errorf("Public() = %s, want %s", sk.Public(), pk)
			}
			sig := sk.Sign("hello")
			if !pk.Verify("hello", sig) || pk.Verify("hellO", sig) {
				t.Error("Verify does not tell the signed message from another")
			}
			// A trailing newline, as an editor leaves, is accepted.
			if _, err := ParseSecretKey(secText + "\n"); err != nil {
				t.Errorf("secret key with newline: %v", err)
			}
		})
	}
}

func TestGenerateKey(t *testing.T) {
	sk, pk, err := GenerateKey("test.example-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if sk.Public() != pk || pk.Name() != "test.example-1" {
		t.Fatalf("GenerateKey: pk %s, sk.Public %s", pk, sk.Public())
	}
	sk2, err := ParseSecretKey(sk.String())
	if err != nil || sk2 != sk {
		t.Fatalf("secret key round trip: %v", err)
	}
	pk2, err := ParsePublicKey(pk.String())
	if err != nil || pk2 != pk {
		t.Fatalf("public key round trip: %v", err)
	}
	// Deterministic from the random source.
	seed := bytes.Repeat([]byte{7}, ed25519.SeedSize)
	a, _, _ := GenerateKey("k", bytes.NewReader(seed))
	b, _, _ := GenerateKey("k", bytes.NewReader(seed))
	if a != b {
		t.Error("same randomness, different keys")
	}
	if _, _, err := GenerateKey("k", bytes.NewReader(nil)); err == nil {
		t.Error("GenerateKey with no randomness succeeded")
	}
	for _, bad := range []string{"", "a:b", "a b", "a\nb", strings.Repeat("n", MaxKeyNameLen+1)} {
		if _, _, err := GenerateKey(bad, nil); !errors.Is(err, ErrBadKey) {
			t.Errorf("GenerateKey(%q) error %v, want ErrBadKey", bad, err)
		}
	}
}

func TestVerifyByName(t *testing.T) {
	sk, pk, _ := GenerateKey("a", nil)
	other, otherPub, _ := GenerateKey("b", nil)
	// A key that has a's name but different bytes.
	_, impostor, _ := GenerateKey("a", nil)
	fp := "1;/nix/store/x;sha256:y;1;"
	sig := sk.Sign(fp)
	tests := []struct {
		name    string
		sigs    []Signature
		trusted []PublicKey
		want    bool
	}{
		{"right key", []Signature{sig}, []PublicKey{pk}, true},
		{"right key among others", []Signature{other.Sign(fp), sig}, []PublicKey{otherPub, impostor, pk}, true},
		{"only another name trusted", []Signature{sig}, []PublicKey{otherPub}, false},
		{"same name, other key", []Signature{sig}, []PublicKey{impostor}, false},
		{"no signatures", nil, []PublicKey{pk}, false},
		{"no trusted keys", []Signature{sig}, nil, false},
		{"signature renamed", []Signature{rename(sig, "b")}, []PublicKey{otherPub, pk}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := VerifyAny(fp, tt.sigs, tt.trusted); got != tt.want {
				t.Errorf("VerifyAny = %v, want %v", got, tt.want)
			}
		})
	}
	if (PublicKey{}).Verify(fp, Signature{}) {
		t.Error("zero key verifies zero signature")
	}
}

func rename(s Signature, name string) Signature {
	s.name = name
	return s
}

func TestParseKeyErrors(t *testing.T) {
	sk, pk, _ := GenerateKey("k", nil)
	skData := strings.TrimPrefix(sk.String(), "k:")
	pkData := strings.TrimPrefix(pk.String(), "k:")
	raw, _ := base64.StdEncoding.DecodeString(skData)
	mismatched := append(append([]byte(nil), raw[:32]...), make([]byte, 32)...)
	tests := []struct {
		name  string
		parse func(string) error
		in    string
	}{
		{"secret: empty", secret, ""},
		{"secret: no name", secret, ":" + skData},
		{"secret: no colon", secret, skData},
		{"secret: public key", secret, pk.String()},
		{"secret: truncated", secret, "k:" + skData[:len(skData)-4]},
		{"secret: public half mismatch", secret, "k:" + base64.StdEncoding.EncodeToString(mismatched)},
		{"secret: bad base64", secret, "k:" + strings.Repeat("*", len(skData))},
		{"public: secret key", public, sk.String()},
		{"public: no name", public, ":" + pkData},
		{"public: control char in name", public, "k\x01:" + pkData},
		{"public: bad base64", public, "k:" + strings.Repeat("*", len(pkData))},
		{"signature: public key", signature, pk.String()},
		{"signature: trailing newline", signature, sk.Sign("x").String() + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.parse(tt.in); !errors.Is(err, ErrBadKey) {
				t.Errorf("error %v, want ErrBadKey", err)
			}
		})
	}
	keys, err := ParsePublicKeys(" " + pk.String() + "\n\t" + readFile(t, "testdata/cache-1.pub") + " ")
	if err != nil || len(keys) != 2 || keys[0] != pk {
		t.Errorf("ParsePublicKeys = %v, %v", keys, err)
	}
	if _, err := ParsePublicKeys(pk.String() + " junk"); err == nil {
		t.Error("ParsePublicKeys with junk succeeded")
	}
}

func secret(s string) error    { _, err := ParseSecretKey(s); return err }
func public(s string) error    { _, err := ParsePublicKey(s); return err }
func signature(s string) error { _, err := ParseSignature(s); return err }
