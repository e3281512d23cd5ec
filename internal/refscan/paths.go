package refscan

import (
	"slices"

	"cairn/internal/storepath"
)

// PathScanner is a Scanner whose candidates are store paths: the inputs and
// outputs of a build, or the references declared for an added path.
type PathScanner struct {
	Scanner
	byHash map[string][]storepath.StorePath
}

// NewForPaths returns a scanner for the hash parts of paths. Zero paths and
// repeats are ignored.
func NewForPaths(paths []storepath.StorePath) *PathScanner {
	s := &PathScanner{byHash: make(map[string][]storepath.StorePath, len(paths))}
	parts := make([]string, 0, len(paths))
	for _, p := range paths {
		if p.IsZero() {
			continue
		}
		h := p.HashPart()
		known, ok := s.byHash[h]
		if !ok {
			parts = append(parts, h)
		}
		if !slices.Contains(known, p) {
			s.byHash[h] = append(known, p)
		}
	}
	// A StorePath's hash part is valid by construction, so New cannot fail.
	inner, _ := New(parts)
	s.Scanner = *inner
	return s
}

// FoundPaths returns the candidate paths whose hash parts were seen, in Nix's
// order (storepath.SortPaths).
func (s *PathScanner) FoundPaths() []storepath.StorePath {
	var out []storepath.StorePath
	for _, h := range s.Found() {
		out = append(out, s.byHash[h]...)
	}
	storepath.SortPaths(out)
	return out
}
