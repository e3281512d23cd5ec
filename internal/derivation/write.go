package derivation

import (
	"io"
)

// Bytes returns d in ATerm form, exactly as Nix writes it.
func (d *Derivation) Bytes() []byte {
	return d.appendATerm(make([]byte, 0, d.sizeHint()), false, nil)
}

// Write writes d in ATerm form, exactly as Nix writes it.
func (d *Derivation) Write(w io.Writer) error {
	_, err := w.Write(d.Bytes())
	return err
}

// hashedInput replaces an input derivation when hashing modulo: the base16
// HashModulo of the input and the outputs used.
type hashedInput struct {
	key  string
	outs []string
}

// sizeHint estimates the ATerm size, to allocate once.
func (d *Derivation) sizeHint() int {
	n := 64 + len(d.Platform) + len(d.Builder)
	for name, o := range d.Outputs {
		n += 16 + len(name) + len(o.Path.String()) + 2*o.Hash.Algorithm().Size() + 8
	}
	for p, outs := range d.InputDrvs {
		n += 8 + len(p.String())
		for _, o := range outs {
			n += 3 + len(o)
		}
	}
	for _, p := range d.InputSrcs {
		n += 3 + len(p.String())
	}
	for _, a := range d.Args {
		n += 3 + len(a) + len(a)/16
	}
	for k, v := range d.Env {
		n += 8 + len(k) + len(v) + len(v)/16
	}
	return n
}

// appendATerm appends the ATerm form of d to dst. With mask, output paths and the
// env entries named like outputs are empty. With inputs non-nil, they stand in for
// InputDrvs (already sorted by key), as hashDerivationModulo wants.
func (d *Derivation) appendATerm(dst []byte, mask bool, inputs []hashedInput) []byte {
	dst = append(dst, "Derive(["...)
	for i, name := range d.OutputNames() {
		o := d.Outputs[name]
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, '(')
		dst = appendRaw(dst, name)
		dst = append(dst, ',')
		if mask || o.Path.IsZero() {
			dst = appendRaw(dst, "")
		} else {
			dst = appendRaw(dst, o.Path.String())
		}
		dst = append(dst, ',')
		dst = appendRaw(dst, o.hashAlgoString())
		dst = append(dst, ',')
		dst = appendRaw(dst, o.hashString())
		dst = append(dst, ')')
	}
	dst = append(dst, "],["...)
	if inputs != nil {
		for i, in := range inputs {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, '(')
			dst = appendRaw(dst, in.key)
			dst = append(dst, ',')
			dst = appendRawList(dst, in.outs)
			dst = append(dst, ')')
		}
	} else {
		for i, p := range d.inputDrvPaths() {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, '(')
			dst = appendRaw(dst, p.String())
			dst = append(dst, ',')
			dst = appendRawList(dst, d.InputDrvs[p])
			dst = append(dst, ')')
		}
	}
	dst = append(dst, "],["...)
	for i, p := range d.InputSrcs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendRaw(dst, p.String())
	}
	dst = append(dst, "],"...)
	dst = appendRaw(dst, d.Platform)
	dst = append(dst, ',')
	dst = appendEscaped(dst, d.Builder)
	dst = append(dst, ",["...)
	for i, a := range d.Args {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendEscaped(dst, a)
	}
	dst = append(dst, "],["...)
	for i, k := range d.envKeys() {
		if i > 0 {
			dst = append(dst, ',')
		}
		v := d.Env[k]
		if _, isOutput := d.Outputs[k]; mask && isOutput {
			v = ""
		}
		dst = append(dst, '(')
		dst = appendEscaped(dst, k)
		dst = append(dst, ',')
		dst = appendEscaped(dst, v)
		dst = append(dst, ')')
	}
	return append(dst, "])"...)
}

// appendRaw appends s quoted but unescaped, as Nix's printUnquotedString does.
func appendRaw(dst []byte, s string) []byte {
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

func appendRawList(dst []byte, ss []string) []byte {
	dst = append(dst, '[')
	for i, s := range ss {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendRaw(dst, s)
	}
	return append(dst, ']')
}

// appendEscaped appends s quoted, escaping " \ LF CR TAB.
func appendEscaped(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		var esc string
		switch s[i] {
		case '"':
			esc = `\"`
		case '\\':
			esc = `\\`
		case '\n':
			esc = `\n`
		case '\r':
			esc = `\r`
		case '\t':
			esc = `\t`
		default:
			continue
		}
		dst = append(dst, s[start:i]...)
		dst = append(dst, esc...)
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
