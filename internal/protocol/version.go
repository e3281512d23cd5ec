package protocol

import (
	"fmt"
	"slices"
)

// Magic numbers of the worker protocol handshake.
const (
	WorkerMagic1 = 0x6e697863 // "cxin", client → daemon
	WorkerMagic2 = 0x6478696f // "oixd", daemon → client
)

// A Version is a worker (or serve) protocol version: major<<8 | minor.
type Version uint64

// V makes a Version from its parts.
func V(major, minor uint8) Version { return Version(major)<<8 | Version(minor) }

// Major is the major part (1 for every worker protocol version).
func (v Version) Major() uint8 { return uint8(v >> 8) }

// Minor is the minor part.
func (v Version) Minor() uint8 { return uint8(v) }

// AtLeast reports whether v's minor is at least minor (majors are assumed equal).
func (v Version) AtLeast(minor uint8) bool { return v.Minor() >= minor }

func (v Version) String() string { return fmt.Sprintf("%d.%d", v.Major(), v.Minor()) }

// Well-known worker protocol versions.
const (
	// MinVersion is the oldest client version a Nix 2.8 daemon accepts (1.10).
	MinVersion = Version(0x10a)
	// Nix23 is what Nix 2.1–2.3 speak.
	Nix23 = Version(0x115)
	// Nix28 is what Nix 2.8–2.14 speak (the reference daemon).
	Nix28 = Version(0x122)
	// LixVersion is what every current Lix speaks, and the least it accepts.
	LixVersion = Version(0x123)
	// Latest is the newest CppNix version (1.38, with features).
	Latest = Version(0x126)
	// GuixVersion is what current Guix clients send.
	GuixVersion = Version(0x163)
	// GuixMinMinor is the least minor that marks a client as speaking Guix's
	// dialect: CppNix never went past 1.39.
	GuixMinMinor = 0x60
)

// Features of the 1.38 feature exchange.
const (
	FeatureRealisationWithPath         = "realisation-with-path-not-hash"
	FeatureDeleteDeadSpecificReferrers = "delete-dead-specific-referrers"
	FeatureDisableSetOptions           = "disable-set-options"
	FeatureAddToStoreScanning          = "add-to-store-scanning"
	FeatureSubmitOutput                = "submit-output"
)

// LatestFeatures is the feature set the newest Nix daemon advertises.
var LatestFeatures = []string{FeatureDeleteDeadSpecificReferrers, FeatureRealisationWithPath}

// LatestClientFeatures is the feature set the newest Nix client offers.
var LatestClientFeatures = []string{
	FeatureAddToStoreScanning, FeatureDeleteDeadSpecificReferrers, FeatureDisableSetOptions,
	FeatureRealisationWithPath, FeatureSubmitOutput,
}

// A Release maps a client or daemon release to the versions it speaks.
type Release struct {
	Name     string   // "Nix 2.8", "Lix", "Guix"
	From, To string   // first and last release of the range (equal for one)
	Worker   Version  // worker protocol version
	Features []string // advertised 1.38 features (Worker ≥ 1.38)
	Serve    Version  // serve protocol version, 0 if none
}

// Releases lists the worker and serve protocol versions by release.
var Releases = []Release{
	{Name: "Nix", From: "2.0", To: "2.0", Worker: 0x114, Serve: 0x204},
	{Name: "Nix", From: "2.1", To: "2.3", Worker: 0x115, Serve: 0x205},
	{Name: "Nix", From: "2.4", To: "2.6", Worker: 0x120, Serve: 0x207},
	{Name: "Nix", From: "2.7", To: "2.7", Worker: 0x121, Serve: 0x207},
	{Name: "Nix", From: "2.8", To: "2.14", Worker: 0x122, Serve: 0x207},
	{Name: "Nix", From: "2.15", To: "2.19", Worker: 0x123, Serve: 0x207},
	{Name: "Nix", From: "2.20", To: "2.23", Worker: 0x125, Serve: 0x207},
	{Name: "Nix", From: "2.24", To: "2.34", Worker: 0x126, Serve: 0x207},
	{Name: "Nix", From: "2.35", To: "2.35", Worker: 0x126, Features: LatestFeatures, Serve: 0x208},
	{Name: "Lix", Worker: 0x123, Serve: 0x207},
	{Name: "Guix", Worker: 0x163},
}

// IsGuix reports whether a client version is Guix's dialect.
func IsGuix(v Version) bool { return v.Major() == 1 && v.Minor() >= GuixMinMinor }

// Params is what the codecs need to know about a connection: the negotiated
// version and features, and whether the peer speaks Guix's dialect.
type Params struct {
	// Version is the negotiated version, min(client, daemon). A Guix client
	// gates on the daemon's minor too (guix/store.scm), so the same holds for
	// Guix, whose ≥0x60 gates are then off unless the daemon is guix-daemon.
	Version  Version
	Features []string // negotiated features, sorted
	Guix     bool
}

// Has reports whether feature was negotiated.
func (p Params) Has(feature string) bool {
	_, ok := slices.BinarySearch(p.Features, feature)
	return ok
}

// nix reports whether p is a Nix (not Guix) connection at minor ≥ m.
func (p Params) nix(m uint8) bool { return !p.Guix && p.Version.AtLeast(m) }

// Intersect returns the features in both a and b, sorted.
func Intersect(a, b []string) []string {
	var out []string
	for _, f := range a {
		if slices.Contains(b, f) && !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	slices.Sort(out)
	return out
}
