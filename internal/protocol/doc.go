// Package protocol is the Nix worker protocol (nix-daemon's Unix socket and
// `nix-daemon --stdio`) and the serve protocol (`nix-store --serve`) as data:
// versions, op codes, the handshake, the stderr channel and a codec for every
// compound value and every op's arguments and reply. It knows nothing about
// stores; the daemon dispatches on its Requests.
//
// A connection, in wire grammar (see package wire for the primitives):
//
//	conn      = handshake { op args [payload] stderr [reply] }
//	handshake = C: u64 0x6e697863, [u64 clientVersion if the client goes first]
//	            D: u64 0x6478696f, u64 daemonVersion
//	            C: [u64 clientVersion]
//	            [≥1.38] C: strings clientFeatures; D: strings daemonFeatures
//	            [≥1.14] C: u64 cpuAffinity (0, or nonzero + u64)   [≥1.11] C: u64 reserveSpace
//	            [≥1.33] D: string nixVersion   [≥1.35] D: u64 trusted (0 unknown, 1 yes, 2 no)
//	            stderr
//	stderr    = { NEXT string | START_ACTIVITY … | STOP_ACTIVITY u64 | RESULT …
//	            | READ u64 (client answers a string) | WRITE string } ( LAST | ERROR error )
//	error     = [≥1.26] "Error" u64 level string name string msg u64 0 u64 n { u64 0 string trace }
//	            [<1.26, Guix] string msg u64 status
//
// A version is major<<8|minor (Version); both sides gate every field on the
// negotiated min(client, daemon), and features negotiated at 1.38 gate more
// (Params). Releases lists which Nix, Lix and Guix releases speak what. A client
// whose minor is ≥ 0x60 is Guix, whose dialect (Params.Guix) has no version
// string, no trusted flag, no activities, the old error form and its own
// SetOptions layout; a Guix client gates on the daemon's minor.
//
// Files: version.go (Version, Releases, features, Params), ops.go (Op and
// the enums), handshake.go, stderr.go (messages, Error, Logger,
// ProcessStderr), pathinfo.go, build.go (BuildResult, DerivedPath,
// BasicDerivation, Realisation, MissingInfo), options.go (SetOptions),
// requests.go (a Request per op), replies.go (a Reply per op), export.go
// (export streams, AddMultipleToStore payloads, CopyNAR) and serve.go.
//
// Payloads that follow an op's arguments are not part of its Request: a
// framed stream (wire.FramedReader; drain it if the op fails), an unframed
// NAR (CopyNAR finds its end), or data pulled with STDERR_READ. The daemon must
// never send STDERR_READ or STDERR_WRITE except for ImportPaths/ExportPath
// and AddToStoreNar at 1.21–1.22.
package protocol
