// Package storepath implements Nix store directories, store paths and the way Nix
// computes them.
//
// Grammar:
//
//	storePath = storeDir "/" hashPart "-" name
//	hashPart  = 32 nixbase32 digits (160 bits)
//	name      = 1 to 211 of [A-Za-z0-9+-._?=], not "." or "..", not starting ".-" or "..-"
//
// A StorePath comes only from a parser or a Make… function, so code holding one may
// trust it. A path's hash part is nixbase32(compress20(sha256(fingerprint))), where
//
//	fingerprint = type ":sha256:" base16(inner) ":" storeDir ":" name
//
// and type and inner depend on the kind of path (source, text, fixed output,
// derivation output); see the Make… methods of StoreDir.
package storepath

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	"cairn/internal/nixbase32"
)

const (
	// HashPartLen is the length of a store path's hash part in characters.
	HashPartLen = 32
	// digestLen is the number of bytes the hash part encodes.
	digestLen = 20
	// MaxNameLen is the longest name Nix allows after the hash part.
	MaxNameLen = 211
	// DrvExtension ends the name of every derivation file.
	DrvExtension = ".drv"
)

// ErrInvalid is wrapped by every error about a malformed store dir, store path or name.
var ErrInvalid = errors.New("invalid store path")

// StoreDir is the directory that holds the store paths, such as /nix/store. It is the
// logical directory: a chroot store keeps its files elsewhere but names them by it.
type StoreDir string

// DefaultStoreDir is Nix's default store directory.
const DefaultStoreDir StoreDir = "/nix/store"

// ParseStoreDir checks that s is an absolute, clean directory path other than "/".
func ParseStoreDir(s string) (StoreDir, error) {
	if s == "" || s[0] != '/' || path.Clean(s) != s || s == "/" {
		return "", fmt.Errorf("parse store dir %q: %w: must be absolute and clean, not /", s, ErrInvalid)
	}
	return StoreDir(s), nil
}

// String returns the directory.
func (d StoreDir) String() string { return string(d) }

// StorePath is a valid store path: its dir, hash part and name have been checked.
// It is a comparable value; the zero value is no path.
type StorePath struct {
	full   string
	dirLen int
}

// Parse parses an absolute store path; its store dir is everything before the last "/".
func Parse(full string) (StorePath, error) {
	i := strings.LastIndexByte(full, '/')
	if i <= 0 {
		return StorePath{}, fmt.Errorf("parse store path %q: %w: not an absolute path inside a store dir", full, ErrInvalid)
	}
	if err := checkBase(full[i+1:]); err != nil {
		return StorePath{}, fmt.Errorf("parse store path %q: %w", full, err)
	}
	if full[0] != '/' || path.Clean(full[:i]) != full[:i] {
		return StorePath{}, fmt.Errorf("parse store path %q: %w: store dir is not absolute and clean", full, ErrInvalid)
	}
	return StorePath{full: full, dirLen: i}, nil
}

// Parse parses an absolute store path that must be directly inside d.
func (d StoreDir) Parse(full string) (StorePath, error) {
	if len(full) <= len(d) || full[:len(d)] != string(d) || full[len(d)] != '/' {
		return StorePath{}, fmt.Errorf("parse store path %q: %w: not in store dir %s", full, ErrInvalid, d)
	}
	base := full[len(d)+1:]
	if err := checkBase(base); err != nil {
		return StorePath{}, fmt.Errorf("parse store path %q: %w", full, err)
	}
	return StorePath{full: full, dirLen: len(d)}, nil
}

// FromBase makes the store path named base ("<hash>-<name>") in d.
func (d StoreDir) FromBase(base string) (StorePath, error) {
	if err := checkBase(base); err != nil {
		return StorePath{}, fmt.Errorf("parse store path %q: %w", base, err)
	}
	return StorePath{full: string(d) + "/" + base, dirLen: len(d)}, nil
}

// ToStorePath splits a path inside the store, such as /nix/store/…-bash/bin/sh, into
// the store path and the rest ("bin/sh", or "" for the store path itself).
func (d StoreDir) ToStorePath(p string) (StorePath, string, error) {
	p = path.Clean(p)
	if len(p) <= len(d) || p[:len(d)] != string(d) || p[len(d)] != '/' {
		return StorePath{}, "", fmt.Errorf("path %q: %w: not in store dir %s", p, ErrInvalid, d)
	}
	base, rest, _ := strings.Cut(p[len(d)+1:], "/")
	sp, err := d.FromBase(base)
	return sp, rest, err
}

func checkBase(base string) error {
	if len(base) < HashPartLen+2 || base[HashPartLen] != '-' {
		return fmt.Errorf("%w: base name %q is not <32-char hash>-<name>", ErrInvalid, base)
	}
	if err := nixbase32.ValidateString(base[:HashPartLen]); err != nil {
		return fmt.Errorf("%w: hash part: %v", ErrInvalid, err)
	}
	return ValidateName(base[HashPartLen+1:])
}

// ValidateName checks a store path name against Nix's rules.
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty name", ErrInvalid)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: name is %d characters long, longer than %d", ErrInvalid, len(name), MaxNameLen)
	case name == "." || name == "..":
		return fmt.Errorf("%w: name %q is not allowed", ErrInvalid, name)
	case strings.HasPrefix(name, ".-") || strings.HasPrefix(name, "..-"):
		return fmt.Errorf("%w: name %q must not start with %q", ErrInvalid, name, name[:strings.IndexByte(name, '-')+1])
	}
	for i := 0; i < len(name); i++ {
		if !nameChar[name[i]] {
			return fmt.Errorf("%w: name %q contains illegal character %q", ErrInvalid, name, name[i])
		}
	}
	return nil
}

var nameChar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "+-._?=" {
		t[c] = true
	}
	return t
}()

// String returns the full path.
func (p StorePath) String() string { return p.full }

// IsZero reports whether p is the zero StorePath.
func (p StorePath) IsZero() bool { return p.full == "" }

// Dir returns the store dir p lies in.
func (p StorePath) Dir() StoreDir { return StoreDir(p.full[:p.dirLen]) }

// Base returns "<hash>-<name>".
func (p StorePath) Base() string {
	if p.full == "" {
		return ""
	}
	return p.full[p.dirLen+1:]
}

// HashPart returns the 32-character nixbase32 hash part.
func (p StorePath) HashPart() string {
	if p.full == "" {
		return ""
	}
	return p.full[p.dirLen+1 : p.dirLen+1+HashPartLen]
}

// Name returns the part after the hash and the dash.
func (p StorePath) Name() string {
	if p.full == "" {
		return ""
	}
	return p.full[p.dirLen+2+HashPartLen:]
}

// Digest returns the 20 bytes the hash part encodes.
func (p StorePath) Digest() [digestLen]byte {
	var d [digestLen]byte
	if p.full != "" {
		// The hash part was validated when p was made.
		nixbase32.Decode(d[:], []byte(p.HashPart()))
	}
	return d
}

// IsDerivation reports whether p names a derivation (ends in ".drv").
func (p StorePath) IsDerivation() bool { return strings.HasSuffix(p.full, DrvExtension) }

// MarshalText implements encoding.TextMarshaler.
func (p StorePath) MarshalText() ([]byte, error) { return []byte(p.full), nil }

// UnmarshalText implements encoding.TextUnmarshaler with Parse.
func (p *StorePath) UnmarshalText(b []byte) error {
	q, err := Parse(string(b))
	if err != nil {
		return err
	}
	*p = q
	return nil
}

// Compare orders store paths as Nix does: by base name, then by full path.
func Compare(a, b StorePath) int {
	if c := strings.Compare(a.Base(), b.Base()); c != 0 {
		return c
	}
	return strings.Compare(a.full, b.full)
}

// SortPaths sorts paths in Nix's order.
func SortPaths(paths []StorePath) { slices.SortFunc(paths, Compare) }
