package protocol

import (
	"fmt"
	"slices"

	"cairn/internal/wire"
)

// ServerInfo is what the daemon says about itself in the handshake.
type ServerInfo struct {
	Version    Version  // the most the daemon speaks, e.g. Latest
	Features   []string // features the daemon offers at ≥1.38
	NixVersion string   // sent at ≥1.33, e.g. "2.8.0"
	Trusted    TrustedFlag
}

// ClientInfo is what the daemon learned about a client in the handshake.
type ClientInfo struct {
	Params                  // what codecs use from now on
	ClientVersion  Version  // as the client sent it
	ClientFeatures []string // as the client sent them (≥1.38), sorted
	CPUAffinity    int64    // obsolete; -1 when the client sent none
	ReserveSpace   bool     // obsolete
}

// ServerHandshake runs the daemon's side of the handshake, from the client's
// magic number up to (not including) the stderr channel that follows: the
// caller then sends any startup messages and STDERR_LAST (Logger.Last).
//
// It works whether the client sends its version before reading the daemon's
// (Nix ≥2.24, Lix) or after (older Nix, Guix). A client whose minor is at least
// GuixMinMinor speaks Guix's dialect: no version string and no trusted flag.
// A Guix client gates its fields on the daemon's minor, so Params.Version is
// min(client, daemon) there too.
func ServerHandshake(r *wire.Reader, w *wire.Writer, info ServerInfo) (*ClientInfo, error) {
	if m := r.Uint64(); r.Err() != nil {
		return nil, fmt.Errorf("handshake: %w", eofUnexpected(r.Err()))
	} else if m != WorkerMagic1 {
		return nil, fmt.Errorf("handshake: bad magic %#x: %w", m, ErrProtocol)
	}
	w.Uint64(WorkerMagic2)
	w.Uint64(uint64(info.Version))
	if err := w.Flush(); err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	cv := Version(r.Uint64())
	if r.Err() != nil {
		return nil, fmt.Errorf("handshake: %w", eofUnexpected(r.Err()))
	}
	if cv.Major() != 1 || cv>>16 != 0 {
		return nil, fmt.Errorf("handshake: client version %#x: %w", uint64(cv), ErrProtocol)
	}
	if cv < MinVersion {
		return nil, fmt.Errorf("handshake: client version %v too old: %w", cv, ErrProtocol)
	}
	ci := &ClientInfo{ClientVersion: cv, CPUAffinity: -1}
	ci.Params = Params{Version: min(cv, info.Version), Guix: IsGuix(cv)}
	p := ci.Params
	if p.nix(38) {
		ci.ClientFeatures = r.Strings(wire.MaxStringLen)
		slices.Sort(ci.ClientFeatures)
		if r.Err() != nil {
			return nil, fmt.Errorf("handshake: features: %w", eofUnexpected(r.Err()))
		}
		if len(ci.ClientFeatures) > maxFeatures {
			return nil, fmt.Errorf("handshake: %d features: %w", len(ci.ClientFeatures), ErrProtocol)
		}
		w.Strings(sortedCopy(info.Features))
		if err := w.Flush(); err != nil {
			return nil, fmt.Errorf("handshake: %w", err)
		}
		ci.Features = Intersect(ci.ClientFeatures, info.Features)
	}
	if p.Version.AtLeast(14) {
		if r.Uint64() != 0 {
			ci.CPUAffinity = int64(r.Uint64())
		}
	}
	if p.Version.AtLeast(11) {
		ci.ReserveSpace = r.Bool()
	}
	if r.Err() != nil {
		return nil, fmt.Errorf("handshake: %w", eofUnexpected(r.Err()))
	}
	if !p.Guix {
		if p.Version.AtLeast(33) {
			w.String(info.NixVersion)
		}
		if p.Version.AtLeast(35) {
			w.Uint64(uint64(info.Trusted))
		}
	}
	if err := w.Err(); err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	return ci, nil
}

// maxFeatures bounds the features a peer may offer.
const maxFeatures = 256

func sortedCopy(ss []string) []string {
	out := slices.Clone(ss)
	slices.Sort(out)
	return slices.Compact(out)
}

// ClientConfig is what our client says about itself in the handshake.
type ClientConfig struct {
	Version  Version  // the most the client speaks
	Features []string // features offered at ≥1.38
	// Early sends the version together with the magic number, as Nix ≥2.24
	// and Lix do, instead of after reading the daemon's.
	Early bool
}

// DaemonInfo is what a client learned about the daemon in the handshake.
type DaemonInfo struct {
	Params
	DaemonVersion  Version
	DaemonFeatures []string
	NixVersion     string      // ≥1.33
	Trusted        TrustedFlag // ≥1.35
}

// ClientHandshake runs the client's side of the handshake, including the
// daemon's startup stderr messages (passed to handle, which may be nil) up to
// STDERR_LAST. If the daemon ends the handshake with STDERR_ERROR, the
// *Error is returned.
func ClientHandshake(r *wire.Reader, w *wire.Writer, cfg ClientConfig, handle func(*Message) error) (*DaemonInfo, error) {
	w.Uint64(WorkerMagic1)
	if cfg.Early {
		w.Uint64(uint64(cfg.Version))
	}
	if err := w.Flush(); err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	if m := r.Uint64(); r.Err() != nil {
		return nil, fmt.Errorf("handshake: %w", eofUnexpected(r.Err()))
	} else if m != WorkerMagic2 {
		return nil, fmt.Errorf("handshake: bad magic %#x: %w", m, ErrProtocol)
	}
	dv := Version(r.Uint64())
	if r.Err() != nil {
		return nil, fmt.Errorf("handshake: %w", eofUnexpected(r.Err()))
	}
	if dv.Major() != 1 || dv>>16 != 0 || dv < V(1, 10) {
		return nil, fmt.Errorf("handshake: daemon version %#x not supported: %w", uint64(dv), ErrProtocol)
	}
	if !cfg.Early {
		w.Uint64(uint64(cfg.Version))
	}
	di := &DaemonInfo{DaemonVersion: dv}
	di.Params = Params{Version: min(dv, cfg.Version), Guix: IsGuix(cfg.Version)}
	p := di.Params
	if p.nix(38) {
		w.Strings(sortedCopy(cfg.Features))
		if err := w.Flush(); err != nil {
			return nil, fmt.Errorf("handshake: %w", err)
		}
		di.DaemonFeatures = r.Strings(wire.MaxStringLen)
		if len(di.DaemonFeatures) > maxFeatures {
			return nil, fmt.Errorf("handshake: %d features: %w", len(di.DaemonFeatures), ErrProtocol)
		}
		di.Features = Intersect(di.DaemonFeatures, cfg.Features)
	}
	if p.Version.AtLeast(14) {
		w.Uint64(0)
	}
	if p.Version.AtLeast(11) {
		w.Uint64(0)
	}
	if err := w.Flush(); err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	if p.nix(33) {
		di.NixVersion = r.String(wire.MaxStringLen)
	}
	if p.nix(35) {
		di.Trusted = TrustedFlag(r.Int("trusted flag", 2))
	}
	if r.Err() != nil {
		return nil, fmt.Errorf("handshake: %w", eofUnexpected(r.Err()))
	}
	if err := ProcessStderr(r, p, handle); err != nil {
		return di, err
	}
	return di, nil
}
