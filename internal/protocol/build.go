package protocol

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"cairn/internal/derivation"
	"cairn/internal/nixhash"
	"cairn/internal/storepath"
	"cairn/internal/wire"
)

// BuildStatus is the outcome of a build.
type BuildStatus uint64

const (
	Built                  BuildStatus = 0
	Substituted            BuildStatus = 1
	AlreadyValid           BuildStatus = 2
	PermanentFailure       BuildStatus = 3
	InputRejected          BuildStatus = 4
	OutputRejected         BuildStatus = 5 // also Nix's internal HashMismatch
	TransientFailure       BuildStatus = 6
	CachedFailure          BuildStatus = 7
	TimedOut               BuildStatus = 8
	MiscFailure            BuildStatus = 9
	DependencyFailed       BuildStatus = 10
	LogLimitExceeded       BuildStatus = 11
	NotDeterministic       BuildStatus = 12
	ResolvesToAlreadyValid BuildStatus = 13
	NoSubstituters         BuildStatus = 14
)

// BuiltOutput is one entry of BuildResult.BuiltOutputs.
type BuiltOutput struct {
	// ID is the wire key below the realisation-with-path-not-hash feature:
	// "sha256:<hex drv hash>!<output>". When empty, a dummy hash is written.
	ID         string
	OutPath    storepath.StorePath
	Signatures []string
	// JSON is the Realisation JSON as received (old form); written verbatim
	// when set, else generated from the other fields.
	JSON string
}

// BuildResult is the result of building one derived path.
type BuildResult struct {
	Status             BuildStatus
	ErrorMsg           string
	TimesBuilt         uint64         // ≥1.29
	IsNonDeterministic bool           // ≥1.29
	StartTime          time.Time      // ≥1.29, unix seconds; zero ↔ 0
	StopTime           time.Time      // ≥1.29
	CPUUser            *time.Duration // ≥1.37, microseconds; nil when unknown
	CPUSystem          *time.Duration // ≥1.37
	// BuiltOutputs by output name (≥1.28).
	BuiltOutputs map[string]BuiltOutput
}

// Success reports whether the status is a success.
func (b *BuildResult) Success() bool {
	return b.Status <= AlreadyValid || b.Status == ResolvesToAlreadyValid
}

func readOptMicros(r *wire.Reader) *time.Duration {
	switch tag := r.Uint64(); tag {
	case 0:
		return nil
	case 1:
		v := r.Uint64()
		if v > math.MaxInt64/1000 && v < 1<<63 {
			v = math.MaxInt64 / 1000
		}
		d := time.Duration(int64(v)) * time.Microsecond
		return &d
	default:
		r.Failf("read optional duration: tag %d: %w", tag, ErrProtocol)
		return nil
	}
}

func writeOptMicros(w *wire.Writer, d *time.Duration) {
	if d == nil {
		w.Uint64(0)
		return
	}
	w.Uint64(1)
	w.Uint64(uint64(d.Microseconds()))
}

// dummyDrvOutputHash is what newer daemons put in place of the drv hash.
const dummyDrvOutputHash = "sha256:0000000000000000000000000000000000000000000000000000000000000000"

// ReadBuildResult reads a BuildResult.
func ReadBuildResult(r *wire.Reader, p Params) *BuildResult {
	b := &BuildResult{Status: BuildStatus(r.Uint64()), ErrorMsg: r.String(wire.MaxStringLen)}
	if p.nix(29) {
		b.TimesBuilt = r.Uint64()
		b.IsNonDeterministic = r.Bool()
		b.StartTime = readTime(r)
		b.StopTime = readTime(r)
	}
	if p.nix(37) {
		b.CPUUser = readOptMicros(r)
		b.CPUSystem = readOptMicros(r)
	}
	if p.Has(FeatureRealisationWithPath) {
		n := r.Count()
		for i := 0; i < n && r.Err() == nil; i++ {
			name := r.String(wire.MaxStringLen)
			o := BuiltOutput{OutPath: r.StorePath(), Signatures: r.Strings(wire.MaxStringLen)}
			if b.BuiltOutputs == nil {
				b.BuiltOutputs = map[string]BuiltOutput{}
			}
			b.BuiltOutputs[name] = o
		}
	} else if p.nix(28) {
		readOldBuiltOutputs(r, b)
	}
	if r.Err() != nil {
		return nil
	}
	return b
}

// WriteBuildResult writes a BuildResult.
func WriteBuildResult(w *wire.Writer, p Params, b *BuildResult) {
	w.Uint64(uint64(b.Status))
	w.String(b.ErrorMsg)
	if p.nix(29) {
		w.Uint64(b.TimesBuilt)
		w.Bool(b.IsNonDeterministic)
		writeTime(w, b.StartTime)
		writeTime(w, b.StopTime)
	}
	if p.nix(37) {
		writeOptMicros(w, b.CPUUser)
		writeOptMicros(w, b.CPUSystem)
	}
	if p.Has(FeatureRealisationWithPath) {
		w.Uint64(uint64(len(b.BuiltOutputs)))
		for _, name := range wire.SortedKeys(b.BuiltOutputs) {
			o := b.BuiltOutputs[name]
			w.String(name)
			w.StorePath(o.OutPath)
			w.Strings(o.Signatures)
		}
	} else if p.nix(28) {
		writeOldBuiltOutputs(w, b)
	}
}

// readOldBuiltOutputs reads builtOutputs as a map DrvOutput id → Realisation JSON.
func readOldBuiltOutputs(r *wire.Reader, b *BuildResult) {
	m := r.StringMap(wire.MaxStringLen)
	for id, js := range m {
		_, name, ok := strings.Cut(id, "!")
		if !ok {
			r.Failf("read build result: output id %q: %w", id, ErrProtocol)
			return
		}
		real, err := ParseRealisationJSON(r.StoreDir, []byte(js))
		if err != nil {
			r.Fail(fmt.Errorf("read build result: %w", err))
			return
		}
		if b.BuiltOutputs == nil {
			b.BuiltOutputs = map[string]BuiltOutput{}
		}
		b.BuiltOutputs[name] = BuiltOutput{ID: id, OutPath: real.OutPath, Signatures: real.Signatures, JSON: js}
	}
}

// writeOldBuiltOutputs writes builtOutputs as a map DrvOutput id → Realisation JSON.
func writeOldBuiltOutputs(w *wire.Writer, b *BuildResult) {
	m := make(map[string]string, len(b.BuiltOutputs))
	for name, o := range b.BuiltOutputs {
		id := o.ID
		if id == "" {
			id = dummyDrvOutputHash + "!" + name
		}
		js := o.JSON
		if js == "" {
			js = string(Realisation{ID: id, OutPath: o.OutPath, Signatures: o.Signatures}.JSON())
		}
		m[id] = js
	}
	w.StringMap(m)
}

// KeyedBuildResult is one entry of the BuildPathsWithResults reply.
type KeyedBuildResult struct {
	Path DerivedPath
	BuildResult
}

// Realisation is a content-addressed derivation output's realisation, in the
// JSON form of 1.31–1.37:
// {"dependentRealisations":{},"id":"sha256:<hex>!out","outPath":"<basename>","signatures":[]}.
type Realisation struct {
	ID                    string // DrvOutput: "sha256:<hex drv hash>!<output>"
	OutPath               storepath.StorePath
	Signatures            []string
	DependentRealisations map[string]string // DrvOutput → out path basename
}

type realisationJSON struct {
	DependentRealisations map[string]string `json:"dependentRealisations"`
	ID                    string            `json:"id"`
	OutPath               string            `json:"outPath"`
	Signatures            []string          `json:"signatures"`
}

// JSON encodes the realisation as Nix does (keys sorted, no spaces).
func (rl Realisation) JSON() []byte {
	j := realisationJSON{DependentRealisations: rl.DependentRealisations, ID: rl.ID,
		OutPath: rl.OutPath.Base(), Signatures: rl.Signatures}
	if j.DependentRealisations == nil {
		j.DependentRealisations = map[string]string{}
	}
	if j.Signatures == nil {
		j.Signatures = []string{}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.Encode(j)
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

// ParseRealisationJSON parses a Realisation's JSON form. outPath is a
// basename, taken to lie in dir (DefaultStoreDir when empty).
func ParseRealisationJSON(dir storepath.StoreDir, data []byte) (*Realisation, error) {
	var j realisationJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return nil, fmt.Errorf("parse realisation: %w", err)
	}
	if dir == "" {
		dir = storepath.DefaultStoreDir
	}
	p, err := dir.FromBase(j.OutPath)
	if err != nil {
		return nil, fmt.Errorf("parse realisation: %w", err)
	}
	return &Realisation{ID: j.ID, OutPath: p, Signatures: j.Signatures, DependentRealisations: j.DependentRealisations}, nil
}

// DerivedPath is what BuildPaths and QueryMissing take: an opaque store path,
// or outputs of a derivation (Outputs nil with All set means every output).
type DerivedPath struct {
	Path    storepath.StorePath
	Built   bool     // a derivation's outputs rather than the path itself
	All     bool     // every output (Built only)
	Outputs []string // sorted output names (Built, not All)
}

// Format formats d for the wire at version p: ≥1.30 "drv!out,dev" or "drv!*";
// below, "path", "drv" (all outputs) or "drv!out,dev".
func (d DerivedPath) Format(p Params) string {
	if !d.Built {
		return d.Path.String()
	}
	if d.All || len(d.Outputs) == 0 {
		if p.nix(30) {
			return d.Path.String() + "!*"
		}
		return d.Path.String()
	}
	return d.Path.String() + "!" + strings.Join(d.Outputs, ",")
}

// ParseDerivedPath parses a derived path string in the form of version p.
func ParseDerivedPath(dir storepath.StoreDir, p Params, s string) (DerivedPath, error) {
	parse := storepath.Parse
	if dir != "" {
		parse = dir.Parse
	}
	path, outs, built := strings.Cut(s, "!")
	sp, err := parse(path)
	if err != nil {
		return DerivedPath{}, fmt.Errorf("parse derived path %q: %w", s, err)
	}
	if !built {
		if !p.nix(30) && sp.IsDerivation() {
			return DerivedPath{Path: sp, Built: true, All: true}, nil
		}
		return DerivedPath{Path: sp}, nil
	}
	if strings.Contains(outs, "!") {
		return DerivedPath{}, fmt.Errorf("parse derived path %q: dynamic derivations not supported: %w", s, ErrProtocol)
	}
	if outs == "*" {
		return DerivedPath{Path: sp, Built: true, All: true}, nil
	}
	names := strings.Split(outs, ",")
	for _, n := range names {
		if err := storepath.ValidateName(n); err != nil {
			return DerivedPath{}, fmt.Errorf("parse derived path %q: output %q: %w", s, n, err)
		}
	}
	return DerivedPath{Path: sp, Built: true, Outputs: names}, nil
}

// ReadDerivedPaths reads a list of derived path strings.
func ReadDerivedPaths(r *wire.Reader, p Params) []DerivedPath {
	n := r.Count()
	var out []DerivedPath
	for i := 0; i < n && r.Err() == nil; i++ {
		s := r.Bytes(wire.MaxStringLen)
		if r.Err() != nil {
			break
		}
		d, err := ParseDerivedPath(r.StoreDir, p, string(s))
		if err != nil {
			r.Fail(err)
			break
		}
		out = append(out, d)
	}
	if r.Err() != nil {
		return nil
	}
	return out
}

// WriteDerivedPaths writes a list of derived path strings.
func WriteDerivedPaths(w *wire.Writer, p Params, ds []DerivedPath) {
	w.Uint64(uint64(len(ds)))
	for _, d := range ds {
		w.String(d.Format(p))
	}
}

// ReadBasicDerivation reads the wire form of a derivation without its input
// derivations (BuildDerivation): outputs, inputSrcs, platform, builder, args,
// env. The result's InputDrvs is empty and its Name is name (the drv path's
// name without ".drv").
func ReadBasicDerivation(r *wire.Reader, name string) *derivation.Derivation {
	d := &derivation.Derivation{Name: name, Outputs: map[string]derivation.Output{}, InputDrvs: map[storepath.StorePath][]string{}}
	n := r.Count()
	for i := 0; i < n && r.Err() == nil; i++ {
		oname := r.String(wire.MaxStringLen)
		path := r.String(wire.MaxPathLen)
		algo := r.String(wire.MaxStringLen)
		hash := r.String(wire.MaxStringLen)
		if r.Err() != nil {
			break
		}
		o, err := parseOutput(r.StoreDir, path, algo, hash)
		if err != nil {
			r.Fail(fmt.Errorf("read derivation output %q: %w", oname, err))
			break
		}
		if _, dup := d.Outputs[oname]; dup {
			r.Failf("read derivation: duplicate output %q: %w", oname, ErrProtocol)
			break
		}
		d.Outputs[oname] = o
	}
	d.InputSrcs = r.StorePaths()
	d.Platform = r.String(wire.MaxStringLen)
	d.Builder = r.String(wire.MaxStringLen)
	d.Args = r.Strings(wire.MaxTextLen)
	env := r.StringMap(wire.MaxTextLen)
	if r.Err() != nil {
		return nil
	}
	d.Env = env
	return d
}

func parseOutput(dir storepath.StoreDir, path, algo, hash string) (derivation.Output, error) {
	var sp storepath.StorePath
	if path != "" {
		var err error
		if dir != "" {
			sp, err = dir.Parse(path)
		} else {
			sp, err = storepath.Parse(path)
		}
		if err != nil {
			return derivation.Output{}, err
		}
	}
	if algo == "" {
		if hash != "" {
			return derivation.Output{}, fmt.Errorf("hash without algorithm: %w", ErrProtocol)
		}
		if sp.IsZero() {
			return derivation.DeferredOutput(), nil
		}
		return derivation.InputAddressedOutput(sp), nil
	}
	m, a, err := nixhash.ParseMethodAlgo(algo)
	if err != nil {
		return derivation.Output{}, err
	}
	switch hash {
	case "":
		if !sp.IsZero() {
			return derivation.Output{}, fmt.Errorf("floating output with a path: %w", ErrProtocol)
		}
		return derivation.FloatingOutput(m, a), nil
	case "impure":
		return derivation.ImpureOutput(m, a), nil
	}
	h, err := nixhash.ParseAny(hash, a)
	if err != nil {
		return derivation.Output{}, err
	}
	return derivation.FixedOutput(sp, nixhash.ContentAddress{Method: m, Hash: h}), nil
}

// WriteBasicDerivation writes d's wire form (its InputDrvs are left out).
func WriteBasicDerivation(w *wire.Writer, d *derivation.Derivation) {
	names := wire.SortedKeys(d.Outputs)
	w.Uint64(uint64(len(names)))
	for _, name := range names {
		o := d.Outputs[name]
		w.String(name)
		if o.Path.IsZero() {
			w.String("")
		} else {
			w.String(o.Path.String())
		}
		algo, hash := "", ""
		if o.HashAlgo != 0 {
			algo = nixhash.FormatMethodAlgo(o.Method, o.HashAlgo)
		}
		switch o.Kind() {
		case derivation.CAFixed:
			hash = o.Hash.Base16()
		case derivation.Impure:
			hash = "impure"
		}
		w.String(algo)
		w.String(hash)
	}
	srcs := slices.Clone(d.InputSrcs)
	storepath.SortPaths(srcs)
	w.StorePaths(srcs)
	w.String(d.Platform)
	w.String(d.Builder)
	w.Strings(d.Args)
	w.StringMap(d.Env)
}

// MissingInfo is the QueryMissing reply.
type MissingInfo struct {
	WillBuild      []storepath.StorePath
	WillSubstitute []storepath.StorePath
	Unknown        []storepath.StorePath
	DownloadSize   uint64
	NarSize        uint64
}

// ReadMissingInfo reads a QueryMissing reply.
func ReadMissingInfo(r *wire.Reader) *MissingInfo {
	m := &MissingInfo{WillBuild: r.StorePaths(), WillSubstitute: r.StorePaths(), Unknown: r.StorePaths(),
		DownloadSize: r.Uint64(), NarSize: r.Uint64()}
	if r.Err() != nil {
		return nil
	}
	return m
}

// WriteMissingInfo writes a QueryMissing reply.
func WriteMissingInfo(w *wire.Writer, m *MissingInfo) {
	w.StorePaths(m.WillBuild)
	w.StorePaths(m.WillSubstitute)
	w.StorePaths(m.Unknown)
	w.Uint64(m.DownloadSize)
	w.Uint64(m.NarSize)
}
