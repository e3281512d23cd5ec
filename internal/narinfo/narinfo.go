// Package narinfo reads and writes Nix binary cache .narinfo files, and signs and
// verifies store path fingerprints with Nix's ed25519 keys.
//
// Grammar (one field per line, every line ending in "\n"):
//
//	narinfo    = { line }
//	line       = key ": " value "\n"
//	StorePath  = full store path                       required
//	URL        = nar/<nix32 file hash>.nar[.xz|.bz2|…]  required
//	Compression= none | xz | bzip2 | zstd | br | …      absent means bzip2
//	FileHash   = algo ":" digest (nix32 when written)
//	FileSize   = decimal
//	NarHash    = algo ":" digest                        required
//	NarSize    = decimal, non-zero                      required
//	References = base names separated by " "            may be empty
//	Deriver    = base name | "unknown-deriver"
//	System     = e.g. x86_64-linux
//	Sig        = keyname ":" base64(64 bytes)           one line per signature
//	CA         = content address (text:… / fixed:…)
//
// Nix writes the fields in exactly this order, References always (even empty, as
// "References: "), Deriver, System and CA only when set, and FileHash/FileSize only
// for cached NARs; Parse accepts them in any order and, like Nix, skips keys it does
// not know. Unlike Nix it rejects a repeated single-valued key, a line without ": ",
// and a malformed Sig; references and signatures are kept sorted and unique, as
// Nix's sets keep them.
//
// Signatures sign a path's fingerprint:
//
//	"1;" storePath ";" narHash(algo:nix32) ";" narSize ";" comma-joined full reference paths, sorted
//
// Key and signature text forms are "name:" followed by base64 of the ed25519 secret
// key (64 bytes, seed then public key), public key (32) or signature (64).
package narinfo

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"cairn/internal/nixhash"
	"cairn/internal/storepath"
)

// Limits on text read from outside.
const (
	// MaxReferences bounds the number of references a narinfo may list.
	MaxReferences = 1 << 14
	// MaxLineLen bounds one line, newline included: room for MaxReferences
	// maximal base names.
	MaxLineLen = len("References: ") + MaxReferences*(storepath.HashPartLen+1+storepath.MaxNameLen+1)
	// MaxLines bounds the number of lines, unknown keys and signatures included.
	MaxLines = 4096
)

// unknownDeriver is the Deriver value meaning no deriver.
const unknownDeriver = "unknown-deriver"

// defaultCompression is what a narinfo without a Compression line means.
const defaultCompression = "bzip2"

// NarInfo is the parsed contents of a .narinfo file.
type NarInfo struct {
	StorePath   storepath.StorePath
	URL         string // relative to the cache root, e.g. "nar/<nix32>.nar.xz"
	Compression string
	FileHash    nixhash.Hash // hash of the file at URL; zero if not given
	FileSize    uint64
	NarHash     nixhash.Hash
	NarSize     uint64
	References  []storepath.StorePath // in the same store dir as StorePath
	Deriver     storepath.StorePath   // zero if unknown
	System      string                // "" if not given
	Sigs        []Signature
	CA          nixhash.ContentAddress // zero if not content-addressed
}

// ParseError reports malformed narinfo text.
type ParseError struct {
	Line int // 1-based; 0 for a problem with the text as a whole
	Err  error
}

func (e *ParseError) Error() string {
	if e.Line == 0 {
		return "parse narinfo: " + e.Err.Error()
	}
	return fmt.Sprintf("parse narinfo line %d: %v", e.Line, e.Err)
}

func (e *ParseError) Unwrap() error { return e.Err }

// Parse reads a narinfo whose paths live in storeDir. Errors from r are returned
// wrapped; malformed text gives a *ParseError.
func Parse(storeDir storepath.StoreDir, r io.Reader) (*NarInfo, error) {
	p := parser{storeDir: storeDir, br: bufio.NewReader(r), ni: new(NarInfo)}
	if err := p.parse(); err != nil {
		return nil, err
	}
	return p.ni, nil
}

// ParseString is Parse on a string.
func ParseString(storeDir storepath.StoreDir, s string) (*NarInfo, error) {
	return Parse(storeDir, strings.NewReader(s))
}

type parser struct {
	storeDir storepath.StoreDir
	br       *bufio.Reader
	ni       *NarInfo
	line     int
	buf      []byte
	seen     map[string]bool
}

func (p *parser) errorf(format string, args ...any) error {
	return &ParseError{Line: p.line, Err: fmt.Errorf(format, args...)}
}

// readLine returns the next line without its "\n", or io.EOF after the last one.
func (p *parser) readLine() ([]byte, error) {
	p.buf = p.buf[:0]
	for {
		chunk, err := p.br.ReadSlice('\n')
		if len(p.buf)+len(chunk) > MaxLineLen {
			return nil, p.errorf("line longer than %d bytes", MaxLineLen)
		}
		p.buf = append(p.buf, chunk...)
		switch {
		case err == nil:
			return p.buf[:len(p.buf)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF):
			if len(p.buf) > 0 {
				return nil, p.errorf("missing newline at end of text")
			}
			return nil, io.EOF
		default:
			return nil, fmt.Errorf("read narinfo: %w", err)
		}
	}
}

func (p *parser) parse() error {
	p.seen = make(map[string]bool)
	for {
		p.line++
		line, err := p.readLine()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if p.line > MaxLines {
			return p.errorf("more than %d lines", MaxLines)
		}
		key, value, ok := bytes.Cut(line, []byte(": "))
		if !ok {
			return p.errorf("expecting \"key: value\"")
		}
		if err := p.field(string(key), string(value)); err != nil {
			return err
		}
	}
	p.line = 0
	ni := p.ni
	switch {
	case ni.StorePath.IsZero():
		return p.errorf("StorePath missing")
	case ni.NarHash.IsZero():
		return p.errorf("NarHash missing")
	case ni.URL == "":
		return p.errorf("URL missing")
	case ni.NarSize == 0:
		return p.errorf("NarSize missing or zero")
	}
	if ni.Compression == "" {
		ni.Compression = defaultCompression
	}
	return nil
}

// field stores one key's value.
func (p *parser) field(key, value string) error {
	ni := p.ni
	switch key {
	case "StorePath", "URL", "Compression", "FileHash", "FileSize", "NarHash", "NarSize",
		"References", "Deriver", "System", "CA":
		if p.seen[key] {
			return p.errorf("repeated %s", key)
		}
		p.seen[key] = true
	case "Sig":
	default:
		return nil // unknown keys are skipped, as Nix skips them
	}
	var err error
	switch key {
	case "StorePath":
		ni.StorePath, err = p.storeDir.Parse(value)
	case "URL":
		ni.URL = value
	case "Compression":
		ni.Compression = value
	case "FileHash":
		ni.FileHash, err = nixhash.Parse(value)
	case "FileSize":
		ni.FileSize, err = parseSize(value)
	case "NarHash":
		ni.NarHash, err = nixhash.Parse(value)
	case "NarSize":
		ni.NarSize, err = parseSize(value)
	case "References":
		ni.References, err = p.parseRefs(value)
	case "Deriver":
		if value != unknownDeriver {
			ni.Deriver, err = p.storeDir.FromBase(value)
		}
	case "System":
		ni.System = value
	case "Sig":
		var sig Signature
		if sig, err = ParseSignature(value); err == nil {
			ni.Sigs = insertSig(ni.Sigs, sig)
		}
	case "CA":
		if value != "" {
			ni.CA, err = nixhash.ParseContentAddress(value)
		}
	}
	if err != nil {
		return p.errorf("%s: %w", key, err)
	}
	return nil
}

func parseSize(s string) (uint64, error) {
	if s == "" || s[0] < '0' || s[0] > '9' {
		return 0, fmt.Errorf("invalid number %q", s)
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid number %q", s)
	}
	return n, nil
}

func (p *parser) parseRefs(value string) ([]storepath.StorePath, error) {
	var refs []storepath.StorePath
	for f := range strings.SplitSeq(value, " ") {
		if f == "" {
			continue // Nix's tokenizer skips empty tokens
		}
		if len(refs) == MaxReferences {
			return nil, fmt.Errorf("more than %d references", MaxReferences)
		}
		ref, err := p.storeDir.FromBase(f)
		if err != nil {
			return nil, err
		}
		refs = append(refs, ref)
	}
	return sortRefs(refs), nil
}

// sortRefs sorts refs in Nix's order and drops duplicates, in place.
func sortRefs(refs []storepath.StorePath) []storepath.StorePath {
	storepath.SortPaths(refs)
	return slices.Compact(refs)
}

// insertSig adds sig to the sorted set sigs.
func insertSig(sigs []Signature, sig Signature) []Signature {
	i, found := slices.BinarySearchFunc(sigs, sig, compareSigs)
	if found {
		return sigs
	}
	return slices.Insert(sigs, i, sig)
}

func compareSigs(a, b Signature) int { return strings.Compare(a.String(), b.String()) }

// Validate checks that ni can be written and read back: the required fields are
// set, every reference and the deriver share the store dir of StorePath, and no
// free-text field holds a newline.
func (ni *NarInfo) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("narinfo %s: "+format, append([]any{ni.StorePath}, args...)...)
	}
	switch {
	case ni.StorePath.IsZero():
		return errors.New("narinfo: StorePath missing")
	case ni.URL == "":
		return bad("URL missing")
	case ni.Compression == "":
		return bad("Compression missing")
	case ni.NarHash.IsZero():
		return bad("NarHash missing")
	case ni.NarSize == 0:
		return bad("NarSize is zero")
	case len(ni.References) > MaxReferences:
		return bad("more than %d references", MaxReferences)
	case len(ni.Sigs) > MaxLines/2:
		return bad("more than %d signatures", MaxLines/2)
	}
	for _, f := range []struct{ key, value string }{{"URL", ni.URL}, {"Compression", ni.Compression}, {"System", ni.System}} {
		if strings.ContainsAny(f.value, "\n") {
			return bad("%s contains a newline", f.key)
		}
	}
	dir := ni.StorePath.Dir()
	for _, r := range ni.References {
		if r.Dir() != dir {
			return bad("reference %s is not in store dir %s", r, dir)
		}
	}
	if !ni.Deriver.IsZero() && ni.Deriver.Dir() != dir {
		return bad("deriver %s is not in store dir %s", ni.Deriver, dir)
	}
	for _, s := range ni.Sigs {
		if s.IsZero() {
			return bad("zero signature")
		}
	}
	return nil
}

// MarshalText returns the narinfo as Nix writes it, after Validate.
func (ni *NarInfo) MarshalText() ([]byte, error) {
	if err := ni.Validate(); err != nil {
		return nil, err
	}
	return []byte(ni.String()), nil
}

// WriteTo writes the narinfo text to w, after Validate.
func (ni *NarInfo) WriteTo(w io.Writer) (int64, error) {
	b, err := ni.MarshalText()
	if err != nil {
		return 0, err
	}
	n, err := w.Write(b)
	return int64(n), err
}

// String returns the narinfo text in Nix's field order and format. It does not
// validate; use MarshalText or WriteTo for text that must be read back.
func (ni *NarInfo) String() string {
	var b strings.Builder
	line := func(key, value string) {
		b.WriteString(key)
		b.WriteString(": ")
		b.WriteString(value)
		b.WriteByte('\n')
	}
	line("StorePath", ni.StorePath.String())
	line("URL", ni.URL)
	line("Compression", ni.Compression)
	if !ni.FileHash.IsZero() {
		line("FileHash", ni.FileHash.String())
	}
	if !ni.FileHash.IsZero() || ni.FileSize != 0 {
		line("FileSize", strconv.FormatUint(ni.FileSize, 10))
	}
	line("NarHash", ni.NarHash.String())
	line("NarSize", strconv.FormatUint(ni.NarSize, 10))
	refs := sortRefs(slices.Clone(ni.References))
	bases := make([]string, len(refs))
	for i, r := range refs {
		bases[i] = r.Base()
	}
	line("References", strings.Join(bases, " "))
	if !ni.Deriver.IsZero() {
		line("Deriver", ni.Deriver.Base())
	}
	if ni.System != "" {
		line("System", ni.System)
	}
	sigs := slices.Clone(ni.Sigs)
	slices.SortFunc(sigs, compareSigs)
	for i, s := range sigs {
		if i > 0 && s == sigs[i-1] {
			continue
		}
		line("Sig", s.String())
	}
	if !ni.CA.IsZero() {
		line("CA", ni.CA.String())
	}
	return b.String()
}

// Fingerprint returns the string Nix signs for a store path:
//
//	1;<path>;<narHash as algo:nix32>;<narSize>;<full reference paths, sorted, comma-joined>
func Fingerprint(path storepath.StorePath, narHash nixhash.Hash, narSize uint64, refs []storepath.StorePath) (string, error) {
	switch {
	case path.IsZero():
		return "", errors.New("fingerprint: no store path")
	case narHash.IsZero():
		return "", fmt.Errorf("fingerprint %s: NAR hash unknown", path)
	case narSize == 0:
		return "", fmt.Errorf("fingerprint %s: NAR size unknown", path)
	}
	full := make([]string, len(refs))
	for i, r := range refs {
		full[i] = r.String()
	}
	slices.Sort(full)
	full = slices.Compact(full)
	return "1;" + path.String() + ";" + narHash.String() + ";" + strconv.FormatUint(narSize, 10) + ";" + strings.Join(full, ","), nil
}

// Fingerprint returns the fingerprint of the path ni describes.
func (ni *NarInfo) Fingerprint() (string, error) {
	return Fingerprint(ni.StorePath, ni.NarHash, ni.NarSize, ni.References)
}

// Sign adds k's signature of ni's fingerprint to the set of signatures, as Nix's
// addSignatures does.
func (ni *NarInfo) Sign(k SecretKey) error {
	fp, err := ni.Fingerprint()
	if err != nil {
		return err
	}
	slices.SortFunc(ni.Sigs, compareSigs)
	ni.Sigs = insertSig(ni.Sigs, k.Sign(fp))
	return nil
}

// Verify reports whether one of ni's signatures is valid under a trusted key.
func (ni *NarInfo) Verify(trusted []PublicKey) bool {
	fp, err := ni.Fingerprint()
	return err == nil && VerifyAny(fp, ni.Sigs, trusted)
}
