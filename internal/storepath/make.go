package storepath

import (
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"

	"cairn/internal/nixbase32"
	"cairn/internal/nixhash"
)

// MakeStorePath computes the store path for a fingerprint type, an inner hash and a
// name: the primitive under every other Make… method.
func (d StoreDir) MakeStorePath(typ string, inner nixhash.Hash, name string) (StorePath, error) {
	if err := ValidateName(name); err != nil {
		return StorePath{}, fmt.Errorf("make store path %q: %w", name, err)
	}
	if inner.IsZero() {
		return StorePath{}, fmt.Errorf("make store path %q: %w: no hash", name, ErrInvalid)
	}
	fp := typ + ":" + inner.Format(nixhash.Base16, true) + ":" + string(d) + ":" + name
	sum := sha256.Sum256([]byte(fp))
	var compressed [digestLen]byte
	for i, b := range sum {
		compressed[i%digestLen] ^= b
	}
	var b strings.Builder
	b.Grow(len(d) + 1 + HashPartLen + 1 + len(name))
	b.WriteString(string(d))
	b.WriteByte('/')
	var hp [HashPartLen]byte
	nixbase32.Encode(hp[:], compressed[:])
	b.Write(hp[:])
	b.WriteByte('-')
	b.WriteString(name)
	return StorePath{full: b.String(), dirLen: len(d)}, nil
}

// makeType appends ":<ref>" for each reference in Nix's order, and ":self".
func makeType(typ string, refs []StorePath, self bool) string {
	sorted := slices.Clone(refs)
	SortPaths(sorted)
	sorted = slices.Compact(sorted)
	var b strings.Builder
	b.WriteString(typ)
	for _, r := range sorted {
		b.WriteByte(':')
		b.WriteString(r.full)
	}
	if self {
		b.WriteString(":self")
	}
	return b.String()
}

// MakeSourcePath computes the path of a NAR-hashed (sha256, recursive) path, as
// nix-store --add and builtins.path make them.
func (d StoreDir) MakeSourcePath(name string, narHash nixhash.Hash, refs []StorePath, self bool) (StorePath, error) {
	if narHash.Algorithm() != nixhash.SHA256 {
		return StorePath{}, fmt.Errorf("make source path %q: %w: NAR hash must be sha256", name, ErrInvalid)
	}
	return d.MakeStorePath(makeType("source", refs, self), narHash, name)
}

// MakeTextPath computes the path of a text file (builtins.toFile, .drv files) whose
// sha256 is contentHash and which refers to refs.
func (d StoreDir) MakeTextPath(name string, contentHash nixhash.Hash, refs []StorePath) (StorePath, error) {
	if contentHash.Algorithm() != nixhash.SHA256 {
		return StorePath{}, fmt.Errorf("make text path %q: %w: text hash must be sha256", name, ErrInvalid)
	}
	return d.MakeStorePath(makeType("text", refs, false), contentHash, name)
}

// MakeFixedOutputPath computes the path for a content address: a text path for Text,
// a source path for Recursive sha256, and otherwise the "output:out" form, which
// allows no references.
func (d StoreDir) MakeFixedOutputPath(name string, ca nixhash.ContentAddress, refs []StorePath, self bool) (StorePath, error) {
	switch {
	case ca.Method == nixhash.Text:
		if self {
			return StorePath{}, fmt.Errorf("make fixed-output path %q: %w: text cannot refer to itself", name, ErrInvalid)
		}
		return d.MakeTextPath(name, ca.Hash, refs)
	case ca.Method == nixhash.Recursive && ca.Hash.Algorithm() == nixhash.SHA256:
		return d.MakeSourcePath(name, ca.Hash, refs, self)
	case ca.Method == nixhash.Recursive || ca.Method == nixhash.Flat:
		if len(refs) > 0 || self {
			return StorePath{}, fmt.Errorf("make fixed-output path %q: %w: %s content address allows no references", name, ErrInvalid, ca)
		}
		inner := nixhash.Sum(nixhash.SHA256, []byte("fixed:out:"+ca.Method.Prefix()+ca.Hash.Format(nixhash.Base16, true)+":"))
		return d.MakeStorePath("output:out", inner, name)
	}
	return StorePath{}, fmt.Errorf("make fixed-output path %q: %w: no content address", name, ErrInvalid)
}

// OutputPathName is the name of a derivation output's path: the derivation's name,
// plus "-<output>" unless the output is "out".
func OutputPathName(drvName, outputName string) string {
	if outputName == "out" {
		return drvName
	}
	return drvName + "-" + outputName
}

// MakeOutputPath computes the path of an input-addressed derivation output from the
// derivation's hash modulo fixed-output inputs.
func (d StoreDir) MakeOutputPath(outputName string, drvHashModulo nixhash.Hash, drvName string) (StorePath, error) {
	return d.MakeStorePath("output:"+outputName, drvHashModulo, OutputPathName(drvName, outputName))
}
