package derivation

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"cairn/internal/nixhash"
	"cairn/internal/storepath"
)

// Limits on what Parse and ParseJSON accept. They bound memory and work for input from
// outside; real derivations are far below them.
const (
	// MaxSize is the largest .drv (ATerm) or JSON document read, in bytes.
	MaxSize = 64 << 20
	// MaxStringLen is the longest single string (env value, argument, …), in bytes.
	MaxStringLen = 32 << 20
	// MaxOutputs is the most outputs a derivation may have.
	MaxOutputs = 1 << 10
	// MaxListLen is the most entries in any other list: inputs, args, env, output names.
	MaxListLen = 1 << 20
	// MaxDepth is the deepest chain of input derivations HashModulo follows.
	MaxDepth = 1 << 12
)

// ErrInvalid is wrapped by the errors of Validate and of the checks Parse makes
// beyond syntax.
var ErrInvalid = errors.New("invalid derivation")

// Derivation is a parsed .drv: what to run, with which inputs, to make which outputs.
type Derivation struct {
	// Name is the derivation's name: the .drv's store path name without ".drv",
	// or env "name" when there is no path.
	Name      string
	Outputs   map[string]Output
	InputDrvs map[storepath.StorePath][]string // output names of each input drv, sorted
	InputSrcs []storepath.StorePath            // sorted
	Platform  string
	Builder   string
	Args      []string
	Env       map[string]string
}

// OutputKind tells the five kinds of derivation output apart.
type OutputKind uint8

// The output kinds. The zero value is none.
const (
	// InputAddressed outputs have a path fixed by hashing the derivation (HashModulo).
	InputAddressed OutputKind = iota + 1
	// CAFixed outputs have a hash given up front; the path follows from it.
	CAFixed
	// CAFloating outputs are content-addressed with a hash known only after the build.
	CAFloating
	// Deferred outputs are input-addressed, but their path waits for a floating input.
	Deferred
	// Impure outputs come from an impure derivation and are never cached.
	Impure
)

// String names the kind as Nix's source does.
func (k OutputKind) String() string {
	switch k {
	case InputAddressed:
		return "input-addressed"
	case CAFixed:
		return "fixed"
	case CAFloating:
		return "floating"
	case Deferred:
		return "deferred"
	case Impure:
		return "impure"
	}
	return fmt.Sprintf("OutputKind(%d)", uint8(k))
}

// Output is one output of a derivation. Which fields are set depends on its kind:
//
//	InputAddressed  Path
//	CAFixed         Path, Method, HashAlgo, Hash
//	CAFloating      Method, HashAlgo
//	Deferred        nothing
//	Impure          Method, HashAlgo, Impure
//
// Build outputs with the constructors (InputAddressedOutput, FixedOutput, …).
type Output struct {
	Path     storepath.StorePath // zero unless input-addressed or fixed
	Method   nixhash.Method      // Flat or Recursive for content-addressed kinds
	HashAlgo nixhash.Algorithm   // content-addressed kinds
	Hash     nixhash.Hash        // CAFixed only
	Impure   bool                // Impure only
}

// InputAddressedOutput is an output at path p.
func InputAddressedOutput(p storepath.StorePath) Output { return Output{Path: p} }

// FixedOutput is a fixed-output (CAFixed) output with content address ca, at path p
// (which FillOutputs computes when zero).
func FixedOutput(p storepath.StorePath, ca nixhash.ContentAddress) Output {
	return Output{Path: p, Method: ca.Method, HashAlgo: ca.Hash.Algorithm(), Hash: ca.Hash}
}

// FloatingOutput is a floating content-addressed output.
func FloatingOutput(m nixhash.Method, a nixhash.Algorithm) Output {
	return Output{Method: m, HashAlgo: a}
}

// DeferredOutput is an input-addressed output whose path is not known yet.
func DeferredOutput() Output { return Output{} }

// ImpureOutput is an output of an impure derivation.
func ImpureOutput(m nixhash.Method, a nixhash.Algorithm) Output {
	return Output{Method: m, HashAlgo: a, Impure: true}
}

// Kind reports which kind of output o is.
func (o Output) Kind() OutputKind {
	switch {
	case o.Impure:
		return Impure
	case !o.Hash.IsZero():
		return CAFixed
	case o.HashAlgo != 0:
		return CAFloating
	case !o.Path.IsZero():
		return InputAddressed
	}
	return Deferred
}

// ContentAddress is the content address of a fixed output, zero for other kinds.
func (o Output) ContentAddress() nixhash.ContentAddress {
	if o.Kind() != CAFixed {
		return nixhash.ContentAddress{}
	}
	return nixhash.ContentAddress{Method: o.Method, Hash: o.Hash}
}

// hashAlgoString is the output's hashAlgo slot: "[r:]algo" or "".
func (o Output) hashAlgoString() string {
	if o.HashAlgo == 0 {
		return ""
	}
	return nixhash.FormatMethodAlgo(o.Method, o.HashAlgo)
}

// hashString is the output's hash slot: base16 digest, "impure" or "".
func (o Output) hashString() string {
	switch o.Kind() {
	case CAFixed:
		return o.Hash.Base16()
	case Impure:
		return "impure"
	}
	return ""
}

// Type is the kind shared by all outputs of d, as Nix's BasicDerivation::type
// decides it: all outputs must be of one kind, a fixed-output derivation has the
// single output "out", and floating outputs share one hash algorithm and method.
func (d *Derivation) Type() (OutputKind, error) {
	if len(d.Outputs) == 0 {
		return 0, fmt.Errorf("%w: no outputs", ErrInvalid)
	}
	var kind OutputKind
	var first Output
	for _, name := range d.OutputNames() {
		o := d.Outputs[name]
		k := o.Kind()
		if kind == 0 {
			kind, first = k, o
			continue
		}
		if k != kind {
			return 0, fmt.Errorf("%w: cannot mix %s and %s outputs", ErrInvalid, kind, k)
		}
		if k == CAFloating && (o.HashAlgo != first.HashAlgo || o.Method != first.Method) {
			return 0, fmt.Errorf("%w: floating outputs must all use the same hash method and algorithm", ErrInvalid)
		}
	}
	if kind == CAFixed {
		if len(d.Outputs) != 1 {
			return 0, fmt.Errorf("%w: only one fixed output is allowed", ErrInvalid)
		}
		if _, ok := d.Outputs["out"]; !ok {
			return 0, fmt.Errorf("%w: the fixed output must be named \"out\"", ErrInvalid)
		}
	}
	return kind, nil
}

// OutputNames returns the output names, sorted.
func (d *Derivation) OutputNames() []string {
	names := make([]string, 0, len(d.Outputs))
	for name := range d.Outputs {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// inputDrvPaths returns the input derivation paths, sorted.
func (d *Derivation) inputDrvPaths() []storepath.StorePath {
	paths := make([]storepath.StorePath, 0, len(d.InputDrvs))
	for p := range d.InputDrvs {
		paths = append(paths, p)
	}
	storepath.SortPaths(paths)
	return paths
}

// envKeys returns the environment's keys, sorted.
func (d *Derivation) envKeys() []string {
	keys := make([]string, 0, len(d.Env))
	for k := range d.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// rawUnsafe reports whether s cannot be written raw: Nix writes it unescaped, and
// reading it back would not give s.
func rawUnsafe(s string) bool { return strings.ContainsAny(s, "\"\\") }

// Validate checks what Nix checks of a derivation before it accepts it, and that d
// prints to an ATerm that reads back as d: output names are valid store path name
// parts, the outputs are of one kind (Type), paths lie in storeDir, fixed and
// input-addressed paths carry the right names, fixed output paths match their
// hashes, input derivations are .drv paths with at least one output each, and
// strings Nix writes raw contain no quote or backslash.
func (d *Derivation) Validate(storeDir storepath.StoreDir) error {
	if err := d.validate(storeDir); err != nil {
		return fmt.Errorf("validate derivation %s: %w", d.Name, err)
	}
	return nil
}

func (d *Derivation) validate(storeDir storepath.StoreDir) error {
	if err := storepath.ValidateName(d.Name); err != nil {
		return fmt.Errorf("%w: name: %v", ErrInvalid, err)
	}
	if _, err := d.Type(); err != nil {
		return err
	}
	for _, name := range d.OutputNames() {
		o := d.Outputs[name]
		if err := validateOutputName(name); err != nil {
			return err
		}
		want := storepath.OutputPathName(d.Name, name)
		switch o.Kind() {
		case InputAddressed:
			if err := checkPath(storeDir, o.Path, want); err != nil {
				return fmt.Errorf("output %s: %w", name, err)
			}
		case CAFixed:
			if o.Method != nixhash.Flat && o.Method != nixhash.Recursive {
				return fmt.Errorf("%w: output %s: method %s is not flat or recursive", ErrInvalid, name, o.Method)
			}
			if o.Hash.Algorithm() != o.HashAlgo {
				return fmt.Errorf("%w: output %s: hash is %s, hashAlgo says %s", ErrInvalid, name, o.Hash.Algorithm(), o.HashAlgo)
			}
			p, err := storeDir.MakeFixedOutputPath(want, o.ContentAddress(), nil, false)
			if err != nil {
				return fmt.Errorf("%w: output %s: %v", ErrInvalid, name, err)
			}
			if o.Path != p {
				return fmt.Errorf("%w: output %s: path %s, but its hash gives %s", ErrInvalid, name, o.Path, p)
			}
		case CAFloating, Impure:
			if o.Method != nixhash.Flat && o.Method != nixhash.Recursive {
				return fmt.Errorf("%w: output %s: method %s is not flat or recursive", ErrInvalid, name, o.Method)
			}
			if !o.Path.IsZero() {
				return fmt.Errorf("%w: output %s: a %s output has no path", ErrInvalid, name, o.Kind())
			}
		}
	}
	if len(d.InputDrvs) > MaxListLen || len(d.InputSrcs) > MaxListLen || len(d.Args) > MaxListLen || len(d.Env) > MaxListLen {
		return fmt.Errorf("%w: more than %d entries in a list", ErrInvalid, MaxListLen)
	}
	for _, p := range d.inputDrvPaths() {
		if err := checkPath(storeDir, p, ""); err != nil {
			return fmt.Errorf("input derivation: %w", err)
		}
		if !p.IsDerivation() {
			return fmt.Errorf("%w: input derivation %s is not a .drv", ErrInvalid, p)
		}
		outs := d.InputDrvs[p]
		if len(outs) == 0 {
			return fmt.Errorf("%w: input derivation %s: no outputs", ErrInvalid, p)
		}
		for i, out := range outs {
			if err := validateOutputName(out); err != nil {
				return fmt.Errorf("input derivation %s: %w", p, err)
			}
			if i > 0 && outs[i-1] >= out {
				return fmt.Errorf("%w: input derivation %s: output names not sorted and unique", ErrInvalid, p)
			}
		}
	}
	for i, p := range d.InputSrcs {
		if err := checkPath(storeDir, p, ""); err != nil {
			return fmt.Errorf("input source: %w", err)
		}
		if i > 0 && storepath.Compare(d.InputSrcs[i-1], p) >= 0 {
			return fmt.Errorf("%w: input sources not sorted and unique", ErrInvalid)
		}
	}
	if rawUnsafe(d.Platform) {
		return fmt.Errorf("%w: platform %q has a quote or backslash, which Nix writes unescaped", ErrInvalid, d.Platform)
	}
	return nil
}

// validateOutputName checks an output name: a valid store path name part (it ends
// up in output paths), and not "drv".
func validateOutputName(name string) error {
	if name == "" || name == "drv" {
		return fmt.Errorf("%w: output name %q", ErrInvalid, name)
	}
	if err := storepath.ValidateName(name); err != nil {
		return fmt.Errorf("%w: output name %q: %v", ErrInvalid, name, err)
	}
	return nil
}

// checkPath checks that p lies in storeDir and, when name is not empty, has that name.
func checkPath(storeDir storepath.StoreDir, p storepath.StorePath, name string) error {
	if p.IsZero() {
		return fmt.Errorf("%w: empty path", ErrInvalid)
	}
	if p.Dir() != storeDir {
		return fmt.Errorf("%w: path %s is not in store %s", ErrInvalid, p, storeDir)
	}
	if name != "" && p.Name() != name {
		return fmt.Errorf("%w: path %s should be named %q", ErrInvalid, p, name)
	}
	return nil
}
