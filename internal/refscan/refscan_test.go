package refscan

import (
	"bytes"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"cairn/internal/nixbase32"
	"cairn/internal/storepath"
)

const (
	hashA = "0c5l1gsz3ss1mbspz4ilgy1r4dwpcm4z"
	hashB = "7ik8gcmz6ssl2cbq5yvpfpx6yhijnvzg"
	hashC = "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"
	hashD = "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz0"
)

var candidates = []string{hashA, hashB, hashC, hashD}

// naive is the obvious quadratic reference: every 32-byte substring looked up.
func naive(cands []string, data []byte) []string {
	set := make(map[string]bool)
	for _, c := range cands {
		set[c] = true
	}
	found := make(map[string]bool)
	for i := 0; i+HashPartLen <= len(data); i++ {
		if w := string(data[i : i+HashPartLen]); set[w] {
			found[w] = true
		}
	}
	out := make([]string, 0, len(found))
	for h := range found {
		out = append(out, h)
	}
	slices.Sort(out)
	return out
}

func mustNew(t testing.TB, cands []string) *Scanner {
	t.Helper()
	s, err := New(cands)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func sorted(xs ...string) []string {
	xs = slices.Clone(xs)
	slices.Sort(xs)
	if xs == nil {
		xs = []string{}
	}
	return xs
}

var scanTests = []struct {
	name string
	data string
	want []string
}{
	{"empty", "", nil},
	{"no match", "hello world, no store paths here", nil},
	{"exact", hashA, []string{hashA}},
	{"store path", "/nix/store/" + hashA + "-hello-2.12/bin/hello", []string{hashA}},
	{"prefix only", hashA[:31], nil},
	{"one char off", hashA[:31] + "0", nil},
	{"two adjacent", hashA + hashB, []string{hashA, hashB}},
	{"adjacent with separator", hashA + "-" + hashB, []string{hashA, hashB}},
	{"inside longer run", "abc" + hashB + "xyz", []string{hashB}},
	{"overlapping windows", "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz0", []string{hashC, hashD}},
	{"long run of z", strings.Repeat("z", 100), []string{hashC}},
	{"broken by e", hashA[:10] + "e" + hashA[11:], nil},
	{"broken by upper case", hashA[:2] + "C" + hashA[3:], nil},
	{"binary around", "\x00\xff\x01" + hashB + "\x00", []string{hashB}},
	{"after many non-alphabet", strings.Repeat("\x00", 77) + hashA, []string{hashA}},
	{"twice", hashA + "\n" + hashA, []string{hashA}},
	{"all four", "x" + hashA + "/" + hashB + "\x00zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz0.", []string{hashA, hashB, hashC, hashD}},
	{"non-candidate hash", "/nix/store/ffffffffffffffffffffffffffffffff-x", nil},
}

func TestScanner(t *testing.T) {
	for _, tt := range scanTests {
		t.Run(tt.name, func(t *testing.T) {
			want := sorted(tt.want...)
			if got := naive(candidates, []byte(tt.data)); !slices.Equal(got, want) {
				t.Fatalf("naive reference disagrees with the table: got %q, want %q", got, want)
			}
			s := mustNew(t, candidates)
			s.Write([]byte(tt.data))
			if got := s.Found(); !slices.Equal(got, want) {
				t.Errorf("one write: Found() = %q, want %q", got, want)
			}
		})
	}
}

// TestScannerSplit writes each table input in two pieces, at every split point,
// and in single bytes.
func TestScannerSplit(t *testing.T) {
	for _, tt := range scanTests {
		t.Run(tt.name, func(t *testing.T) {
			want := sorted(tt.want...)
			data := []byte(tt.data)
			for cut := 0; cut <= len(data); cut++ {
				s := mustNew(t, candidates)
				s.Write(data[:cut])
				s.Write(data[cut:])
				if got := s.Found(); !slices.Equal(got, want) {
					t.Errorf("split at %d: Found() = %q, want %q", cut, got, want)
				}
			}
			s := mustNew(t, candidates)
			for i := range data {
				s.Write(data[i : i+1])
			}
			if got := s.Found(); !slices.Equal(got, want) {
				t.Errorf("byte at a time: Found() = %q, want %q", got, want)
			}
		})
	}
}

func TestNewRejectsBadCandidates(t *testing.T) {
	for _, bad := range []string{"", hashA[:31], hashA + "0", "e" + hashA[1:], "A" + hashA[1:]} {
		if _, err := New([]string{hashA, bad}); err == nil {
			t.Errorf("New(%q) succeeded, want error", bad)
		}
	}
}

func TestHasAndAllFound(t *testing.T) {
	s := mustNew(t, []string{hashA, hashB})
	s.Write([]byte(hashA))
	if !s.Has(hashA) || s.Has(hashB) || s.AllFound() {
		t.Fatalf("after hashA: Has(A)=%v Has(B)=%v AllFound=%v", s.Has(hashA), s.Has(hashB), s.AllFound())
	}
	s.Write([]byte(hashB))
	if !s.AllFound() {
		t.Fatal("AllFound false after both")
	}
	var zero Scanner
	zero.Write([]byte(hashA))
	if got := zero.Found(); len(got) != 0 {
		t.Errorf("zero Scanner found %q", got)
	}
}

// randomData builds data dense in near-misses: random bytes mixed with runs of
// alphabet characters, candidate hash parts and mutated candidates.
func randomData(r *rand.Rand, cands []string, n int) []byte {
	var b bytes.Buffer
	for b.Len() < n {
		switch r.IntN(6) {
		case 0:
			for range r.IntN(40) {
				b.WriteByte(byte(r.IntN(256)))
			}
		case 1:
			for range r.IntN(70) {
				b.WriteByte(nixbase32.Alphabet[r.IntN(32)])
			}
		case 2:
			b.WriteString(cands[r.IntN(len(cands))])
		case 3:
			c := []byte(cands[r.IntN(len(cands))])
			c[r.IntN(len(c))] = nixbase32.Alphabet[r.IntN(32)]
			b.Write(c)
		case 4:
			c := cands[r.IntN(len(cands))]
			b.WriteString(c[r.IntN(len(c)):])
		case 5:
			b.WriteByte("\x00/-.e"[r.IntN(5)])
		}
	}
	return b.Bytes()[:n]
}

func randomHashPart(r *rand.Rand) string {
	b := make([]byte, HashPartLen)
	for i := range b {
		b[i] = nixbase32.Alphabet[r.IntN(32)]
	}
	return string(b)
}

// TestScannerProperty compares the scanner with the naive version on random
// inputs written in random pieces.
func TestScannerProperty(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for iter := range 2000 {
		cands := []string{randomHashPart(r), randomHashPart(r), hashC}
		// Candidates sharing long prefixes make near-misses likely.
		cands = append(cands, cands[0][:20]+randomHashPart(r)[:12])
		data := randomData(r, cands, r.IntN(400))
		// Sometimes leave a candidate out, so the data holds non-candidate hashes.
		cands = cands[:len(cands)-r.IntN(2)]
		want := naive(cands, data)
		s := mustNew(t, cands)
		for rest := data; len(rest) > 0; {
			n := min(len(rest), 1+r.IntN(50))
			s.Write(rest[:n])
			rest = rest[n:]
		}
		if got := s.Found(); !slices.Equal(got, want) {
			t.Fatalf("iteration %d: Found() = %q, want %q\ndata %q", iter, got, want, data)
		}
	}
}

func FuzzScanner(f *testing.F) {
	for _, tt := range scanTests {
		f.Add([]byte(tt.data), uint8(7))
	}
	f.Add([]byte(hashA+hashB+hashC), uint8(31))
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		want := naive(candidates, data)
		s := mustNew(t, candidates)
		step := int(chunk) + 1
		for rest := data; len(rest) > 0; {
			n := min(len(rest), step)
			s.Write(rest[:n])
			rest = rest[n:]
			step = step*7%61 + 1
		}
		if got := s.Found(); !slices.Equal(got, want) {
			t.Fatalf("Found() = %q, want %q", got, want)
		}
	})
}

func benchScan(b *testing.B, data []byte, nCands int) {
	r := rand.New(rand.NewPCG(3, 4))
	cands := make([]string, nCands)
	for i := range cands {
		cands[i] = randomHashPart(r)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		s, _ := New(cands)
		for off := 0; off < len(data); off += 32 << 10 {
			s.Write(data[off:min(len(data), off+32<<10)])
		}
	}
}

const benchSize = 8 << 20

func BenchmarkScanRandom(b *testing.B) {
	data := make([]byte, benchSize)
	rand.NewChaCha8([32]byte{5, 6}).Read(data)
	benchScan(b, data, 100)
}

func BenchmarkScanZeros(b *testing.B) {
	benchScan(b, make([]byte, benchSize), 100)
}

// BenchmarkScanText scans English-like text: many short alphabet runs.
func BenchmarkScanText(b *testing.B) {
	words := strings.Fields("the quick brown fox jumps over the lazy dog while configure checks for gcc and make install prefix lib64 usr share")
	r := rand.New(rand.NewPCG(7, 8))
	var buf bytes.Buffer
	for buf.Len() < benchSize {
		buf.WriteString(words[r.IntN(len(words))])
		buf.WriteByte(" \n"[r.IntN(2)])
	}
	benchScan(b, buf.Bytes()[:benchSize], 100)
}

// BenchmarkScanAlphabet is the worst case: one endless run of alphabet bytes,
// so every position is a window to look up.
func BenchmarkScanAlphabet(b *testing.B) {
	data := make([]byte, benchSize)
	r := rand.New(rand.NewPCG(9, 10))
	for i := range data {
		data[i] = nixbase32.Alphabet[r.IntN(32)]
	}
	benchScan(b, data, 1000)
}

func TestNewForPaths(t *testing.T) {
	var paths []storepath.StorePath
	for _, s := range []string{
		"/nix/store/" + hashA + "-hello-2.12",
		"/nix/store/" + hashB + "-glibc-2.35",
		"/nix/store/" + hashC + "-unused",
		"/nix/store/" + hashA + "-hello-2.12", // duplicate
	} {
		p, err := storepath.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	s := NewForPaths(append(paths, storepath.StorePath{}))
	// A reference to glibc split across writes, and hello's hash without its name.
	io.WriteString(s, "RPATH=/nix/store/"+hashB[:10])
	io.WriteString(s, hashB[10:]+"-glibc-2.35/lib:"+hashA)
	got := s.FoundPaths()
	want := []storepath.StorePath{paths[1], paths[0]}
	storepath.SortPaths(want)
	if !slices.Equal(got, want) {
		t.Errorf("FoundPaths() = %v, want %v", got, want)
	}
}
