package protocol

import "cairn/internal/wire"

// ClientOptions are the SetOptions (op 19) arguments: twelve fixed fields and
// (≥1.12) a map of setting overrides.
type ClientOptions struct {
	KeepFailed      bool
	KeepGoing       bool
	TryFallback     bool
	Verbosity       Verbosity
	MaxBuildJobs    uint64
	MaxSilentTime   uint64
	UseBuildHook    bool      // obsolete; clients send true
	BuildVerbosity  Verbosity // verboseBuild: clients send 0 (lvlError) if verbose, else 7
	LogType         uint64    // obsolete
	PrintBuildTrace uint64    // obsolete
	BuildCores      uint64
	UseSubstitutes  bool
	Overrides       map[string]string
}

// guixOld reports whether a Guix client still sends maxJobs, maxSilentTime and
// cores as fixed fields (minor < 0x61).
func guixOld(p Params) bool { return p.Version.Minor() < 0x61 }

// Read reads SetOptions arguments.
func (o *ClientOptions) Read(r *wire.Reader, p Params) {
	o.KeepFailed = r.Bool()
	o.KeepGoing = r.Bool()
	o.TryFallback = r.Bool()
	o.Verbosity = Verbosity(r.Uint64())
	if !p.Guix || guixOld(p) {
		o.MaxBuildJobs = r.Uint64()
		o.MaxSilentTime = r.Uint64()
	}
	o.UseBuildHook = r.Bool()
	o.BuildVerbosity = Verbosity(r.Uint64())
	o.LogType = r.Uint64()
	o.PrintBuildTrace = r.Uint64()
	if !p.Guix || guixOld(p) {
		o.BuildCores = r.Uint64()
	}
	o.UseSubstitutes = r.Bool()
	if p.Version.AtLeast(12) {
		o.Overrides = r.StringMap(wire.MaxStringLen)
	}
}

// Write writes SetOptions arguments.
func (o *ClientOptions) Write(w *wire.Writer, p Params) {
	w.Bool(o.KeepFailed)
	w.Bool(o.KeepGoing)
	w.Bool(o.TryFallback)
	w.Uint64(uint64(o.Verbosity))
	if !p.Guix || guixOld(p) {
		w.Uint64(o.MaxBuildJobs)
		w.Uint64(o.MaxSilentTime)
	}
	w.Bool(o.UseBuildHook)
	w.Uint64(uint64(o.BuildVerbosity))
	w.Uint64(o.LogType)
	w.Uint64(o.PrintBuildTrace)
	if !p.Guix || guixOld(p) {
		w.Uint64(o.BuildCores)
	}
	w.Bool(o.UseSubstitutes)
	if p.Version.AtLeast(12) {
		w.StringMap(o.Overrides)
	}
}
