package narinfo

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
)

// MaxKeyNameLen bounds the name part of a key or signature.
const MaxKeyNameLen = 256

// ErrBadKey is wrapped by every error about a malformed key or signature.
var ErrBadKey = errors.New("malformed key")

// SecretKey is an ed25519 signing key with a name, written "name:base64(seed‖pk)".
type SecretKey struct {
	name string
	key  [ed25519.PrivateKeySize]byte
}

// PublicKey is an ed25519 verification key with a name, written "name:base64(pk)".
type PublicKey struct {
	name string
	key  [ed25519.PublicKeySize]byte
}

// Signature is a detached ed25519 signature with the name of the key that made it,
// written "name:base64(sig)".
type Signature struct {
	name string
	sig  [ed25519.SignatureSize]byte
}

// GenerateKey makes a key pair named name from the randomness in rand (nil means
// crypto/rand).
func GenerateKey(name string, rand io.Reader) (SecretKey, PublicKey, error) {
	if err := validNewKeyName(name); err != nil {
		return SecretKey{}, PublicKey{}, fmt.Errorf("generate key %q: %w", name, err)
	}
	pub, priv, err := ed25519.GenerateKey(rand)
	if err != nil {
		return SecretKey{}, PublicKey{}, fmt.Errorf("generate key %q: %w", name, err)
	}
	sk := SecretKey{name: name}
	copy(sk.key[:], priv)
	pk := PublicKey{name: name}
	copy(pk.key[:], pub)
	return sk, pk, nil
}

// validKeyName accepts the names a parser may meet: non-empty, bounded, no ':'
// (the value is split at its first colon) and no control characters.
func validKeyName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty name", ErrBadKey)
	}
	if len(name) > MaxKeyNameLen {
		return fmt.Errorf("%w: name longer than %d bytes", ErrBadKey, MaxKeyNameLen)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c == ':' || c < ' ' || c == 0x7f {
			return fmt.Errorf("%w: name contains %q", ErrBadKey, c)
		}
	}
	return nil
}

// validNewKeyName is stricter for new keys: no spaces either, so the public key
// can stand in a white-space separated trusted-public-keys list. (Nix itself
// accepts any name when generating.)
func validNewKeyName(name string) error {
	if strings.Contains(name, " ") {
		return fmt.Errorf("%w: name contains a space", ErrBadKey)
	}
	return validKeyName(name)
}

// splitNamed splits "name:base64" and decodes the data, which must be n bytes.
func splitNamed(s string, n int) (string, []byte, error) {
	name, data, ok := strings.Cut(s, ":")
	if !ok {
		return "", nil, fmt.Errorf("%w: no ':'", ErrBadKey)
	}
	if err := validKeyName(name); err != nil {
		return "", nil, err
	}
	if len(data) != base64.StdEncoding.EncodedLen(n) {
		return "", nil, fmt.Errorf("%w: base64 data has length %d, want %d", ErrBadKey, len(data), base64.StdEncoding.EncodedLen(n))
	}
	b, err := base64.StdEncoding.Strict().DecodeString(data)
	if err != nil || len(b) != n {
		return "", nil, fmt.Errorf("%w: bad base64 data", ErrBadKey)
	}
	return name, b, nil
}

// ParseSecretKey parses the contents of a secret key file as
// nix-store --generate-binary-cache-key writes it. Surrounding white space
// (a trailing newline) is ignored. The public half must match the seed.
func ParseSecretKey(s string) (SecretKey, error) {
	name, b, err := splitNamed(strings.TrimSpace(s), ed25519.PrivateKeySize)
	if err != nil {
		return SecretKey{}, fmt.Errorf("parse secret key: %w", err)
	}
	priv := ed25519.NewKeyFromSeed(b[:ed25519.SeedSize])
	if string(priv) != string(b) {
		return SecretKey{}, fmt.Errorf("parse secret key %q: %w: public half does not match the seed", name, ErrBadKey)
	}
	sk := SecretKey{name: name}
	copy(sk.key[:], b)
	return sk, nil
}

// ParsePublicKey parses "name:base64(32 bytes)". Surrounding white space is ignored.
func ParsePublicKey(s string) (PublicKey, error) {
	name, b, err := splitNamed(strings.TrimSpace(s), ed25519.PublicKeySize)
	if err != nil {
		return PublicKey{}, fmt.Errorf("parse public key: %w", err)
	}
	pk := PublicKey{name: name}
	copy(pk.key[:], b)
	return pk, nil
}

// ParsePublicKeys parses a white-space separated list of public keys, the form of
// Nix's trusted-public-keys setting.
func ParsePublicKeys(s string) ([]PublicKey, error) {
	var keys []PublicKey
	for _, f := range strings.Fields(s) {
		pk, err := ParsePublicKey(f)
		if err != nil {
			return nil, err
		}
		keys = append(keys, pk)
	}
	return keys, nil
}

// ParseSignature parses "name:base64(64 bytes)", the value of a narinfo Sig line.
func ParseSignature(s string) (Signature, error) {
	name, b, err := splitNamed(s, ed25519.SignatureSize)
	if err != nil {
		return Signature{}, fmt.Errorf("parse signature: %w", err)
	}
	sig := Signature{name: name}
	copy(sig.sig[:], b)
	return sig, nil
}

func format(name string, data []byte) string {
	return name + ":" + base64.StdEncoding.EncodeToString(data)
}

// Name returns the key's name.
func (k SecretKey) Name() string { return k.name }

// String returns the key file form "name:base64(seed‖pk)", without a newline.
func (k SecretKey) String() string { return format(k.name, k.key[:]) }

// Public returns the public half of k.
func (k SecretKey) Public() PublicKey {
	pk := PublicKey{name: k.name}
	copy(pk.key[:], k.key[ed25519.SeedSize:])
	return pk
}

// Sign signs the message (a path's fingerprint) with k. ed25519 is deterministic:
// Nix signing the same fingerprint with the same key makes the same signature.
func (k SecretKey) Sign(fingerprint string) Signature {
	s := Signature{name: k.name}
	copy(s.sig[:], ed25519.Sign(ed25519.PrivateKey(k.key[:]), []byte(fingerprint)))
	return s
}

// IsZero reports whether k is the zero SecretKey.
func (k SecretKey) IsZero() bool { return k.name == "" }

// Name returns the key's name.
func (k PublicKey) Name() string { return k.name }

// String returns "name:base64(pk)".
func (k PublicKey) String() string { return format(k.name, k.key[:]) }

// Bytes returns the 32-byte ed25519 public key.
func (k PublicKey) Bytes() []byte { return append([]byte(nil), k.key[:]...) }

// Verify reports whether sig is k's signature of the message. The names must agree.
func (k PublicKey) Verify(fingerprint string, sig Signature) bool {
	return k.name != "" && sig.name == k.name && ed25519.Verify(k.key[:], []byte(fingerprint), sig.sig[:])
}

// Name returns the name of the key that made the signature.
func (s Signature) Name() string { return s.name }

// String returns "name:base64(sig)".
func (s Signature) String() string { return format(s.name, s.sig[:]) }

// Bytes returns the 64-byte ed25519 signature.
func (s Signature) Bytes() []byte { return append([]byte(nil), s.sig[:]...) }

// IsZero reports whether s is the zero Signature.
func (s Signature) IsZero() bool { return s.name == "" }

// VerifyAny reports whether at least one of sigs is a valid signature of the
// fingerprint by one of the trusted keys. Each signature is checked only against
// trusted keys of the same name, as Nix looks keys up by name.
func VerifyAny(fingerprint string, sigs []Signature, trusted []PublicKey) bool {
	return CountValid(fingerprint, sigs, trusted) > 0
}

// TrustedKeys parses the keys of a trusted-public-keys setting (separated by
// whitespace), telling warn of each malformed one and leaving it out, as Nix
// does.
func TrustedKeys(setting string, warn func(string)) []PublicKey {
	var keys []PublicKey
	for _, s := range strings.Fields(setting) {
		k, err := ParsePublicKey(s)
		if err != nil {
			warn(fmt.Sprintf("ignoring malformed public key '%s': %v", s, err))
			continue
		}
		keys = append(keys, k)
	}
	return keys
}

// ParseSignatures parses signatures in Nix's "name:base64" form, leaving out
// the malformed ones (Nix ignores them where it checks signatures).
func ParseSignatures(ss []string) []Signature {
	var out []Signature
	for _, s := range ss {
		if sig, err := ParseSignature(s); err == nil {
			out = append(out, sig)
		}
	}
	return out
}

// CountValid returns how many of sigs (counted once per distinct key name) are
// valid signatures of the fingerprint by a trusted key of that name; callers
// enforcing a minimum such as Nix's --sigs-needed compare against it.
func CountValid(fingerprint string, sigs []Signature, trusted []PublicKey) int {
	good := make(map[string]bool)
	for _, s := range sigs {
		if good[s.name] {
			continue
		}
		for _, k := range trusted {
			if k.Verify(fingerprint, s) {
				good[s.name] = true
				break
			}
		}
	}
	return len(good)
}
