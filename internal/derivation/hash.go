package derivation

import (
	"errors"
	"fmt"
	"sort"
	"sync"

	"cairn/internal/nixbase32"
	"cairn/internal/nixhash"
	"cairn/internal/storepath"
)

// Resolver reads the derivation at a .drv store path; HashModulo calls it for input
// derivations it has not hashed yet. A resolver that blocks should carry its own
// context (a closure over ctx).
type Resolver func(drvPath storepath.StorePath) (*Derivation, error)

// DrvHash is the result of hashDerivationModulo: a hash per output, and whether the
// outputs' paths must wait (a floating CA or impure derivation somewhere below).
type DrvHash struct {
	Outputs  map[string]nixhash.Hash // sha256, per output name
	Deferred bool
}

// impureOutputHash is the hash every output of an impure derivation gets.
var impureOutputHash = nixhash.Sum(nixhash.SHA256, []byte("impure"))

// HashCache memoises HashModulo results of input derivations, keyed by .drv path, as
// Nix's drvHashes does. It is safe for concurrent use; the zero value is ready.
type HashCache struct {
	mu sync.Mutex
	m  map[storepath.StorePath]DrvHash
}

func (c *HashCache) get(p storepath.StorePath) (DrvHash, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h, ok := c.m[p]
	return h, ok
}

func (c *HashCache) put(p storepath.StorePath, h DrvHash) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[storepath.StorePath]DrvHash)
	}
	c.m[p] = h
}

// HashModulo computes hashDerivationModulo(d, mask) with a fresh cache. See
// (*HashCache).HashModulo.
func HashModulo(d *Derivation, mask bool, resolve Resolver) (DrvHash, error) {
	return new(HashCache).HashModulo(d, mask, resolve)
}

// HashModulo computes Nix's hashDerivationModulo of d:
//
//   - a fixed-output derivation hashes to sha256("fixed:out:<[r:]algo>:<base16>:<outPath>")
//     for its output, whatever its inputs;
//   - an impure derivation hashes to sha256("impure") per output, deferred;
//   - any other derivation hashes to the sha256 of its ATerm in which each input
//     derivation is replaced by the base16 of its own HashModulo (mask=false) and,
//     with mask, the output paths and the env entries named like outputs are empty.
//     The result is deferred when d is floating CA or an input is deferred.
//
// Input derivations come from resolve and are memoised in c by path.
func (c *HashCache) HashModulo(d *Derivation, mask bool, resolve Resolver) (DrvHash, error) {
	h, err := c.hashModulo(d, mask, resolve, 0, map[storepath.StorePath]bool{})
	if err != nil {
		return DrvHash{}, fmt.Errorf("hash derivation %s: %w", d.Name, err)
	}
	return h, nil
}

var errCycle = errors.New("input derivations form a cycle")

func (c *HashCache) hashModulo(d *Derivation, mask bool, resolve Resolver, depth int, visiting map[storepath.StorePath]bool) (DrvHash, error) {
	kind, err := d.Type()
	if err != nil {
		return DrvHash{}, err
	}
	deferred := false
	switch kind {
	case CAFixed:
		o := d.Outputs["out"]
		if o.Path.IsZero() {
			return DrvHash{}, fmt.Errorf("%w: fixed output has no path yet", ErrInvalid)
		}
		fp := "fixed:out:" + o.hashAlgoString() + ":" + o.Hash.Base16() + ":" + o.Path.String()
		return DrvHash{Outputs: map[string]nixhash.Hash{"out": nixhash.Sum(nixhash.SHA256, []byte(fp))}}, nil
	case Impure:
		outs := make(map[string]nixhash.Hash, len(d.Outputs))
		for name := range d.Outputs {
			outs[name] = impureOutputHash
		}
		return DrvHash{Outputs: outs, Deferred: true}, nil
	case CAFloating:
		deferred = true
	}

	byHash := make(map[string][]string)
	for _, p := range d.inputDrvPaths() {
		in, err := c.input(p, resolve, depth+1, visiting)
		if err != nil {
			return DrvHash{}, err
		}
		deferred = deferred || in.Deferred
		for _, out := range d.InputDrvs[p] {
			h, ok := in.Outputs[out]
			if !ok {
				return DrvHash{}, fmt.Errorf("%w: input derivation %s has no output %q", ErrInvalid, p, out)
			}
			key := h.Base16()
			byHash[key] = append(byHash[key], out)
		}
	}
	inputs := make([]hashedInput, 0, len(byHash))
	for key, outs := range byHash {
		sort.Strings(outs)
		inputs = append(inputs, hashedInput{key: key, outs: dedup(outs)})
	}
	sort.Slice(inputs, func(i, j int) bool { return inputs[i].key < inputs[j].key })

	sum := nixhash.Sum(nixhash.SHA256, d.appendATerm(make([]byte, 0, d.sizeHint()), mask, inputs))
	outs := make(map[string]nixhash.Hash, len(d.Outputs))
	for name := range d.Outputs {
		outs[name] = sum
	}
	return DrvHash{Outputs: outs, Deferred: deferred}, nil
}

// input returns the HashModulo (mask=false) of the input derivation at p.
func (c *HashCache) input(p storepath.StorePath, resolve Resolver, depth int, visiting map[storepath.StorePath]bool) (DrvHash, error) {
	if h, ok := c.get(p); ok {
		return h, nil
	}
	if depth > MaxDepth {
		return DrvHash{}, fmt.Errorf("%w: input derivations nested deeper than %d", ErrInvalid, MaxDepth)
	}
	if visiting[p] {
		return DrvHash{}, fmt.Errorf("%w: %s: %w", ErrInvalid, p, errCycle)
	}
	if resolve == nil {
		return DrvHash{}, fmt.Errorf("input derivation %s: no resolver", p)
	}
	in, err := resolve(p)
	if err != nil {
		return DrvHash{}, fmt.Errorf("input derivation %s: %w", p, err)
	}
	visiting[p] = true
	h, err := c.hashModulo(in, false, resolve, depth, visiting)
	delete(visiting, p)
	if err != nil {
		return DrvHash{}, fmt.Errorf("input derivation %s: %w", p, err)
	}
	c.put(p, h)
	return h, nil
}

func dedup(sorted []string) []string {
	out := sorted[:0]
	for i, s := range sorted {
		if i == 0 || s != sorted[i-1] {
			out = append(out, s)
		}
	}
	return out
}

// Placeholder is the string Nix puts in env for an output whose path is not known
// when the derivation is written (floating CA, impure): "/" + nix32(sha256("nix-output:<name>")).
func Placeholder(outputName string) string {
	h := nixhash.Sum(nixhash.SHA256, []byte("nix-output:"+outputName))
	return "/" + nixbase32.EncodeToString(h.Bytes())
}

// FillOutputs computes d's output paths as nix-instantiate does, and sets the env
// entries named like outputs to match:
//
//   - fixed output: the path follows from the hash (MakeFixedOutputPath), env out = path;
//   - floating CA or impure: no path, env = Placeholder(name);
//   - input-addressed or deferred: outputs and their env entries are emptied, then
//     HashModulo(d, mask=true) gives each path (MakeOutputPath); when that is deferred
//     the outputs stay deferred and their env entries empty.
//
// d.Name must be set. Input derivations come from resolve, memoised in c (which may
// be nil).
func (d *Derivation) FillOutputs(storeDir storepath.StoreDir, c *HashCache, resolve Resolver) error {
	if err := d.fillOutputs(storeDir, c, resolve); err != nil {
		return fmt.Errorf("compute outputs of derivation %s: %w", d.Name, err)
	}
	return nil
}

func (d *Derivation) fillOutputs(storeDir storepath.StoreDir, c *HashCache, resolve Resolver) error {
	if c == nil {
		c = new(HashCache)
	}
	if d.Env == nil {
		d.Env = make(map[string]string)
	}
	for name, o := range d.Outputs {
		if k := o.Kind(); k == InputAddressed || k == Deferred {
			d.Outputs[name] = DeferredOutput()
		}
	}
	kind, err := d.Type()
	if err != nil {
		return err
	}
	switch kind {
	case CAFixed:
		o := d.Outputs["out"]
		p, err := storeDir.MakeFixedOutputPath(d.Name, o.ContentAddress(), nil, false)
		if err != nil {
			return err
		}
		o.Path = p
		d.Outputs["out"] = o
		d.Env["out"] = p.String()
		return nil
	case CAFloating, Impure:
		for name := range d.Outputs {
			d.Env[name] = Placeholder(name)
		}
		return nil
	}
	for name := range d.Outputs {
		d.Env[name] = ""
	}
	h, err := c.HashModulo(d, true, resolve)
	if err != nil {
		return err
	}
	if h.Deferred {
		return nil
	}
	for name := range d.Outputs {
		p, err := storeDir.MakeOutputPath(name, h.Outputs[name], d.Name)
		if err != nil {
			return err
		}
		d.Outputs[name] = InputAddressedOutput(p)
		d.Env[name] = p.String()
	}
	return nil
}

// StorePath computes the store path of d's .drv file: a text path named
// "<name>.drv" holding d's ATerm, whose references are the input derivations and
// input sources.
func (d *Derivation) StorePath(storeDir storepath.StoreDir) (storepath.StorePath, error) {
	refs := make([]storepath.StorePath, 0, len(d.InputDrvs)+len(d.InputSrcs))
	for p := range d.InputDrvs {
		refs = append(refs, p)
	}
	refs = append(refs, d.InputSrcs...)
	p, err := storeDir.MakeTextPath(d.Name+storepath.DrvExtension, nixhash.Sum(nixhash.SHA256, d.Bytes()), refs)
	if err != nil {
		return storepath.StorePath{}, fmt.Errorf("compute path of derivation %s: %w", d.Name, err)
	}
	return p, nil
}
