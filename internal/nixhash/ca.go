package nixhash

import (
	"fmt"
	"strings"
)

// Method is how content was turned into the bytes a content address hashes.
type Method uint8

// The ingestion methods. The zero value is no method.
const (
	// Text: the bytes of a text file (toFile, .drv); the hash is sha256 and references are allowed.
	Text Method = iota + 1
	// Flat: the bytes of a single regular file.
	Flat
	// Recursive: the NAR serialisation of a file system object ("r:").
	Recursive
)

// String names the method as Nix's JSON does.
func (m Method) String() string {
	switch m {
	case Text:
		return "text"
	case Flat:
		return "flat"
	case Recursive:
		return "nar"
	}
	return fmt.Sprintf("Method(%d)", uint8(m))
}

// Prefix returns the method's prefix in fixed-output fingerprints and derivation
// output hash algorithms: "r:" for Recursive, "text:" for Text, "" for Flat.
func (m Method) Prefix() string {
	switch m {
	case Recursive:
		return "r:"
	case Text:
		return "text:"
	}
	return ""
}

// ParseMethodAlgo parses the "[r:|text:]algo" form a derivation output's hashAlgo holds.
func ParseMethodAlgo(s string) (Method, Algorithm, error) {
	m, rest := Flat, s
	if r, ok := strings.CutPrefix(s, "r:"); ok {
		m, rest = Recursive, r
	} else if r, ok := strings.CutPrefix(s, "text:"); ok {
		m, rest = Text, r
	}
	a, err := ParseAlgorithm(rest)
	if err != nil {
		return 0, 0, fmt.Errorf("parse hash method %q: %w", s, ErrInvalid)
	}
	return m, a, nil
}

// FormatMethodAlgo is the inverse of ParseMethodAlgo.
func FormatMethodAlgo(m Method, a Algorithm) string { return m.Prefix() + a.String() }

// ContentAddress says how a store path's contents determine its name: a method and a hash.
type ContentAddress struct {
	Method Method
	Hash   Hash
}

// IsZero reports whether ca is the zero ContentAddress (no content address).
func (ca ContentAddress) IsZero() bool { return ca.Method == 0 }

// String prints ca as Nix stores it: "text:sha256:<nix32>", "fixed:r:sha256:<nix32>",
// or "fixed:<algo>:<nix32>"; "" for the zero value.
func (ca ContentAddress) String() string {
	switch ca.Method {
	case Text:
		return "text:" + ca.Hash.String()
	case Flat:
		return "fixed:" + ca.Hash.String()
	case Recursive:
		return "fixed:r:" + ca.Hash.String()
	}
	return ""
}

// MarshalText implements encoding.TextMarshaler.
func (ca ContentAddress) MarshalText() ([]byte, error) { return []byte(ca.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; "" gives the zero value.
func (ca *ContentAddress) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*ca = ContentAddress{}
		return nil
	}
	p, err := ParseContentAddress(string(b))
	if err != nil {
		return err
	}
	*ca = p
	return nil
}

// ParseContentAddress parses the forms String prints; the hash may be in any encoding
// that names its algorithm.
func ParseContentAddress(s string) (ContentAddress, error) {
	ca, err := parseCA(s)
	if err != nil {
		return ContentAddress{}, fmt.Errorf("parse content address %q: %w", s, err)
	}
	return ca, nil
}

func parseCA(s string) (ContentAddress, error) {
	kind, rest, ok := strings.Cut(s, ":")
	if !ok {
		return ContentAddress{}, fmt.Errorf("%w: no method", ErrInvalid)
	}
	var m Method
	switch kind {
	case "text":
		m = Text
	case "fixed":
		m = Flat
		if r, ok := strings.CutPrefix(rest, "r:"); ok {
			m, rest = Recursive, r
		}
	default:
		return ContentAddress{}, fmt.Errorf("%w: unknown method %q", ErrInvalid, kind)
	}
	h, err := parse(rest, 0)
	if err != nil {
		return ContentAddress{}, err
	}
	if m == Text && h.algo != SHA256 {
		return ContentAddress{}, fmt.Errorf("%w: text hashing needs sha256, not %s", ErrInvalid, h.algo)
	}
	return ContentAddress{Method: m, Hash: h}, nil
}
