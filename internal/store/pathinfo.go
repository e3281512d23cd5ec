package store

import (
	"slices"
	"strings"
	"time"

	"cairn/internal/nixhash"
	"cairn/internal/storepath"
)

// PathInfo is the metadata of a valid store path, as the local database holds it
// and the daemon protocol sends it.
type PathInfo struct {
	Path    storepath.StorePath
	Deriver storepath.StorePath // zero when unknown
	// NarHash is the sha256 of the path's NAR serialisation.
	NarHash nixhash.Hash
	// References are the store paths the contents mention, possibly including
	// Path itself; sorted in Nix's order by every store method that returns them.
	References       []storepath.StorePath
	RegistrationTime time.Time // zero when unknown; stored as unix seconds
	NarSize          uint64    // 0 when unknown
	// Ultimate says the path was built locally rather than copied from elsewhere.
	Ultimate bool
	// Signatures are "keyname:base64" strings, sorted and without duplicates.
	Signatures []string
	// CA is the content address the path claims; zero for input-addressed paths.
	CA nixhash.ContentAddress
}

// Clone returns a deep copy of info.
func (info *PathInfo) Clone() *PathInfo {
	c := *info
	c.References = slices.Clone(info.References)
	c.Signatures = slices.Clone(info.Signatures)
	return &c
}

// HasSelfReference reports whether the path refers to itself.
func (info *PathInfo) HasSelfReference() bool {
	return slices.Contains(info.References, info.Path)
}

// ReferencesWithoutSelf returns the references other than Path itself.
func (info *PathInfo) ReferencesWithoutSelf() []storepath.StorePath {
	out := make([]storepath.StorePath, 0, len(info.References))
	for _, r := range info.References {
		if r != info.Path {
			out = append(out, r)
		}
	}
	return out
}

// ContentAddressed reports whether Path is the path CA, Path's name and the
// references give, i.e. whether the content-address claim is consistent. It
// says nothing about the files themselves. False when CA is zero.
func (info *PathInfo) ContentAddressed() bool {
	if info.CA.IsZero() {
		return false
	}
	p, err := info.Path.Dir().MakeFixedOutputPath(info.Path.Name(), info.CA, info.ReferencesWithoutSelf(), info.HasSelfReference())
	return err == nil && p == info.Path
}

// Fingerprint is the string a signature signs:
// "1;<path>;<narHash sha256:nix32>;<narSize>;<comma-joined references>".
func (info *PathInfo) Fingerprint() string {
	var b strings.Builder
	b.WriteString("1;")
	b.WriteString(info.Path.String())
	b.WriteByte(';')
	b.WriteString(info.NarHash.String())
	b.WriteByte(';')
	b.WriteString(uitoa(info.NarSize))
	b.WriteByte(';')
	refs := slices.Clone(info.References)
	storepath.SortPaths(refs)
	for i, r := range refs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(r.String())
	}
	return b.String()
}

func uitoa(n uint64) string {
	var buf [20]byte
	i := len(buf)
	for {
		i--
		buf[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(buf[i:])
		}
	}
}
