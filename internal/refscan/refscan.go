// Package refscan finds store path references in a byte stream.
//
// Vocabulary:
//
//	hash part   the 32 nixbase32 characters that open a store path's base name,
//	            e.g. "0c5l1gsz3ss1mbspz4ilgy1r4dwpcm4z" in /nix/store/0c5l…-hello-2.12
//	candidate   a hash part the caller asks about (the inputs and outputs of a build,
//	            the references declared for an added path)
//	reference   a candidate whose 32 characters occur anywhere in the scanned bytes
//
// Like Nix, the scanner looks for the bare hash part, not the store directory or the
// name, so a path counts as referenced wherever its hash part appears: in an ELF
// RPATH, in a compressed-looking blob, or inside a longer run of base-32 text.
//
// A Scanner is an io.Writer; feed it the NAR serialisation (or the file contents) in
// writes of any size, in the same pass that hashes them (io.MultiWriter), then ask
// Found. Matches split across writes are found; the scanner keeps at most 31 bytes
// between writes and never allocates while scanning.
package refscan

import (
	"fmt"
	"slices"

	"cairn/internal/nixbase32"
)

// HashPartLen is the length of a store path hash part in nixbase32 characters.
const HashPartLen = 32

// notDigit marks a byte outside the nixbase32 alphabet in digitOf.
const notDigit = 0xff

// digitOf maps a byte to its nixbase32 digit value, or notDigit.
var digitOf = func() (t [256]byte) {
	for i := range t {
		t[i] = notDigit
	}
	for i := 0; i < len(nixbase32.Alphabet); i++ {
		t[nixbase32.Alphabet[i]] = byte(i)
	}
	return t
}()

// filterBits is the number of leading digits' bits used by the prefilter: three
// digits of five bits each.
const filterBits = 15

// Scanner reports which candidate hash parts occur in the bytes written to it.
// The zero value has no candidates and finds nothing. A Scanner is not safe for
// concurrent use.
type Scanner struct {
	// candidates maps a hash part to whether it has been seen.
	candidates map[string]bool
	// filter has bit k set when some candidate's first three digits make k; a
	// window whose bit is clear needs no map lookup.
	filter [1 << filterBits / 64]uint64
	// carry holds the trailing run of alphabet bytes from earlier writes, at most
	// HashPartLen-1 long: the start of a match that later bytes may complete.
	carry    [HashPartLen - 1]byte
	carryLen int
	// joint is scratch space for scanning carry plus the head of the next write.
	joint  [2*HashPartLen - 2]byte
	nFound int
}

// New returns a scanner for the given candidate hash parts. Each must be exactly
// 32 nixbase32 characters; duplicates are allowed.
func New(hashParts []string) (*Scanner, error) {
	s := &Scanner{candidates: make(map[string]bool, len(hashParts))}
	for _, h := range hashParts {
		if err := validHashPart(h); err != nil {
			return nil, fmt.Errorf("refscan candidate %q: %w", h, err)
		}
		s.candidates[h] = false
		k := filterKey(h[0], h[1], h[2])
		s.filter[k/64] |= 1 << (k % 64)
	}
	return s, nil
}

func validHashPart(h string) error {
	if len(h) != HashPartLen {
		return fmt.Errorf("length %d, want %d", len(h), HashPartLen)
	}
	for i := 0; i < len(h); i++ {
		if digitOf[h[i]] == notDigit {
			return fmt.Errorf("character %q at %d is not a nixbase32 digit", h[i], i)
		}
	}
	return nil
}

func filterKey(a, b, c byte) uint32 {
	return uint32(digitOf[a])<<10 | uint32(digitOf[b])<<5 | uint32(digitOf[c])
}

// Write scans p. It never fails.
func (s *Scanner) Write(p []byte) (int, error) {
	if s.nFound == len(s.candidates) || len(p) == 0 {
		return len(p), nil
	}
	if s.carryLen > 0 {
		// Every window that starts in the carry ends within the first
		// HashPartLen-1 bytes of p; windows wholly inside p are scanned below.
		head := min(len(p), HashPartLen-1)
		n := copy(s.joint[:], s.carry[:s.carryLen])
		n += copy(s.joint[n:], p[:head])
		s.scan(s.joint[:n])
	}
	s.scan(p)
	s.updateCarry(p)
	return len(p), nil
}

// updateCarry keeps the trailing alphabet run of carry+p, at most HashPartLen-1
// bytes. A window that contains a non-alphabet byte can never match, so nothing
// before the last such byte needs keeping.
func (s *Scanner) updateCarry(p []byte) {
	run := 0
	for run < len(p) && run < HashPartLen-1 && digitOf[p[len(p)-1-run]] != notDigit {
		run++
	}
	if run == len(p) && run < HashPartLen-1 {
		// p is alphabet throughout and short: append it to the old carry.
		keep := min(s.carryLen, HashPartLen-1-run)
		copy(s.carry[:], s.carry[s.carryLen-keep:s.carryLen])
		copy(s.carry[keep:], p)
		s.carryLen = keep + run
		return
	}
	s.carryLen = copy(s.carry[:], p[len(p)-run:])
}

// scan looks up every 32-byte window of b that consists of alphabet bytes.
//
// The window [i, i+32) is tested from its last byte backwards: a non-alphabet
// byte at j rules out every window that contains j, so the next window to try
// starts at j+1 — a stride of up to 32 bytes on data with few alphabet bytes.
// Bytes in [i, verified) are already known to be alphabet and are not re-read.
func (s *Scanner) scan(b []byte) {
	i, verified := 0, 0
	for i+HashPartLen <= len(b) {
		end := i + HashPartLen - 1
		if digitOf[b[end]] == notDigit {
			i = end + 1
			verified = i
			continue
		}
		j := end - 1
		for j >= verified && digitOf[b[j]] != notDigit {
			j--
		}
		if j >= verified {
			i = j + 1
			verified = end + 1
			continue
		}
		// b[i:end+1] is all alphabet; slide one byte at a time while the run lasts.
		for {
			s.check(b[i : i+HashPartLen])
			if i+HashPartLen >= len(b) || digitOf[b[i+HashPartLen]] == notDigit {
				break
			}
			i++
		}
		i += HashPartLen + 1
		verified = i
	}
}

// check records w if it is a candidate. w is HashPartLen alphabet bytes.
func (s *Scanner) check(w []byte) {
	k := filterKey(w[0], w[1], w[2])
	if s.filter[k/64]&(1<<(k%64)) == 0 {
		return
	}
	if seen, ok := s.candidates[string(w)]; ok && !seen {
		s.candidates[string(w)] = true
		s.nFound++
	}
}

// Found returns the candidates seen so far, sorted. More writes may add to it.
func (s *Scanner) Found() []string {
	out := make([]string, 0, s.nFound)
	for h, seen := range s.candidates {
		if seen {
			out = append(out, h)
		}
	}
	slices.Sort(out)
	return out
}

// Has reports whether the candidate hashPart has been seen.
func (s *Scanner) Has(hashPart string) bool { return s.candidates[hashPart] }

// AllFound reports whether every candidate has been seen, after which further
// scanning cannot change the result.
func (s *Scanner) AllFound() bool { return s.nFound == len(s.candidates) }
