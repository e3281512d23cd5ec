package protocol

import (
	"fmt"

	"cairn/internal/storepath"
	"cairn/internal/wire"
)

// A Reply is what the daemon sends after STDERR_LAST for one op. NarFromPath
// (a raw NAR), ExportPath data (STDERR_WRITE) and ops without a reply have no
// Reply type: NewReply returns nil for them.
type Reply interface {
	Read(r *wire.Reader, p Params)
	Write(w *wire.Writer, p Params)
}

// NewReply returns an empty Reply for op, or nil when op has none.
func NewReply(op Op, p Params) Reply {
	switch op {
	case OpIsValidPath, OpHasSubstitutes:
		return &BoolReply{}
	case OpBuildPaths, OpEnsurePath, OpAddTempRoot, OpAddIndirectRoot, OpSyncWithGC, OpExportPath,
		OpOptimiseStore, OpVerifyStore, OpAddSignatures, OpAddBuildLog, OpClearFailedPaths:
		return &U64Reply{}
	case OpQueryPathHash:
		return &StringReply{}
	case OpQueryReferences, OpQueryReferrers, OpQueryDerivationOutputs, OpQueryAllValidPaths,
		OpQueryValidPaths, OpQuerySubstitutablePaths, OpQueryValidDerivers, OpQueryFailedPaths:
		return &PathsReply{}
	case OpAddToStore:
		if p.nix(25) {
			return &PathInfoReply{}
		}
		return &PathReply{}
	case OpAddTextToStore, OpQueryDeriver, OpQueryPathFromHashPart:
		return &PathReply{}
	case OpAddPermRoot:
		return &StringReply{}
	case OpFindRoots:
		return &RootsReply{}
	case OpCollectGarbage:
		return &GCReply{}
	case OpQuerySubstitutablePathInfo:
		return &SubstitutablePathInfoReply{}
	case OpQuerySubstitutablePathInfos:
		return &SubstitutablePathInfosReply{}
	case OpQueryPathInfo:
		return &QueryPathInfoReply{}
	case OpImportPaths, OpQueryDerivationOutputNames, OpBuiltinBuilders:
		return &StringsReply{}
	case OpBuildDerivation:
		return &BuildResultReply{}
	case OpQueryMissing:
		return &MissingInfo{}
	case OpQueryDerivationOutputMap:
		return &OutputMapReply{}
	case OpQueryRealisation:
		return &RealisationsReply{}
	case OpBuildPathsWithResults:
		return &KeyedBuildResultsReply{}
	}
	return nil
}

// BoolReply is a u64 boolean.
type BoolReply struct{ Value bool }

func (x *BoolReply) Read(r *wire.Reader, p Params)  { x.Value = r.Bool() }
func (x *BoolReply) Write(w *wire.Writer, p Params) { w.Bool(x.Value) }

// U64Reply is a plain u64 (1 for most ops, errorsFound for VerifyStore).
type U64Reply struct{ Value uint64 }

func (x *U64Reply) Read(r *wire.Reader, p Params)  { x.Value = r.Uint64() }
func (x *U64Reply) Write(w *wire.Writer, p Params) { w.Uint64(x.Value) }

// StringReply is one string (QueryPathHash's base16 hash, AddPermRoot's root).
type StringReply struct{ Value string }

func (x *StringReply) Read(r *wire.Reader, p Params)  { x.Value = r.String(wire.MaxStringLen) }
func (x *StringReply) Write(w *wire.Writer, p Params) { w.String(x.Value) }

// StringsReply is a string list or set.
type StringsReply struct{ Values []string }

func (x *StringsReply) Read(r *wire.Reader, p Params)  { x.Values = r.Strings(wire.MaxPathLen) }
func (x *StringsReply) Write(w *wire.Writer, p Params) { w.Strings(x.Values) }

// PathReply is an optional store path.
type PathReply struct{ Path storepath.StorePath }

func (x *PathReply) Read(r *wire.Reader, p Params)  { x.Path = r.OptStorePath() }
func (x *PathReply) Write(w *wire.Writer, p Params) { w.OptStorePath(x.Path) }

// PathsReply is a store path set.
type PathsReply struct{ Paths []storepath.StorePath }

func (x *PathsReply) Read(r *wire.Reader, p Params)  { x.Paths = r.StorePaths() }
func (x *PathsReply) Write(w *wire.Writer, p Params) { w.StorePaths(x.Paths) }

// PathInfoReply is a ValidPathInfo (the AddToStore reply at ≥1.25).
type PathInfoReply struct{ Info *PathInfo }

func (x *PathInfoReply) Read(r *wire.Reader, p Params)  { x.Info = ReadPathInfo(r, p) }
func (x *PathInfoReply) Write(w *wire.Writer, p Params) { WritePathInfo(w, p, x.Info) }

// QueryPathInfoReply is the QueryPathInfo reply: (≥1.17) a valid flag, then
// the unkeyed info when valid. Info.Path is left zero; the caller knows it.
type QueryPathInfoReply struct {
	Valid bool
	Info  *PathInfo
}

func (x *QueryPathInfoReply) Read(r *wire.Reader, p Params) {
	x.Valid = true
	if p.nix(17) {
		x.Valid = r.Bool()
	}
	if x.Valid {
		x.Info = ReadUnkeyedPathInfo(r, p, storepath.StorePath{})
	}
}
func (x *QueryPathInfoReply) Write(w *wire.Writer, p Params) {
	if p.nix(17) {
		w.Bool(x.Valid)
	}
	if x.Valid {
		WriteUnkeyedPathInfo(w, p, x.Info)
	}
}

// RootsReply is the FindRoots reply: link → target pairs, in the order sent
// (Nix sends them sorted by link).
type RootsReply struct {
	Links   []string
	Targets []storepath.StorePath
}

func (x *RootsReply) Read(r *wire.Reader, p Params) {
	n := r.Count()
	for i := 0; i < n && r.Err() == nil; i++ {
		x.Links = append(x.Links, r.String(wire.MaxPathLen))
		x.Targets = append(x.Targets, r.StorePath())
	}
}
func (x *RootsReply) Write(w *wire.Writer, p Params) {
	w.Uint64(uint64(len(x.Links)))
	for i, l := range x.Links {
		w.String(l)
		w.StorePath(x.Targets[i])
	}
}

// GCReply is the CollectGarbage reply: deleted paths (strings), bytes freed,
// and an obsolete u64 0.
type GCReply struct {
	Paths      []string
	BytesFreed uint64
	Obsolete   uint64
}

func (x *GCReply) Read(r *wire.Reader, p Params) {
	x.Paths = r.Strings(wire.MaxPathLen)
	x.BytesFreed = r.Uint64()
	x.Obsolete = r.Uint64()
}
func (x *GCReply) Write(w *wire.Writer, p Params) {
	w.Strings(x.Paths)
	w.Uint64(x.BytesFreed)
	w.Uint64(x.Obsolete)
}

// SubstitutablePathInfoReply is the QuerySubstitutablePathInfo reply.
type SubstitutablePathInfoReply struct {
	Valid bool
	Info  SubstitutablePathInfo
}

func (x *SubstitutablePathInfoReply) Read(r *wire.Reader, p Params) {
	if x.Valid = r.Bool(); x.Valid {
		readSubstitutable(r, &x.Info)
	}
}
func (x *SubstitutablePathInfoReply) Write(w *wire.Writer, p Params) {
	w.Bool(x.Valid)
	if x.Valid {
		writeSubstitutable(w, &x.Info)
	}
}

// SubstitutablePathInfosReply is the QuerySubstitutablePathInfos reply.
type SubstitutablePathInfosReply struct{ Infos []SubstitutablePathInfo }

func (x *SubstitutablePathInfosReply) Read(r *wire.Reader, p Params) {
	n := r.Count()
	for i := 0; i < n && r.Err() == nil; i++ {
		s := SubstitutablePathInfo{Path: r.StorePath()}
		readSubstitutable(r, &s)
		x.Infos = append(x.Infos, s)
	}
}
func (x *SubstitutablePathInfosReply) Write(w *wire.Writer, p Params) {
	w.Uint64(uint64(len(x.Infos)))
	for i := range x.Infos {
		w.StorePath(x.Infos[i].Path)
		writeSubstitutable(w, &x.Infos[i])
	}
}

// BuildResultReply is the BuildDerivation reply.
type BuildResultReply struct{ Result *BuildResult }

func (x *BuildResultReply) Read(r *wire.Reader, p Params)  { x.Result = ReadBuildResult(r, p) }
func (x *BuildResultReply) Write(w *wire.Writer, p Params) { WriteBuildResult(w, p, x.Result) }

// KeyedBuildResultsReply is the BuildPathsWithResults reply.
type KeyedBuildResultsReply struct{ Results []KeyedBuildResult }

func (x *KeyedBuildResultsReply) Read(r *wire.Reader, p Params) {
	n := r.Count()
	for i := 0; i < n && r.Err() == nil; i++ {
		s := r.Bytes(wire.MaxStringLen)
		if r.Err() != nil {
			return
		}
		d, err := ParseDerivedPath(r.StoreDir, p, string(s))
		if err != nil {
			r.Fail(err)
			return
		}
		b := ReadBuildResult(r, p)
		if b == nil {
			return
		}
		x.Results = append(x.Results, KeyedBuildResult{Path: d, BuildResult: *b})
	}
}
func (x *KeyedBuildResultsReply) Write(w *wire.Writer, p Params) {
	w.Uint64(uint64(len(x.Results)))
	for i := range x.Results {
		w.String(x.Results[i].Path.Format(p))
		WriteBuildResult(w, p, &x.Results[i].BuildResult)
	}
}

// Read and Write make MissingInfo the QueryMissing Reply.
func (m *MissingInfo) Read(r *wire.Reader, p Params) {
	if x := ReadMissingInfo(r); x != nil {
		*m = *x
	}
}
func (m *MissingInfo) Write(w *wire.Writer, p Params) { WriteMissingInfo(w, m) }

// OutputMapReply is the QueryDerivationOutputMap reply: output name →
// optional path.
type OutputMapReply struct {
	Outputs map[string]storepath.StorePath
}

func (x *OutputMapReply) Read(r *wire.Reader, p Params) {
	n := r.Count()
	x.Outputs = map[string]storepath.StorePath{}
	for i := 0; i < n && r.Err() == nil; i++ {
		name := r.String(wire.MaxStringLen)
		path := r.OptStorePath()
		if _, dup := x.Outputs[name]; dup && r.Err() == nil {
			r.Failf("read output map: duplicate %q: %w", name, ErrProtocol)
		}
		x.Outputs[name] = path
	}
}
func (x *OutputMapReply) Write(w *wire.Writer, p Params) {
	w.Uint64(uint64(len(x.Outputs)))
	for _, name := range wire.SortedKeys(x.Outputs) {
		w.String(name)
		w.OptStorePath(x.Outputs[name])
	}
}

// RealisationsReply is the QueryRealisation reply: below 1.31 a path set of
// zero or one out paths; 1.31– a set of Realisation JSON strings; with
// realisation-with-path-not-hash an optional (out path, signatures).
type RealisationsReply struct {
	Paths []storepath.StorePath // <1.31
	JSON  []string              // 1.31–
	// feature form
	Found      bool
	OutPath    storepath.StorePath
	Signatures []string
}

func (x *RealisationsReply) Read(r *wire.Reader, p Params) {
	switch {
	case p.Has(FeatureRealisationWithPath):
		switch tag := r.Uint64(); tag {
		case 0:
		case 1:
			x.Found = true
			x.OutPath = r.StorePath()
			x.Signatures = r.Strings(wire.MaxStringLen)
		default:
			r.Fail(fmt.Errorf("read QueryRealisation reply: tag %d: %w", tag, ErrProtocol))
		}
	case p.nix(31):
		x.JSON = r.Strings(wire.MaxStringLen)
	default:
		x.Paths = r.StorePaths()
	}
}
func (x *RealisationsReply) Write(w *wire.Writer, p Params) {
	switch {
	case p.Has(FeatureRealisationWithPath):
		w.Bool(x.Found)
		if x.Found {
			w.StorePath(x.OutPath)
			w.Strings(x.Signatures)
		}
	case p.nix(31):
		w.Strings(x.JSON)
	default:
		w.StorePaths(x.Paths)
	}
}
