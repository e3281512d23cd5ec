package derivation

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"

	"cairn/internal/nixhash"
	"cairn/internal/storepath"
)

// The JSON form is what `nix show-derivation` (Nix 2.8) prints, an object keyed by
// .drv path:
//
//	{
//	  "/nix/store/…-x.drv": {
//	    "outputs": { "out": { "path": "…" } },          // fixed: + "hashAlgo", "hash"
//	                                                    // floating: only "hashAlgo"
//	                                                    // impure: "hashAlgo", "impure": true
//	                                                    // deferred: {}
//	    "inputSrcs": [ "…" ],
//	    "inputDrvs": { "/nix/store/…-y.drv": [ "out" ] },
//	    "system": "x86_64-linux",
//	    "builder": "/bin/sh",
//	    "args": [ … ],
//	    "env": { "name": "x", … }
//	  }
//	}
//
// Nix indents by two spaces, writes "key": value, escapes only " \ LF CR TAB (as \n
// \r \t) and other bytes below 0x20 (as \u00xx), and passes every other byte through
// as is, even invalid UTF-8. WriteJSON does the same.

// jsonValue is a JSON value in the order it is printed: a string, a bool, a
// []jsonValue array or a jsonObject.
type jsonValue any

type jsonObject []jsonMember

type jsonMember struct {
	key string
	val jsonValue
}

func (d *Derivation) jsonValue() jsonObject {
	outputs := make(jsonObject, 0, len(d.Outputs))
	for _, name := range d.OutputNames() {
		o := d.Outputs[name]
		obj := jsonObject{}
		if !o.Path.IsZero() {
			obj = append(obj, jsonMember{"path", o.Path.String()})
		}
		if o.HashAlgo != 0 {
			obj = append(obj, jsonMember{"hashAlgo", o.hashAlgoString()})
		}
		if o.Kind() == CAFixed {
			obj = append(obj, jsonMember{"hash", o.Hash.Base16()})
		}
		if o.Impure {
			obj = append(obj, jsonMember{"impure", true})
		}
		outputs = append(outputs, jsonMember{name, obj})
	}
	srcs := make([]jsonValue, len(d.InputSrcs))
	for i, p := range d.InputSrcs {
		srcs[i] = p.String()
	}
	drvs := make(jsonObject, 0, len(d.InputDrvs))
	for _, p := range d.inputDrvPaths() {
		drvs = append(drvs, jsonMember{p.String(), stringArray(d.InputDrvs[p])})
	}
	env := make(jsonObject, 0, len(d.Env))
	for _, k := range d.envKeys() {
		env = append(env, jsonMember{k, d.Env[k]})
	}
	return jsonObject{
		{"outputs", outputs},
		{"inputSrcs", srcs},
		{"inputDrvs", drvs},
		{"system", d.Platform},
		{"builder", d.Builder},
		{"args", stringArray(d.Args)},
		{"env", env},
	}
}

func stringArray(ss []string) []jsonValue {
	a := make([]jsonValue, len(ss))
	for i, s := range ss {
		a[i] = s
	}
	return a
}

// MarshalJSON encodes d as the value `nix show-derivation` prints for it (without the
// .drv path key around it).
func (d *Derivation) MarshalJSON() ([]byte, error) {
	return appendJSON(nil, d.jsonValue(), -1), nil
}

// WriteJSON writes drvs, keyed by .drv path, exactly as `nix show-derivation` 2.8
// prints them: sorted by path, indented by two spaces, with a final newline.
func WriteJSON(w io.Writer, drvs map[storepath.StorePath]*Derivation) error {
	paths := make([]storepath.StorePath, 0, len(drvs))
	for p := range drvs {
		paths = append(paths, p)
	}
	storepath.SortPaths(paths)
	top := make(jsonObject, 0, len(paths))
	for _, p := range paths {
		top = append(top, jsonMember{p.String(), drvs[p].jsonValue()})
	}
	_, err := w.Write(append(appendJSON(nil, top, 0), '\n'))
	return err
}

// appendJSON appends v; indent < 0 means compact, otherwise the current depth.
func appendJSON(dst []byte, v jsonValue, indent int) []byte {
	newline := func(dst []byte, depth int) []byte {
		if indent < 0 {
			return dst
		}
		dst = append(dst, '\n')
		for range depth {
			dst = append(dst, "  "...)
		}
		return dst
	}
	switch v := v.(type) {
	case string:
		return appendJSONString(dst, v)
	case bool:
		if v {
			return append(dst, "true"...)
		}
		return append(dst, "false"...)
	case []jsonValue:
		if len(v) == 0 {
			return append(dst, "[]"...)
		}
		dst = append(dst, '[')
		for i, e := range v {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = newline(dst, indent+1)
			dst = appendJSON(dst, e, deeper(indent))
		}
		dst = newline(dst, indent)
		return append(dst, ']')
	case jsonObject:
		if len(v) == 0 {
			return append(dst, "{}"...)
		}
		dst = append(dst, '{')
		for i, m := range v {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = newline(dst, indent+1)
			dst = appendJSONString(dst, m.key)
			dst = append(dst, ':')
			if indent >= 0 {
				dst = append(dst, ' ')
			}
			dst = appendJSON(dst, m.val, deeper(indent))
		}
		dst = newline(dst, indent)
		return append(dst, '}')
	}
	return dst // unreachable: jsonValue builds only the types above
}

func deeper(indent int) int {
	if indent < 0 {
		return indent
	}
	return indent + 1
}

// appendJSONString quotes s as Nix 2.8 does.
func appendJSONString(dst []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"':
			dst = append(dst, `\"`...)
		case '\\':
			dst = append(dst, `\\`...)
		case '\n':
			dst = append(dst, `\n`...)
		case '\r':
			dst = append(dst, `\r`...)
		case '\t':
			dst = append(dst, `\t`...)
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// jsonDerivation is the decoding side of the JSON form.
type jsonDerivation struct {
	Name      *string               `json:"name"` // printed by Nix 2.18 and later; optional
	Outputs   map[string]jsonOutput `json:"outputs"`
	InputSrcs []string              `json:"inputSrcs"`
	InputDrvs map[string][]string   `json:"inputDrvs"`
	System    *string               `json:"system"`
	Builder   *string               `json:"builder"`
	Args      []string              `json:"args"`
	Env       map[string]string     `json:"env"`
}

type jsonOutput struct {
	Path     string `json:"path"`
	HashAlgo string `json:"hashAlgo"`
	Hash     string `json:"hash"`
	Impure   bool   `json:"impure"`
}

// ParseJSON reads one derivation in the JSON form MarshalJSON writes (the value
// under a .drv path in `nix show-derivation` output). Paths must lie in storeDir.
// name is the derivation's name; when it is "", the JSON's "name" or else env "name"
// is used. Output paths may be left out; FillOutputs computes them. Like
// encoding/json, ParseJSON turns invalid UTF-8 into U+FFFD.
func ParseJSON(storeDir storepath.StoreDir, data []byte, name string) (*Derivation, error) {
	var jd jsonDerivation
	if err := decodeJSON(data, &jd); err != nil {
		return nil, fmt.Errorf("parse derivation JSON: %w", err)
	}
	d, err := jd.derivation(storeDir, name)
	if err != nil {
		return nil, fmt.Errorf("parse derivation JSON %s: %w", d.Name, err)
	}
	return d, nil
}

// ParseShowJSON reads the output of `nix show-derivation`: derivations keyed by
// their .drv paths, which give their names.
func ParseShowJSON(storeDir storepath.StoreDir, data []byte) (map[storepath.StorePath]*Derivation, error) {
	var top map[string]jsonDerivation
	if err := decodeJSON(data, &top); err != nil {
		return nil, fmt.Errorf("parse derivation JSON: %w", err)
	}
	drvs := make(map[storepath.StorePath]*Derivation, len(top))
	for key, jd := range top {
		p, err := storeDir.Parse(key)
		if err != nil {
			return nil, fmt.Errorf("parse derivation JSON: %w", err)
		}
		if !p.IsDerivation() {
			return nil, fmt.Errorf("parse derivation JSON: %w: %s is not a .drv path", ErrInvalid, p)
		}
		d, err := jd.derivation(storeDir, strings.TrimSuffix(p.Name(), storepath.DrvExtension))
		if err != nil {
			return nil, fmt.Errorf("parse derivation JSON %s: %w", p, err)
		}
		drvs[p] = d
	}
	return drvs, nil
}

func decodeJSON(data []byte, v any) error {
	if len(data) > MaxSize {
		return fmt.Errorf("%d bytes is more than the limit of %d", len(data), MaxSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("trailing data after JSON value")
	}
	return nil
}

func (jd *jsonDerivation) derivation(storeDir storepath.StoreDir, name string) (*Derivation, error) {
	d := &Derivation{
		Name:      name,
		Outputs:   make(map[string]Output, len(jd.Outputs)),
		InputDrvs: make(map[storepath.StorePath][]string, len(jd.InputDrvs)),
		InputSrcs: []storepath.StorePath{},
		Args:      jd.Args,
		Env:       jd.Env,
	}
	if d.Name == "" && jd.Name != nil {
		d.Name = *jd.Name
	}
	if d.Name == "" {
		d.Name = jd.Env["name"]
	}
	if d.Args == nil {
		d.Args = []string{}
	}
	if d.Env == nil {
		d.Env = map[string]string{}
	}
	if jd.System == nil || jd.Builder == nil {
		return d, fmt.Errorf("%w: system and builder are required", ErrInvalid)
	}
	d.Platform, d.Builder = *jd.System, *jd.Builder
	if len(jd.Outputs) == 0 {
		return d, fmt.Errorf("%w: no outputs", ErrInvalid)
	}
	if len(jd.Outputs) > MaxOutputs {
		return d, fmt.Errorf("%w: more than %d outputs", ErrInvalid, MaxOutputs)
	}
	if len(jd.InputSrcs) > MaxListLen || len(jd.InputDrvs) > MaxListLen || len(jd.Args) > MaxListLen || len(jd.Env) > MaxListLen {
		return d, fmt.Errorf("%w: more than %d entries in a list", ErrInvalid, MaxListLen)
	}
	for name, jo := range jd.Outputs {
		o, err := jo.output(storeDir)
		if err != nil {
			return d, fmt.Errorf("output %q: %w", name, err)
		}
		d.Outputs[name] = o
	}
	for key, outs := range jd.InputDrvs {
		p, err := storeDir.Parse(key)
		if err != nil {
			return d, fmt.Errorf("input derivation: %w", err)
		}
		if len(outs) > MaxListLen {
			return d, fmt.Errorf("%w: input derivation %s: more than %d outputs", ErrInvalid, p, MaxListLen)
		}
		outs = append([]string{}, outs...)
		sort.Strings(outs)
		for i := 1; i < len(outs); i++ {
			if outs[i] == outs[i-1] {
				return d, fmt.Errorf("%w: input derivation %s: duplicate output %q", ErrInvalid, p, outs[i])
			}
		}
		d.InputDrvs[p] = outs
	}
	for _, s := range jd.InputSrcs {
		p, err := storeDir.Parse(s)
		if err != nil {
			return d, fmt.Errorf("input source: %w", err)
		}
		d.InputSrcs = append(d.InputSrcs, p)
	}
	storepath.SortPaths(d.InputSrcs)
	for i := 1; i < len(d.InputSrcs); i++ {
		if d.InputSrcs[i] == d.InputSrcs[i-1] {
			return d, fmt.Errorf("%w: duplicate input source %s", ErrInvalid, d.InputSrcs[i])
		}
	}
	return d, nil
}

func (jo jsonOutput) output(storeDir storepath.StoreDir) (Output, error) {
	var o Output
	var err error
	if jo.Path != "" {
		if o.Path, err = storeDir.Parse(jo.Path); err != nil {
			return Output{}, err
		}
	}
	if jo.HashAlgo == "" {
		if jo.Hash != "" || jo.Impure {
			return Output{}, fmt.Errorf("%w: hash or impure without hashAlgo", ErrInvalid)
		}
		return o, nil
	}
	if o.Method, o.HashAlgo, err = nixhash.ParseMethodAlgo(jo.HashAlgo); err != nil {
		return Output{}, err
	}
	if o.Method == nixhash.Text {
		return Output{}, fmt.Errorf("%w: text hashing is not an output method in Nix 2.8", ErrInvalid)
	}
	switch {
	case jo.Impure:
		if jo.Hash != "" || jo.Path != "" {
			return Output{}, fmt.Errorf("%w: impure output with a hash or path", ErrInvalid)
		}
		o.Impure = true
	case jo.Hash != "":
		if o.Hash, err = parseDigest(jo.Hash, o.HashAlgo); err != nil {
			return Output{}, fmt.Errorf("%w: %v", ErrInvalid, err)
		}
	case jo.Path != "":
		return Output{}, fmt.Errorf("%w: floating content-addressed output with a path", ErrInvalid)
	}
	return o, nil
}
