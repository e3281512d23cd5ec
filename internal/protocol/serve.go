package protocol

import (
	"fmt"

	"cairn/internal/derivation"
	"cairn/internal/nixhash"
	"cairn/internal/storepath"
	"cairn/internal/wire"
)

// The serve protocol (nix-store --serve, used by ssh:// stores and remote
// builders): a handshake, then commands until EOF, each reply flushed. Errors
// are not framed: the server writes to its stderr and exits.
const (
	ServeMagic1 = 0x390c9deb // client → server
	ServeMagic2 = 0x5452eecb // server → client
	// ServeVersion is what Nix 2.8 speaks (2.7).
	ServeVersion = Version(0x207)
)

// ServeCmd is a serve protocol command.
type ServeCmd uint64

const (
	ServeQueryValidPaths ServeCmd = 1
	ServeQueryPathInfos  ServeCmd = 2
	ServeDumpStorePath   ServeCmd = 3
	ServeImportPaths     ServeCmd = 4
	ServeExportPaths     ServeCmd = 5
	ServeBuildPaths      ServeCmd = 6
	ServeQueryClosure    ServeCmd = 7
	ServeBuildDerivation ServeCmd = 8
	ServeAddToStoreNar   ServeCmd = 9
)

var serveNames = map[ServeCmd]string{
	ServeQueryValidPaths: "QueryValidPaths", ServeQueryPathInfos: "QueryPathInfos",
	ServeDumpStorePath: "DumpStorePath", ServeImportPaths: "ImportPaths", ServeExportPaths: "ExportPaths",
	ServeBuildPaths: "BuildPaths", ServeQueryClosure: "QueryClosure", ServeBuildDerivation: "BuildDerivation",
	ServeAddToStoreNar: "AddToStoreNar",
}

func (c ServeCmd) String() string {
	if s, ok := serveNames[c]; ok {
		return s
	}
	return fmt.Sprintf("ServeCmd(%d)", uint64(c))
}

// ServeServerHandshake reads the client's magic and version and answers with
// ours (flushed). It returns the client's version; the caller gates on
// min(client, ours).
func ServeServerHandshake(r *wire.Reader, w *wire.Writer, ours Version) (Version, error) {
	if m := r.Uint64(); r.Err() != nil {
		return 0, fmt.Errorf("serve handshake: %w", eofUnexpected(r.Err()))
	} else if m != ServeMagic1 {
		return 0, fmt.Errorf("serve handshake: bad magic %#x: %w", m, ErrProtocol)
	}
	cv := Version(r.Uint64())
	if r.Err() != nil {
		return 0, fmt.Errorf("serve handshake: %w", eofUnexpected(r.Err()))
	}
	w.Uint64(ServeMagic2)
	w.Uint64(uint64(ours))
	if err := w.Flush(); err != nil {
		return 0, fmt.Errorf("serve handshake: %w", err)
	}
	if cv.Major() != 2 || cv>>16 != 0 {
		return 0, fmt.Errorf("serve handshake: client version %#x: %w", uint64(cv), ErrProtocol)
	}
	return cv, nil
}

// ServeClientHandshake sends our magic and version and reads the server's.
func ServeClientHandshake(r *wire.Reader, w *wire.Writer, ours Version) (Version, error) {
	w.Uint64(ServeMagic1)
	w.Uint64(uint64(ours))
	if err := w.Flush(); err != nil {
		return 0, fmt.Errorf("serve handshake: %w", err)
	}
	if m := r.Uint64(); r.Err() != nil {
		return 0, fmt.Errorf("serve handshake: %w", eofUnexpected(r.Err()))
	} else if m != ServeMagic2 {
		return 0, fmt.Errorf("serve handshake: bad magic %#x: %w", m, ErrProtocol)
	}
	sv := Version(r.Uint64())
	if r.Err() != nil {
		return 0, fmt.Errorf("serve handshake: %w", eofUnexpected(r.Err()))
	}
	if sv.Major() != 2 || sv>>16 != 0 {
		return 0, fmt.Errorf("serve handshake: server version %#x: %w", uint64(sv), ErrProtocol)
	}
	return sv, nil
}

// ServeQueryValidPathsArgs are the arguments of serve command 1.
type ServeQueryValidPathsArgs struct {
	Lock, Substitute bool
	Paths            []storepath.StorePath
}

func (a *ServeQueryValidPathsArgs) Read(r *wire.Reader) {
	a.Lock = r.Bool()
	a.Substitute = r.Bool()
	a.Paths = r.StorePaths()
}
func (a *ServeQueryValidPathsArgs) Write(w *wire.Writer) {
	w.Bool(a.Lock)
	w.Bool(a.Substitute)
	w.StorePaths(a.Paths)
}

// ReadServePathInfos reads the QueryPathInfos reply: entries until an empty
// path. At ≥2.4 each has narHash (sha256:nix32), ca and sigs.
func ReadServePathInfos(r *wire.Reader, v Version) []*PathInfo {
	var out []*PathInfo
	for i := 0; r.Err() == nil; i++ {
		if i > wire.MaxListCount {
			r.Failf("read QueryPathInfos: too many: %w", wire.ErrTooLong)
			break
		}
		p := r.OptStorePath()
		if r.Err() != nil || p.IsZero() {
			break
		}
		info := &PathInfo{Path: p, Deriver: r.OptStorePath(), References: r.StorePaths()}
		r.Uint64() // download size, = narSize
		info.NarSize = r.Uint64()
		if v.AtLeast(4) {
			info.NarHash = readNarHash(r)
			info.CA = ReadCA(r)
			info.Signatures = r.Strings(wire.MaxStringLen)
		}
		out = append(out, info)
	}
	if r.Err() != nil {
		return nil
	}
	return out
}

// WriteServePathInfos writes the QueryPathInfos reply.
func WriteServePathInfos(w *wire.Writer, v Version, infos []*PathInfo) {
	for _, info := range infos {
		w.StorePath(info.Path)
		w.OptStorePath(info.Deriver)
		w.StorePaths(info.References)
		w.Uint64(info.NarSize)
		w.Uint64(info.NarSize)
		if v.AtLeast(4) {
			if info.NarHash.IsZero() {
				w.String("")
			} else {
				w.String(info.NarHash.Format(nixhash.Nix32, true))
			}
			WriteCA(w, info.CA)
			w.Strings(info.Signatures)
		}
	}
	w.String("")
}

// ServeBuildOptions are the build options of serve BuildPaths/BuildDerivation.
type ServeBuildOptions struct {
	MaxSilentTime      uint64
	BuildTimeout       uint64
	MaxLogSize         uint64 // ≥2.2
	NrRepeats          uint64 // ≥2.3
	EnforceDeterminism bool   // ≥2.3
	KeepFailed         bool   // ≥2.7
}

func (o *ServeBuildOptions) Read(r *wire.Reader, v Version) {
	o.MaxSilentTime = r.Uint64()
	o.BuildTimeout = r.Uint64()
	if v.AtLeast(2) {
		o.MaxLogSize = r.Uint64()
	}
	if v.AtLeast(3) {
		o.NrRepeats = r.Uint64()
		o.EnforceDeterminism = r.Bool()
	}
	if v.AtLeast(7) {
		o.KeepFailed = r.Bool()
	}
}
func (o *ServeBuildOptions) Write(w *wire.Writer, v Version) {
	w.Uint64(o.MaxSilentTime)
	w.Uint64(o.BuildTimeout)
	if v.AtLeast(2) {
		w.Uint64(o.MaxLogSize)
	}
	if v.AtLeast(3) {
		w.Uint64(o.NrRepeats)
		w.Bool(o.EnforceDeterminism)
	}
	if v.AtLeast(7) {
		w.Bool(o.KeepFailed)
	}
}

// ServeBuildDerivationArgs are the arguments of serve command 8.
type ServeBuildDerivationArgs struct {
	DrvPath storepath.StorePath
	Drv     *derivation.Derivation
	Options ServeBuildOptions
}

func (a *ServeBuildDerivationArgs) Read(r *wire.Reader, v Version) {
	a.DrvPath = r.StorePath()
	if r.Err() != nil {
		return
	}
	if !a.DrvPath.IsDerivation() {
		r.Failf("read serve BuildDerivation: %s is not a derivation: %w", a.DrvPath, ErrProtocol)
		return
	}
	name := a.DrvPath.Name()
	a.Drv = ReadBasicDerivation(r, name[:len(name)-len(".drv")])
	a.Options.Read(r, v)
}
func (a *ServeBuildDerivationArgs) Write(w *wire.Writer, v Version) {
	w.StorePath(a.DrvPath)
	WriteBasicDerivation(w, a.Drv)
	a.Options.Write(w, v)
}

// ReadServeBuildResult reads the serve BuildDerivation reply: status, message,
// [≥2.3] timesBuilt, nondeterministic, start, stop, [≥2.6] builtOutputs in
// the string-map form of worker 1.28–1.37. (The Nix 2.8 server sends
// builtOutputs whatever the client's minor, a bug: pass the version the server
// really uses.)
func ReadServeBuildResult(r *wire.Reader, v Version) *BuildResult {
	b := &BuildResult{Status: BuildStatus(r.Uint64()), ErrorMsg: r.String(wire.MaxStringLen)}
	if v.AtLeast(3) {
		b.TimesBuilt = r.Uint64()
		b.IsNonDeterministic = r.Bool()
		b.StartTime = readTime(r)
		b.StopTime = readTime(r)
	}
	if v.AtLeast(6) {
		readOldBuiltOutputs(r, b)
	}
	if r.Err() != nil {
		return nil
	}
	return b
}

// WriteServeBuildResult writes the serve BuildDerivation reply.
func WriteServeBuildResult(w *wire.Writer, v Version, b *BuildResult) {
	w.Uint64(uint64(b.Status))
	w.String(b.ErrorMsg)
	if v.AtLeast(3) {
		w.Uint64(b.TimesBuilt)
		w.Bool(b.IsNonDeterministic)
		writeTime(w, b.StartTime)
		writeTime(w, b.StopTime)
	}
	if v.AtLeast(6) {
		writeOldBuiltOutputs(w, b)
	}
}

// ServeAddToStoreNarArgs are the arguments of serve command 9; exactly
// Info.NarSize NAR bytes follow, unframed.
type ServeAddToStoreNarArgs struct{ Info PathInfo }

func (a *ServeAddToStoreNarArgs) Read(r *wire.Reader) {
	a.Info.Path = r.StorePath()
	a.Info.Deriver = r.OptStorePath()
	a.Info.NarHash = readNarHash(r)
	a.Info.References = r.StorePaths()
	a.Info.RegistrationTime = readTime(r)
	a.Info.NarSize = r.Uint64()
	a.Info.Ultimate = r.Bool()
	a.Info.Signatures = r.Strings(wire.MaxStringLen)
	a.Info.CA = ReadCA(r)
	if r.Err() == nil && a.Info.NarSize == 0 {
		r.Failf("read serve AddToStoreNar: narSize 0: %w", ErrProtocol)
	}
}
func (a *ServeAddToStoreNarArgs) Write(w *wire.Writer) {
	w.StorePath(a.Info.Path)
	w.OptStorePath(a.Info.Deriver)
	w.String(a.Info.NarHash.Base16())
	w.StorePaths(a.Info.References)
	writeTime(w, a.Info.RegistrationTime)
	w.Uint64(a.Info.NarSize)
	w.Bool(a.Info.Ultimate)
	w.Strings(a.Info.Signatures)
	WriteCA(w, a.Info.CA)
}
