package build

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"cairn/internal/derivation"
	"cairn/internal/nixbase32"
	"cairn/internal/nixhash"
	"cairn/internal/storepath"
)

// MaxStructuredAttrs bounds the __json attribute of a derivation.
const MaxStructuredAttrs = derivation.MaxSize

// Env is the environment and the build-dir files of one build, as Nix 2.8
// prepares them.
type Env struct {
	Vars map[string]string
	// Files are written into the build dir before the builder starts, by
	// name (passAsFile's .attr-<hash>, .attrs.json, .attrs.sh,
	// exportReferencesGraph's files).
	Files map[string][]byte
	// Rewrite replaces output placeholders with the outputs' paths; Nix
	// applies it to every "name=value" and every argument.
	Rewrite *strings.Replacer
}

// List returns the variables as sorted "name=value" strings, rewritten.
func (e *Env) List() []string {
	out := make([]string, 0, len(e.Vars))
	for k, v := range e.Vars {
		out = append(out, e.Rewrite.Replace(k+"="+v))
	}
	slices.Sort(out)
	return out
}

// EnvParams says where the build runs, as the builder sees it.
type EnvParams struct {
	StoreDir storepath.StoreDir
	BuildTop string // the build dir inside the sandbox, e.g. /build
	Cores    int
	// Outputs are the output paths to substitute for placeholders (all of
	// them for input-addressed and fixed outputs).
	Outputs map[string]storepath.StorePath
	// Getenv reads the daemon's environment for a fixed-output
	// derivation's impureEnvVars; nil means none are passed.
	Getenv func(string) string
}

// MakeEnv computes what local-derivation-goal.cc's initEnv,
// writeStructuredAttrs and passAsFile handling give the builder. The
// caller adds exportReferencesGraph's files (they need the store).
func MakeEnv(drv *derivation.Derivation, p EnvParams) (*Env, error) {
	e := &Env{Vars: map[string]string{}, Files: map[string][]byte{}, Rewrite: strings.NewReplacer()}
	v := e.Vars
	v["PATH"] = "/path-not-set"
	v["HOME"] = "/homeless-shelter"
	v["NIX_STORE"] = string(p.StoreDir)
	v["NIX_BUILD_CORES"] = strconv.Itoa(p.Cores)

	rewrite := placeholderRewriter(p.Outputs)
	e.Rewrite = rewrite
	structured, hasJSON := drv.Env["__json"]
	if !hasJSON {
		passAsFile := map[string]bool{}
		for _, name := range strings.Fields(drv.Env["passAsFile"]) {
			passAsFile[name] = true
		}
		for k, val := range drv.Env {
			if !passAsFile[k] {
				v[k] = val
				continue
			}
			fn := ".attr-" + nixbase32.EncodeToString(nixhash.Sum(nixhash.SHA256, []byte(k)).Bytes())
			e.Files[fn] = []byte(rewrite.Replace(val))
			v[k+"Path"] = p.BuildTop + "/" + fn
		}
	}
	v["NIX_BUILD_TOP"] = p.BuildTop
	v["TMPDIR"], v["TEMPDIR"], v["TMP"], v["TEMP"] = p.BuildTop, p.BuildTop, p.BuildTop, p.BuildTop
	v["PWD"] = p.BuildTop
	if kind, err := drv.Type(); err == nil && kind == derivation.CAFixed {
		v["NIX_OUTPUT_CHECKED"] = "1"
		if p.Getenv != nil {
			names, err := impureEnvVars(drv)
			if err != nil {
				return nil, err
			}
			for _, name := range names {
				v[name] = p.Getenv(name)
			}
		}
	}
	v["NIX_LOG_FD"] = "2"
	v["TERM"] = "xterm-256color"

	if hasJSON {
		js, sh, err := structuredAttrs(drv, structured, rewrite)
		if err != nil {
			return nil, err
		}
		e.Files[".attrs.json"] = js
		e.Files[".attrs.sh"] = sh
		// Nix 2.8 gives the host path of the build dir here, which does not
		// exist inside the sandbox; we give the one that does.
		v["NIX_ATTRS_JSON_FILE"] = p.BuildTop + "/.attrs.json"
		v["NIX_ATTRS_SH_FILE"] = p.BuildTop + "/.attrs.sh"
	}
	return e, nil
}

// placeholderRewriter replaces each output's placeholder with its path.
func placeholderRewriter(outputs map[string]storepath.StorePath) *strings.Replacer {
	var pairs []string
	for _, name := range sortedKeys(outputs) {
		pairs = append(pairs, derivation.Placeholder(name), outputs[name].String())
	}
	return strings.NewReplacer(pairs...)
}

// impureEnvVars is the derivation's impureEnvVars attribute: words of a
// plain attribute, or a list of strings in structured attributes (Nix's
// getStringsAttr).
func impureEnvVars(drv *derivation.Derivation) ([]string, error) {
	text, ok := drv.Env["__json"]
	if !ok {
		return strings.Fields(drv.Env["impureEnvVars"]), nil
	}
	var attrs map[string]json.RawMessage
	if len(text) > MaxStructuredAttrs || json.Unmarshal([]byte(text), &attrs) != nil {
		return nil, errors.New("structured attributes: not a JSON object")
	}
	raw, ok := attrs["impureEnvVars"]
	if !ok {
		return nil, nil
	}
	var names []string
	if err := json.Unmarshal(raw, &names); err != nil || names == nil {
		return nil, fmt.Errorf("attribute 'impureEnvVars' of derivation '%s' must be a list of strings", drv.Name)
	}
	return names, nil
}

// structuredAttrs writes .attrs.json and .attrs.sh from __json, with an
// "outputs" object mapping each output to its path.
func structuredAttrs(drv *derivation.Derivation, text string, rewrite *strings.Replacer) ([]byte, []byte, error) {
	if len(text) > MaxStructuredAttrs {
		return nil, nil, errors.New("structured attributes: too long")
	}
	dec := json.NewDecoder(strings.NewReader(text))
	dec.UseNumber()
	var attrs map[string]any
	if err := dec.Decode(&attrs); err != nil {
		return nil, nil, fmt.Errorf("structured attributes: %w", err)
	}
	if attrs == nil {
		return nil, nil, errors.New("structured attributes: not an object")
	}
	outs := map[string]any{}
	for name := range drv.Outputs {
		outs[name] = rewrite.Replace(derivation.Placeholder(name))
	}
	attrs["outputs"] = outs
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(attrs); err != nil {
		return nil, nil, fmt.Errorf("structured attributes: %w", err)
	}
	js := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	return []byte(rewrite.Replace(string(js))), []byte(rewrite.Replace(attrsShell(attrs))), nil
}

var shVarName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// attrsShell is parsed-derivations.cc's writeStructuredAttrsShell: every
// attribute bash can hold (strings, integers, null, booleans, and flat
// arrays and objects of those) as a declare line, in key order.
func attrsShell(attrs map[string]any) string {
	var sb strings.Builder
	for _, key := range sortedKeys(attrs) {
		if !shVarName.MatchString(key) {
			continue
		}
		value := attrs[key]
		if s, ok := shellSimple(value); ok {
			fmt.Fprintf(&sb, "declare %s=%s\n", key, s)
			continue
		}
		switch v := value.(type) {
		case []any:
			var s2 strings.Builder
			good := true
			for _, x := range v {
				s3, ok := shellSimple(x)
				if !ok {
					good = false
					break
				}
				s2.WriteString(s3 + " ")
			}
			if good {
				fmt.Fprintf(&sb, "declare -a %s=(%s)\n", key, s2.String())
			}
		case map[string]any:
			var s2 strings.Builder
			good := true
			for _, k2 := range sortedKeys(v) {
				s3, ok := shellSimple(v[k2])
				if !ok {
					good = false
					break
				}
				fmt.Fprintf(&s2, "[%s]=%s ", shellEscape(k2), s3)
			}
			if good {
				fmt.Fprintf(&sb, "declare -A %s=(%s)\n", key, s2.String())
			}
		}
	}
	return sb.String()
}

func shellSimple(v any) (string, bool) {
	switch v := v.(type) {
	case string:
		return shellEscape(v), true
	case json.Number:
		if i, err := strconv.ParseInt(string(v), 10, 32); err == nil {
			return strconv.FormatInt(i, 10), true
		}
		if f, err := strconv.ParseFloat(string(v), 32); err == nil && f == float64(int64(f)) {
			return strconv.FormatInt(int64(int32(f)), 10), true
		}
		return "", false
	case nil:
		return "''", true
	case bool:
		if v {
			return "1", true
		}
		return "", true
	}
	return "", false
}

func shellEscape(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
