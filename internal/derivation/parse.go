package derivation

import (
	"encoding/base64"
	"fmt"
	"sort"
	"strings"

	"cairn/internal/nixhash"
	"cairn/internal/storepath"
)

// SyntaxError is a malformed ATerm: what was wrong, and at which byte offset.
type SyntaxError struct {
	Offset int    // byte offset into the input
	Msg    string // what was wrong
}

func (e *SyntaxError) Error() string { return fmt.Sprintf("offset %d: %s", e.Offset, e.Msg) }

// limits are the bounds a parser enforces; tests shrink them.
type limits struct {
	size, stringLen, outputs, list int
}

var defaultLimits = limits{size: MaxSize, stringLen: MaxStringLen, outputs: MaxOutputs, list: MaxListLen}

// Parse reads a derivation in ATerm form. Every store path in it must lie in storeDir.
// name is the derivation's name, which fixed output paths depend on: the .drv path's
// name without ".drv"; when it is "", env "name" is used.
//
// Parse accepts what Nix 2.8 reads, with a few stricter rules: duplicate outputs, env
// keys, inputs or output names are errors (Nix silently keeps one), and trailing
// bytes are an error. Entries need not be sorted. Parse does not call Validate.
func Parse(storeDir storepath.StoreDir, data []byte, name string) (*Derivation, error) {
	return parseLimits(storeDir, data, name, defaultLimits)
}

func parseLimits(storeDir storepath.StoreDir, data []byte, name string, lim limits) (*Derivation, error) {
	what := "derivation"
	if name != "" {
		what = "derivation " + name
	}
	if len(data) > lim.size {
		return nil, fmt.Errorf("parse %s: %d bytes is more than the limit of %d", what, len(data), lim.size)
	}
	p := &parser{data: data, storeDir: storeDir, lim: lim}
	d, err := p.derivation()
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", what, err)
	}
	d.Name = name
	if d.Name == "" {
		d.Name = d.Env["name"]
	}
	return d, nil
}

type parser struct {
	data     []byte
	pos      int
	storeDir storepath.StoreDir
	lim      limits
}

func (p *parser) errorf(at int, format string, args ...any) error {
	return &SyntaxError{Offset: at, Msg: fmt.Sprintf(format, args...)}
}

// found describes the byte at the current position for error messages.
func (p *parser) found() string {
	if p.pos >= len(p.data) {
		return "end of input"
	}
	return fmt.Sprintf("%q", p.data[p.pos])
}

// lit consumes the literal s.
func (p *parser) lit(s string) error {
	for i := 0; i < len(s); i++ {
		if p.pos >= len(p.data) || p.data[p.pos] != s[i] {
			return p.errorf(p.pos, "expected %q, found %s", s[i:], p.found())
		}
		p.pos++
	}
	return nil
}

// peek reports whether the next byte is c, without consuming it.
func (p *parser) peek(c byte) bool { return p.pos < len(p.data) && p.data[p.pos] == c }

// list parses "[" elem { "," elem } "]" (possibly empty), calling elem for each
// element, and allowing at most max elements.
func (p *parser) list(what string, max int, elem func() error) error {
	if err := p.lit("["); err != nil {
		return err
	}
	if p.peek(']') {
		p.pos++
		return nil
	}
	for n := 0; ; n++ {
		if n == max {
			return p.errorf(p.pos, "%s: more than %d entries", what, max)
		}
		if err := elem(); err != nil {
			return err
		}
		if p.peek(']') {
			p.pos++
			return nil
		}
		if err := p.lit(","); err != nil {
			return p.errorf(p.pos, "%s: expected \",\" or \"]\", found %s", what, p.found())
		}
	}
}

// str parses a quoted string, undoing escapes.
func (p *parser) str() (string, error) {
	start := p.pos
	if err := p.lit(`"`); err != nil {
		return "", err
	}
	body := p.pos
	// Fast path: no escapes, one allocation.
	for i := body; i < len(p.data); i++ {
		switch p.data[i] {
		case '"':
			if i-body > p.lim.stringLen {
				return "", p.errorf(start, "string longer than %d bytes", p.lim.stringLen)
			}
			p.pos = i + 1
			return string(p.data[body:i]), nil
		case '\\':
			return p.escapedStr(start)
		}
	}
	return "", p.errorf(start, "unterminated string")
}

func (p *parser) escapedStr(start int) (string, error) {
	// First pass: find the closing quote and the length without escapes, so the
	// result is allocated once and exactly.
	n, end := 0, -1
	for i := p.pos; i < len(p.data) && end < 0; i++ {
		switch p.data[i] {
		case '"':
			end = i
			continue
		case '\\':
			i++
			if i == len(p.data) {
				return "", p.errorf(i-1, "backslash at end of input")
			}
		}
		n++
	}
	if end < 0 {
		return "", p.errorf(start, "unterminated string")
	}
	if n > p.lim.stringLen {
		return "", p.errorf(start, "string longer than %d bytes", p.lim.stringLen)
	}
	var b strings.Builder
	b.Grow(n)
	for i := p.pos; i < end; i++ {
		c := p.data[i]
		if c == '\\' {
			i++
			switch c = p.data[i]; c {
			case 'n':
				c = '\n'
			case 'r':
				c = '\r'
			case 't':
				c = '\t'
			}
		}
		b.WriteByte(c)
	}
	p.pos = end + 1
	return b.String(), nil
}

// path parses a quoted store path in the parser's store dir.
func (p *parser) path() (storepath.StorePath, error) {
	at := p.pos
	s, err := p.str()
	if err != nil {
		return storepath.StorePath{}, err
	}
	sp, err := p.storeDir.Parse(s)
	if err != nil {
		return storepath.StorePath{}, p.errorf(at, "bad store path %q: %v", s, err)
	}
	return sp, nil
}

func (p *parser) derivation() (*Derivation, error) {
	d := &Derivation{
		Outputs:   make(map[string]Output),
		InputDrvs: make(map[storepath.StorePath][]string),
		InputSrcs: []storepath.StorePath{},
		Args:      []string{},
		Env:       make(map[string]string),
	}
	if err := p.lit("Derive("); err != nil {
		return nil, err
	}
	if err := p.list("outputs", p.lim.outputs, func() error { return p.output(d) }); err != nil {
		return nil, err
	}
	if len(d.Outputs) == 0 {
		return nil, p.errorf(p.pos, "no outputs")
	}
	if err := p.lit(","); err != nil {
		return nil, err
	}
	if err := p.list("input derivations", p.lim.list, func() error { return p.inputDrv(d) }); err != nil {
		return nil, err
	}
	if err := p.lit(","); err != nil {
		return nil, err
	}
	seen := make(map[storepath.StorePath]bool)
	err := p.list("input sources", p.lim.list, func() error {
		at := p.pos
		sp, err := p.path()
		if err != nil {
			return err
		}
		if seen[sp] {
			return p.errorf(at, "duplicate input source %s", sp)
		}
		seen[sp] = true
		d.InputSrcs = append(d.InputSrcs, sp)
		return nil
	})
	if err != nil {
		return nil, err
	}
	storepath.SortPaths(d.InputSrcs)
	if err := p.lit(","); err != nil {
		return nil, err
	}
	if d.Platform, err = p.str(); err != nil {
		return nil, err
	}
	if err := p.lit(","); err != nil {
		return nil, err
	}
	if d.Builder, err = p.str(); err != nil {
		return nil, err
	}
	if err := p.lit(","); err != nil {
		return nil, err
	}
	err = p.list("args", p.lim.list, func() error {
		s, err := p.str()
		d.Args = append(d.Args, s)
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := p.lit(","); err != nil {
		return nil, err
	}
	if err := p.list("env", p.lim.list, func() error { return p.envEntry(d) }); err != nil {
		return nil, err
	}
	if err := p.lit(")"); err != nil {
		return nil, err
	}
	if p.pos != len(p.data) {
		return nil, p.errorf(p.pos, "trailing data after derivation")
	}
	return d, nil
}

func (p *parser) output(d *Derivation) error {
	at := p.pos
	if err := p.lit("("); err != nil {
		return err
	}
	name, err := p.str()
	if err != nil {
		return err
	}
	if _, dup := d.Outputs[name]; dup {
		return p.errorf(at, "duplicate output %q", name)
	}
	var slots [3]string
	var slotAt [3]int
	for i := range slots {
		if err := p.lit(","); err != nil {
			return err
		}
		slotAt[i] = p.pos
		if slots[i], err = p.str(); err != nil {
			return err
		}
	}
	if err := p.lit(")"); err != nil {
		return err
	}
	pathS, algoS, hashS := slots[0], slots[1], slots[2]
	var o Output
	if pathS != "" {
		if o.Path, err = p.storeDir.Parse(pathS); err != nil {
			return p.errorf(slotAt[0], "output %q: bad store path %q: %v", name, pathS, err)
		}
	}
	if algoS == "" {
		if hashS != "" {
			return p.errorf(slotAt[2], "output %q: hash %q without hash algorithm", name, hashS)
		}
		d.Outputs[name] = o // input-addressed, or deferred when there is no path
		return nil
	}
	if o.Method, o.HashAlgo, err = nixhash.ParseMethodAlgo(algoS); err != nil || o.Method == nixhash.Text {
		return p.errorf(slotAt[1], "output %q: bad hash algorithm %q", name, algoS)
	}
	switch hashS {
	case "":
		if pathS != "" {
			return p.errorf(slotAt[0], "output %q: floating content-addressed output has a path", name)
		}
	case "impure":
		if pathS != "" {
			return p.errorf(slotAt[0], "output %q: impure output has a path", name)
		}
		o.Impure = true
	default:
		if pathS == "" {
			return p.errorf(slotAt[0], "output %q: fixed output has no path", name)
		}
		if o.Hash, err = parseDigest(hashS, o.HashAlgo); err != nil {
			return p.errorf(slotAt[2], "output %q: %v", name, err)
		}
	}
	d.Outputs[name] = o
	return nil
}

func (p *parser) inputDrv(d *Derivation) error {
	if err := p.lit("("); err != nil {
		return err
	}
	at := p.pos
	sp, err := p.path()
	if err != nil {
		return err
	}
	if _, dup := d.InputDrvs[sp]; dup {
		return p.errorf(at, "duplicate input derivation %s", sp)
	}
	if err := p.lit(","); err != nil {
		return err
	}
	outs := []string{}
	listAt := p.pos
	err = p.list("output names", p.lim.list, func() error {
		s, err := p.str()
		outs = append(outs, s)
		return err
	})
	if err != nil {
		return err
	}
	if err := p.lit(")"); err != nil {
		return err
	}
	sort.Strings(outs)
	for i := 1; i < len(outs); i++ {
		if outs[i] == outs[i-1] {
			return p.errorf(listAt, "duplicate output name %q", outs[i])
		}
	}
	d.InputDrvs[sp] = outs
	return nil
}

func (p *parser) envEntry(d *Derivation) error {
	if err := p.lit("("); err != nil {
		return err
	}
	at := p.pos
	k, err := p.str()
	if err != nil {
		return err
	}
	if _, dup := d.Env[k]; dup {
		return p.errorf(at, "duplicate env key %q", k)
	}
	if err := p.lit(","); err != nil {
		return err
	}
	v, err := p.str()
	if err != nil {
		return err
	}
	if err := p.lit(")"); err != nil {
		return err
	}
	d.Env[k] = v
	return nil
}

// parseDigest parses the bare digest of a fixed output, in base16 (as Nix writes it),
// nix32 or base64 (as Nix 2.8 also reads it).
func parseDigest(s string, a nixhash.Algorithm) (nixhash.Hash, error) {
	if strings.ContainsAny(s, ":-") {
		return nixhash.Hash{}, fmt.Errorf("hash %q has a prefix", s)
	}
	// A base64 digest of a whole number of bytes ends in its padding; checking it
	// here also keeps nixhash.ParseAny from decoding a digest longer than a's size.
	if n := a.Size(); len(s) == base64.StdEncoding.EncodedLen(n) && len(s) != 2*n {
		if pad := strings.Repeat("=", (3-n%3)%3); !strings.HasSuffix(s, pad) || strings.Count(s, "=") != len(pad) {
			return nixhash.Hash{}, fmt.Errorf("hash %q: bad base64 padding", s)
		}
	}
	return nixhash.ParseAny(s, a)
}
