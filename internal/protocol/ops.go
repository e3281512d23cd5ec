package protocol

import "fmt"

// An Op is a worker protocol operation code.
type Op uint64

// Worker protocol operations. Ops marked obsolete are still answered by some
// daemons (and sent by Guix); see the fact sheet for which.
const (
	OpIsValidPath                 Op = 1
	OpHasSubstitutes              Op = 3 // obsolete
	OpQueryPathHash               Op = 4 // obsolete
	OpQueryReferences             Op = 5 // obsolete
	OpQueryReferrers              Op = 6
	OpAddToStore                  Op = 7
	OpAddTextToStore              Op = 8 // obsolete since 1.25
	OpBuildPaths                  Op = 9
	OpEnsurePath                  Op = 10
	OpAddTempRoot                 Op = 11
	OpAddIndirectRoot             Op = 12
	OpSyncWithGC                  Op = 13 // obsolete
	OpFindRoots                   Op = 14
	OpExportPath                  Op = 16 // obsolete
	OpQueryDeriver                Op = 18 // obsolete
	OpSetOptions                  Op = 19
	OpCollectGarbage              Op = 20
	OpQuerySubstitutablePathInfo  Op = 21
	OpQueryDerivationOutputs      Op = 22 // obsolete
	OpQueryAllValidPaths          Op = 23
	OpQueryFailedPaths            Op = 24 // Guix only
	OpClearFailedPaths            Op = 25 // Guix only
	OpQueryPathInfo               Op = 26
	OpImportPaths                 Op = 27 // obsolete
	OpQueryDerivationOutputNames  Op = 28 // obsolete
	OpQueryPathFromHashPart       Op = 29
	OpQuerySubstitutablePathInfos Op = 30
	OpQueryValidPaths             Op = 31
	OpQuerySubstitutablePaths     Op = 32
	OpQueryValidDerivers          Op = 33
	OpOptimiseStore               Op = 34
	OpVerifyStore                 Op = 35
	OpBuildDerivation             Op = 36
	OpAddSignatures               Op = 37
	OpNarFromPath                 Op = 38
	OpAddToStoreNar               Op = 39
	OpQueryMissing                Op = 40
	OpQueryDerivationOutputMap    Op = 41
	OpRegisterDrvOutput           Op = 42
	OpQueryRealisation            Op = 43
	OpAddMultipleToStore          Op = 44
	OpAddBuildLog                 Op = 45
	OpBuildPathsWithResults       Op = 46
	OpAddPermRoot                 Op = 47
	OpBuiltinBuilders             Op = 80 // Guix only

	OpSubmitOutput       Op = 1000 // builder RPC, feature submit-output
	OpAddToStoreScanning Op = 1001 // builder RPC, feature add-to-store-scanning
)

var opNames = map[Op]string{
	OpIsValidPath: "IsValidPath", OpHasSubstitutes: "HasSubstitutes", OpQueryPathHash: "QueryPathHash",
	OpQueryReferences: "QueryReferences", OpQueryReferrers: "QueryReferrers", OpAddToStore: "AddToStore",
	OpAddTextToStore: "AddTextToStore", OpBuildPaths: "BuildPaths", OpEnsurePath: "EnsurePath",
	OpAddTempRoot: "AddTempRoot", OpAddIndirectRoot: "AddIndirectRoot", OpSyncWithGC: "SyncWithGC",
	OpFindRoots: "FindRoots", OpExportPath: "ExportPath", OpQueryDeriver: "QueryDeriver",
	OpSetOptions: "SetOptions", OpCollectGarbage: "CollectGarbage",
	OpQuerySubstitutablePathInfo: "QuerySubstitutablePathInfo", OpQueryDerivationOutputs: "QueryDerivationOutputs",
	OpQueryAllValidPaths: "QueryAllValidPaths", OpQueryFailedPaths: "QueryFailedPaths",
	OpClearFailedPaths: "ClearFailedPaths", OpQueryPathInfo: "QueryPathInfo", OpImportPaths: "ImportPaths",
	OpQueryDerivationOutputNames: "QueryDerivationOutputNames", OpQueryPathFromHashPart: "QueryPathFromHashPart",
	OpQuerySubstitutablePathInfos: "QuerySubstitutablePathInfos", OpQueryValidPaths: "QueryValidPaths",
	OpQuerySubstitutablePaths: "QuerySubstitutablePaths", OpQueryValidDerivers: "QueryValidDerivers",
	OpOptimiseStore: "OptimiseStore", OpVerifyStore: "VerifyStore", OpBuildDerivation: "BuildDerivation",
	OpAddSignatures: "AddSignatures", OpNarFromPath: "NarFromPath", OpAddToStoreNar: "AddToStoreNar",
	OpQueryMissing: "QueryMissing", OpQueryDerivationOutputMap: "QueryDerivationOutputMap",
	OpRegisterDrvOutput: "RegisterDrvOutput", OpQueryRealisation: "QueryRealisation",
	OpAddMultipleToStore: "AddMultipleToStore", OpAddBuildLog: "AddBuildLog",
	OpBuildPathsWithResults: "BuildPathsWithResults", OpAddPermRoot: "AddPermRoot",
	OpBuiltinBuilders: "BuiltinBuilders", OpSubmitOutput: "SubmitOutput", OpAddToStoreScanning: "AddToStoreScanning",
}

// String is the op's name, or "Op(n)" for an unknown code.
func (op Op) String() string {
	if s, ok := opNames[op]; ok {
		return s
	}
	return fmt.Sprintf("Op(%d)", uint64(op))
}

// Known reports whether op is a code some Nix, Lix or Guix peer sends.
func (op Op) Known() bool { _, ok := opNames[op]; return ok }

// BuildMode is how BuildPaths and friends build.
type BuildMode uint64

const (
	BuildNormal BuildMode = 0
	BuildRepair BuildMode = 1
	BuildCheck  BuildMode = 2
)

// GCAction is what CollectGarbage does.
type GCAction uint64

const (
	GCReturnLive     GCAction = 0
	GCReturnDead     GCAction = 1
	GCDeleteDead     GCAction = 2
	GCDeleteSpecific GCAction = 3
)

// Verbosity is a log level.
type Verbosity uint64

const (
	LvlError Verbosity = iota
	LvlWarn
	LvlNotice
	LvlInfo
	LvlTalkative
	LvlChatty
	LvlDebug
	LvlVomit
)

// TrustedFlag is the daemon's trust statement in the handshake (≥1.35).
type TrustedFlag uint64

const (
	TrustUnknown TrustedFlag = 0
	Trusted      TrustedFlag = 1
	NotTrusted   TrustedFlag = 2
)
