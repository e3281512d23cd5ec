package protocol

import (
	"fmt"

	"cairn/internal/derivation"
	"cairn/internal/nixhash"
	"cairn/internal/storepath"
	"cairn/internal/wire"
)

// A Request is the arguments of one operation, as the client sends them after
// the op code. Read decodes them at Params p (errors are left in r.Err);
// Write encodes them (errors in w.Err). For ops that carry a payload after the
// arguments (a framed stream, a raw NAR, a STDERR_READ exchange) the payload is
// not part of the Request; its doc comment says what follows.
type Request interface {
	Op() Op
	Read(r *wire.Reader, p Params)
	Write(w *wire.Writer, p Params)
}

// NewRequest returns an empty Request for op, or an error for an op nobody
// sends or that p's dialect lacks.
func NewRequest(op Op, p Params) (Request, error) {
	switch op {
	case OpIsValidPath, OpHasSubstitutes, OpQueryPathHash, OpQueryReferences, OpQueryReferrers,
		OpEnsurePath, OpAddTempRoot, OpQueryDeriver, OpQuerySubstitutablePathInfo,
		OpQueryDerivationOutputs, OpQueryPathInfo, OpQueryDerivationOutputNames,
		OpQueryValidDerivers, OpNarFromPath, OpQueryDerivationOutputMap:
		return &PathRequest{Code: op}, nil
	case OpSyncWithGC, OpFindRoots, OpQueryAllValidPaths, OpOptimiseStore, OpImportPaths:
		return &EmptyRequest{Code: op}, nil
	case OpQueryFailedPaths, OpBuiltinBuilders:
		if p.Guix {
			return &EmptyRequest{Code: op}, nil
		}
	case OpClearFailedPaths:
		if p.Guix {
			return &PathsRequest{Code: op}, nil
		}
	case OpQuerySubstitutablePaths:
		return &PathsRequest{Code: op}, nil
	case OpAddToStore:
		return &AddToStoreRequest{}, nil
	case OpAddTextToStore:
		return &AddTextToStoreRequest{}, nil
	case OpBuildPaths, OpBuildPathsWithResults:
		return &BuildPathsRequest{Code: op}, nil
	case OpAddIndirectRoot:
		return &AddIndirectRootRequest{}, nil
	case OpExportPath:
		return &ExportPathRequest{}, nil
	case OpSetOptions:
		return &SetOptionsRequest{}, nil
	case OpCollectGarbage:
		return &CollectGarbageRequest{}, nil
	case OpQueryPathFromHashPart:
		return &QueryPathFromHashPartRequest{}, nil
	case OpQuerySubstitutablePathInfos:
		return &QuerySubstitutablePathInfosRequest{}, nil
	case OpQueryValidPaths:
		return &QueryValidPathsRequest{}, nil
	case OpVerifyStore:
		return &VerifyStoreRequest{}, nil
	case OpBuildDerivation:
		return &BuildDerivationRequest{}, nil
	case OpAddSignatures:
		return &AddSignaturesRequest{}, nil
	case OpAddToStoreNar:
		return &AddToStoreNarRequest{}, nil
	case OpQueryMissing:
		return &QueryMissingRequest{}, nil
	case OpRegisterDrvOutput:
		return &RegisterDrvOutputRequest{}, nil
	case OpQueryRealisation:
		return &QueryRealisationRequest{}, nil
	case OpAddMultipleToStore:
		return &AddMultipleToStoreRequest{}, nil
	case OpAddBuildLog:
		return &AddBuildLogRequest{}, nil
	case OpAddPermRoot:
		return &AddPermRootRequest{}, nil
	}
	return nil, fmt.Errorf("read op: %v: %w", op, ErrUnknownOp)
}

// ErrUnknownOp is returned by NewRequest for an op it does not know.
var ErrUnknownOp = fmt.Errorf("invalid operation")

// ReadRequest reads an op code and its arguments. At a clean end of stream
// (the client hung up between ops) the error is io.EOF.
func ReadRequest(r *wire.Reader, p Params) (Request, error) {
	op := Op(r.Uint64())
	if err := r.Err(); err != nil {
		return nil, err
	}
	req, err := NewRequest(op, p)
	if err != nil {
		return nil, err
	}
	req.Read(r, p)
	if err := r.Err(); err != nil {
		return nil, fmt.Errorf("read %v: %w", op, eofUnexpected(err))
	}
	return req, nil
}

// WriteRequest writes req's op code and arguments.
func WriteRequest(w *wire.Writer, p Params, req Request) {
	w.Uint64(uint64(req.Op()))
	req.Write(w, p)
}

// PathRequest is every op whose only argument is a store path: IsValidPath,
// HasSubstitutes, QueryPathHash, QueryReferences, QueryReferrers, EnsurePath,
// AddTempRoot, QueryDeriver, QuerySubstitutablePathInfo, QueryDerivationOutputs,
// QueryPathInfo, QueryDerivationOutputNames, QueryValidDerivers, NarFromPath,
// QueryDerivationOutputMap.
type PathRequest struct {
	Code Op
	Path storepath.StorePath
}

func (q *PathRequest) Op() Op                         { return q.Code }
func (q *PathRequest) Read(r *wire.Reader, p Params)  { q.Path = r.StorePath() }
func (q *PathRequest) Write(w *wire.Writer, p Params) { w.StorePath(q.Path) }

// EmptyRequest is every op without arguments: SyncWithGC, FindRoots,
// QueryAllValidPaths, OptimiseStore, ImportPaths (whose export stream the
// daemon then pulls with STDERR_READ), and Guix's QueryFailedPaths and
// BuiltinBuilders.
type EmptyRequest struct{ Code Op }

func (q *EmptyRequest) Op() Op                         { return q.Code }
func (q *EmptyRequest) Read(r *wire.Reader, p Params)  {}
func (q *EmptyRequest) Write(w *wire.Writer, p Params) {}

// PathsRequest is QuerySubstitutablePaths and Guix's ClearFailedPaths: a path set.
type PathsRequest struct {
	Code  Op
	Paths []storepath.StorePath
}

func (q *PathsRequest) Op() Op                         { return q.Code }
func (q *PathsRequest) Read(r *wire.Reader, p Params)  { q.Paths = r.StorePaths() }
func (q *PathsRequest) Write(w *wire.Writer, p Params) { w.StorePaths(q.Paths) }

// AddToStoreRequest is op 7. ≥1.25: name, CA method string, references,
// repair, then a framed payload (raw bytes for text and flat, a NAR for r: and
// git:); the reply is a ValidPathInfo. Below 1.25 (and for Guix): name,
// fixed, recursive, hash algorithm, then an unframed NAR; the reply is the path.
type AddToStoreRequest struct {
	Name string
	// ≥1.25
	Method     nixhash.Method
	HashAlgo   nixhash.Algorithm
	References []storepath.StorePath
	Repair     bool
	// <1.25
	Fixed     bool
	Recursive bool
	OldAlgo   string // "sha256", …
}

func (q *AddToStoreRequest) Op() Op { return OpAddToStore }

// CAMethod is the ≥1.25 method string: "text:sha256", "fixed:r:sha256", "fixed:sha1", …
func (q *AddToStoreRequest) CAMethod() string {
	if q.Method == nixhash.Text {
		return "text:" + q.HashAlgo.String()
	}
	return "fixed:" + nixhash.FormatMethodAlgo(q.Method, q.HashAlgo)
}

func (q *AddToStoreRequest) Read(r *wire.Reader, p Params) {
	q.Name = r.String(wire.MaxStringLen)
	if !p.nix(25) {
		q.Fixed = r.Bool()
		q.Recursive = r.Bool()
		q.OldAlgo = r.String(wire.MaxStringLen)
		return
	}
	cam := r.Bytes(wire.MaxStringLen)
	if r.Err() != nil {
		return
	}
	m, a, err := parseCAMethod(string(cam))
	if err != nil {
		r.Fail(fmt.Errorf("read AddToStore: %w", err))
		return
	}
	q.Method, q.HashAlgo = m, a
	q.References = r.StorePaths()
	q.Repair = r.Bool()
}

func parseCAMethod(s string) (nixhash.Method, nixhash.Algorithm, error) {
	if rest, ok := cutPrefix(s, "text:"); ok {
		a, err := nixhash.ParseAlgorithm(rest)
		return nixhash.Text, a, err
	}
	if rest, ok := cutPrefix(s, "fixed:"); ok {
		m, a, err := nixhash.ParseMethodAlgo(rest)
		if err == nil && m == nixhash.Text {
			err = fmt.Errorf("content address method %q: %w", s, ErrProtocol)
		}
		return m, a, err
	}
	return 0, 0, fmt.Errorf("content address method %q: %w", s, ErrProtocol)
}

func cutPrefix(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && s[:len(prefix)] == prefix {
		return s[len(prefix):], true
	}
	return s, false
}

func (q *AddToStoreRequest) Write(w *wire.Writer, p Params) {
	w.String(q.Name)
	if !p.nix(25) {
		w.Bool(q.Fixed)
		w.Bool(q.Recursive)
		w.String(q.OldAlgo)
		return
	}
	w.String(q.CAMethod())
	w.StorePaths(q.References)
	w.Bool(q.Repair)
}

// AddTextToStoreRequest is op 8 (obsolete since 1.25; Guix uses it): name,
// text, references. The reply is the path.
type AddTextToStoreRequest struct {
	Name       string
	Text       string
	References []storepath.StorePath
}

func (q *AddTextToStoreRequest) Op() Op { return OpAddTextToStore }
func (q *AddTextToStoreRequest) Read(r *wire.Reader, p Params) {
	q.Name = r.String(wire.MaxStringLen)
	q.Text = r.String(wire.MaxTextLen)
	q.References = r.StorePaths()
}
func (q *AddTextToStoreRequest) Write(w *wire.Writer, p Params) {
	w.String(q.Name)
	w.String(q.Text)
	w.StorePaths(q.References)
}

// BuildPathsRequest is BuildPaths (9) and BuildPathsWithResults (46): derived
// paths, then (≥1.15) a build mode. BuildPaths replies u64 1;
// BuildPathsWithResults replies a list of KeyedBuildResult.
type BuildPathsRequest struct {
	Code  Op
	Paths []DerivedPath
	Mode  BuildMode
}

func (q *BuildPathsRequest) Op() Op { return q.Code }
func (q *BuildPathsRequest) Read(r *wire.Reader, p Params) {
	q.Paths = ReadDerivedPaths(r, p)
	if p.Version.AtLeast(15) {
		q.Mode = BuildMode(r.Int("build mode", uint64(BuildCheck)))
	}
}
func (q *BuildPathsRequest) Write(w *wire.Writer, p Params) {
	WriteDerivedPaths(w, p, q.Paths)
	if p.Version.AtLeast(15) {
		w.Uint64(uint64(q.Mode))
	}
}

// AddIndirectRootRequest is op 12: an absolute symlink path (not a store path).
type AddIndirectRootRequest struct{ Path string }

func (q *AddIndirectRootRequest) Op() Op                         { return OpAddIndirectRoot }
func (q *AddIndirectRootRequest) Read(r *wire.Reader, p Params)  { q.Path = r.String(wire.MaxPathLen) }
func (q *AddIndirectRootRequest) Write(w *wire.Writer, p Params) { w.String(q.Path) }

// ExportPathRequest is op 16 (obsolete): a path and an ignored flag; the data
// goes out as STDERR_WRITE messages, then the reply u64 1.
type ExportPathRequest struct {
	Path storepath.StorePath
	Sign uint64
}

func (q *ExportPathRequest) Op() Op { return OpExportPath }
func (q *ExportPathRequest) Read(r *wire.Reader, p Params) {
	q.Path = r.StorePath()
	q.Sign = r.Uint64()
}
func (q *ExportPathRequest) Write(w *wire.Writer, p Params) {
	w.StorePath(q.Path)
	w.Uint64(q.Sign)
}

// SetOptionsRequest is op 19. No reply beyond STDERR_LAST.
type SetOptionsRequest struct{ ClientOptions }

func (q *SetOptionsRequest) Op() Op { return OpSetOptions }

// CollectGarbageRequest is op 20: action, paths, ignoreLiveness (must be
// false), maxFreed, three obsolete u64s. With delete-dead-specific-referrers
// the path set is a tagged union (whole store, or paths plus deleteReferrers).
// The reply is a GCResult.
type CollectGarbageRequest struct {
	Action          GCAction
	Paths           []storepath.StorePath
	WholeStore      bool // feature form only: tag 1
	DeleteReferrers bool // feature form only
	IgnoreLiveness  bool
	MaxFreed        uint64
	Obsolete        [3]uint64
}

func (q *CollectGarbageRequest) Op() Op { return OpCollectGarbage }
func (q *CollectGarbageRequest) Read(r *wire.Reader, p Params) {
	q.Action = GCAction(r.Int("gc action", uint64(GCDeleteSpecific)))
	if p.Has(FeatureDeleteDeadSpecificReferrers) {
		switch tag := r.Uint64(); tag {
		case 1:
			q.WholeStore = true
		case 0:
			q.Paths = r.StorePaths()
			q.DeleteReferrers = r.Bool()
		default:
			r.Failf("read CollectGarbage: tag %d: %w", tag, ErrProtocol)
		}
	} else {
		q.Paths = r.StorePaths()
	}
	q.IgnoreLiveness = r.Bool()
	q.MaxFreed = r.Uint64()
	for i := range q.Obsolete {
		q.Obsolete[i] = r.Uint64()
	}
}
func (q *CollectGarbageRequest) Write(w *wire.Writer, p Params) {
	w.Uint64(uint64(q.Action))
	if p.Has(FeatureDeleteDeadSpecificReferrers) {
		if q.WholeStore {
			w.Uint64(1)
		} else {
			w.Uint64(0)
			w.StorePaths(q.Paths)
			w.Bool(q.DeleteReferrers)
		}
	} else {
		w.StorePaths(q.Paths)
	}
	w.Bool(q.IgnoreLiveness)
	w.Uint64(q.MaxFreed)
	for _, v := range q.Obsolete {
		w.Uint64(v)
	}
}

// QueryPathFromHashPartRequest is op 29: a hash part; the reply is an
// optional path.
type QueryPathFromHashPartRequest struct{ HashPart string }

func (q *QueryPathFromHashPartRequest) Op() Op { return OpQueryPathFromHashPart }
func (q *QueryPathFromHashPartRequest) Read(r *wire.Reader, p Params) {
	q.HashPart = r.String(wire.MaxStringLen)
}
func (q *QueryPathFromHashPartRequest) Write(w *wire.Writer, p Params) { w.String(q.HashPart) }

// QuerySubstitutablePathInfosRequest is op 30: below 1.22 a path set, from
// 1.22 a map path → optional content address (CAs parallel to Paths).
type QuerySubstitutablePathInfosRequest struct {
	Paths []storepath.StorePath
	CAs   []nixhash.ContentAddress
}

func (q *QuerySubstitutablePathInfosRequest) Op() Op { return OpQuerySubstitutablePathInfos }
func (q *QuerySubstitutablePathInfosRequest) Read(r *wire.Reader, p Params) {
	if !p.nix(22) {
		q.Paths = r.StorePaths()
		q.CAs = make([]nixhash.ContentAddress, len(q.Paths))
		return
	}
	n := r.Count()
	for i := 0; i < n && r.Err() == nil; i++ {
		q.Paths = append(q.Paths, r.StorePath())
		q.CAs = append(q.CAs, ReadCA(r))
	}
}
func (q *QuerySubstitutablePathInfosRequest) Write(w *wire.Writer, p Params) {
	if !p.nix(22) {
		w.StorePaths(q.Paths)
		return
	}
	w.Uint64(uint64(len(q.Paths)))
	for i, path := range q.Paths {
		w.StorePath(path)
		var ca nixhash.ContentAddress
		if i < len(q.CAs) {
			ca = q.CAs[i]
		}
		WriteCA(w, ca)
	}
}

// QueryValidPathsRequest is op 31: a path set and (≥1.27) whether to
// substitute; the reply is a path set.
type QueryValidPathsRequest struct {
	Paths      []storepath.StorePath
	Substitute bool
}

func (q *QueryValidPathsRequest) Op() Op { return OpQueryValidPaths }
func (q *QueryValidPathsRequest) Read(r *wire.Reader, p Params) {
	q.Paths = r.StorePaths()
	if p.nix(27) {
		q.Substitute = r.Bool()
	}
}
func (q *QueryValidPathsRequest) Write(w *wire.Writer, p Params) {
	w.StorePaths(q.Paths)
	if p.nix(27) {
		w.Bool(q.Substitute)
	}
}

// VerifyStoreRequest is op 35; the reply is u64 errorsFound.
type VerifyStoreRequest struct{ CheckContents, Repair bool }

func (q *VerifyStoreRequest) Op() Op { return OpVerifyStore }
func (q *VerifyStoreRequest) Read(r *wire.Reader, p Params) {
	q.CheckContents = r.Bool()
	q.Repair = r.Bool()
}
func (q *VerifyStoreRequest) Write(w *wire.Writer, p Params) {
	w.Bool(q.CheckContents)
	w.Bool(q.Repair)
}

// BuildDerivationRequest is op 36: drv path, BasicDerivation, build mode; the
// reply is a BuildResult.
type BuildDerivationRequest struct {
	DrvPath storepath.StorePath
	Drv     *derivation.Derivation
	Mode    BuildMode
}

func (q *BuildDerivationRequest) Op() Op { return OpBuildDerivation }
func (q *BuildDerivationRequest) Read(r *wire.Reader, p Params) {
	q.DrvPath = r.StorePath()
	if r.Err() != nil {
		return
	}
	if !q.DrvPath.IsDerivation() {
		r.Failf("read BuildDerivation: %s is not a derivation: %w", q.DrvPath, ErrProtocol)
		return
	}
	name := q.DrvPath.Name()
	q.Drv = ReadBasicDerivation(r, name[:len(name)-len(".drv")])
	q.Mode = BuildMode(r.Int("build mode", uint64(BuildCheck)))
}
func (q *BuildDerivationRequest) Write(w *wire.Writer, p Params) {
	w.StorePath(q.DrvPath)
	WriteBasicDerivation(w, q.Drv)
	w.Uint64(uint64(q.Mode))
}

// AddSignaturesRequest is op 37; the reply is u64 1.
type AddSignaturesRequest struct {
	Path       storepath.StorePath
	Signatures []string
}

func (q *AddSignaturesRequest) Op() Op { return OpAddSignatures }
func (q *AddSignaturesRequest) Read(r *wire.Reader, p Params) {
	q.Path = r.StorePath()
	q.Signatures = r.Strings(wire.MaxStringLen)
}
func (q *AddSignaturesRequest) Write(w *wire.Writer, p Params) {
	w.StorePath(q.Path)
	w.Strings(q.Signatures)
}

// AddToStoreNarRequest is op 39: a ValidPathInfo (always the ≥1.16 fields),
// repair, dontCheckSigs. The NAR follows: framed at ≥1.23, pulled with
// STDERR_READ at 1.21–1.22, raw below. No reply beyond STDERR_LAST.
type AddToStoreNarRequest struct {
	Info          PathInfo
	Repair        bool
	DontCheckSigs bool
}

func (q *AddToStoreNarRequest) Op() Op { return OpAddToStoreNar }
func (q *AddToStoreNarRequest) Read(r *wire.Reader, p Params) {
	if info := ReadPathInfo(r, Params{Version: V(1, 16)}); info != nil {
		q.Info = *info
	}
	q.Repair = r.Bool()
	q.DontCheckSigs = r.Bool()
}
func (q *AddToStoreNarRequest) Write(w *wire.Writer, p Params) {
	WritePathInfo(w, Params{Version: V(1, 16)}, &q.Info)
	w.Bool(q.Repair)
	w.Bool(q.DontCheckSigs)
}

// QueryMissingRequest is op 40; the reply is a MissingInfo.
type QueryMissingRequest struct{ Paths []DerivedPath }

func (q *QueryMissingRequest) Op() Op                         { return OpQueryMissing }
func (q *QueryMissingRequest) Read(r *wire.Reader, p Params)  { q.Paths = ReadDerivedPaths(r, p) }
func (q *QueryMissingRequest) Write(w *wire.Writer, p Params) { WriteDerivedPaths(w, p, q.Paths) }

// RegisterDrvOutputRequest is op 42. Below 1.31: DrvOutput id string and the
// out path's basename; 1.31–: the Realisation JSON; with
// realisation-with-path-not-hash: drv path, output name, out path, signatures.
type RegisterDrvOutputRequest struct {
	ID         string // "sha256:<hex>!out" (not with the feature)
	DrvPath    storepath.StorePath
	OutputName string
	Realisation
	JSON string // the JSON as received (1.31–)
}

func (q *RegisterDrvOutputRequest) Op() Op { return OpRegisterDrvOutput }
func (q *RegisterDrvOutputRequest) Read(r *wire.Reader, p Params) {
	switch {
	case p.Has(FeatureRealisationWithPath):
		q.DrvPath = r.StorePath()
		q.OutputName = r.String(wire.MaxStringLen)
		q.OutPath = r.StorePath()
		q.Signatures = r.Strings(wire.MaxStringLen)
	case p.nix(31):
		q.JSON = r.String(wire.MaxStringLen)
		if r.Err() != nil {
			return
		}
		real, err := ParseRealisationJSON(r.StoreDir, []byte(q.JSON))
		if err != nil {
			r.Fail(err)
			return
		}
		q.Realisation = *real
	default:
		q.ID = r.String(wire.MaxStringLen)
		base := r.String(wire.MaxPathLen)
		if r.Err() != nil {
			return
		}
		dir := r.StoreDir
		if dir == "" {
			dir = storepath.DefaultStoreDir
		}
		sp, err := dir.FromBase(base)
		if err != nil {
			r.Fail(err)
			return
		}
		q.Realisation = Realisation{ID: q.ID, OutPath: sp}
	}
}
func (q *RegisterDrvOutputRequest) Write(w *wire.Writer, p Params) {
	switch {
	case p.Has(FeatureRealisationWithPath):
		w.StorePath(q.DrvPath)
		w.String(q.OutputName)
		w.StorePath(q.OutPath)
		w.Strings(q.Signatures)
	case p.nix(31):
		if q.JSON != "" {
			w.String(q.JSON)
		} else {
			w.String(string(q.Realisation.JSON()))
		}
	default:
		w.String(q.ID)
		w.String(q.OutPath.Base())
	}
}

// QueryRealisationRequest is op 43: a DrvOutput id string, or with
// realisation-with-path-not-hash a drv path and output name.
type QueryRealisationRequest struct {
	ID         string
	DrvPath    storepath.StorePath
	OutputName string
}

func (q *QueryRealisationRequest) Op() Op { return OpQueryRealisation }
func (q *QueryRealisationRequest) Read(r *wire.Reader, p Params) {
	if p.Has(FeatureRealisationWithPath) {
		q.DrvPath = r.StorePath()
		q.OutputName = r.String(wire.MaxStringLen)
		return
	}
	q.ID = r.String(wire.MaxStringLen)
}
func (q *QueryRealisationRequest) Write(w *wire.Writer, p Params) {
	if p.Has(FeatureRealisationWithPath) {
		w.StorePath(q.DrvPath)
		w.String(q.OutputName)
		return
	}
	w.String(q.ID)
}

// AddMultipleToStoreRequest is op 44: repair, dontCheckSigs, then a framed
// stream holding u64 count and count × (ValidPathInfo in the 1.16 layout,
// exactly NarSize NAR bytes); read it with MultipleReader. No reply.
type AddMultipleToStoreRequest struct{ Repair, DontCheckSigs bool }

func (q *AddMultipleToStoreRequest) Op() Op { return OpAddMultipleToStore }
func (q *AddMultipleToStoreRequest) Read(r *wire.Reader, p Params) {
	q.Repair = r.Bool()
	q.DontCheckSigs = r.Bool()
}
func (q *AddMultipleToStoreRequest) Write(w *wire.Writer, p Params) {
	w.Bool(q.Repair)
	w.Bool(q.DontCheckSigs)
}

// AddBuildLogRequest is op 45: a drv basename, then the log as a framed
// stream; the reply is u64 1.
type AddBuildLogRequest struct{ DrvBase string }

func (q *AddBuildLogRequest) Op() Op { return OpAddBuildLog }
func (q *AddBuildLogRequest) Read(r *wire.Reader, p Params) {
	q.DrvBase = r.String(wire.MaxPathLen)
	if r.Err() == nil {
		dir := r.StoreDir
		if dir == "" {
			dir = storepath.DefaultStoreDir
		}
		if _, err := dir.FromBase(q.DrvBase); err != nil {
			r.Fail(fmt.Errorf("read AddBuildLog: %w", err))
		}
	}
}
func (q *AddBuildLogRequest) Write(w *wire.Writer, p Params) { w.String(q.DrvBase) }

// AddPermRootRequest is op 47 (≥1.36): a store path and a root path; the reply
// is the root path.
type AddPermRootRequest struct {
	Path   storepath.StorePath
	GCRoot string
}

func (q *AddPermRootRequest) Op() Op { return OpAddPermRoot }
func (q *AddPermRootRequest) Read(r *wire.Reader, p Params) {
	q.Path = r.StorePath()
	q.GCRoot = r.String(wire.MaxPathLen)
}
func (q *AddPermRootRequest) Write(w *wire.Writer, p Params) {
	w.StorePath(q.Path)
	w.String(q.GCRoot)
}
