// Package daemon serves the Nix worker protocol for a store: Cairn's
// nix-daemon, for everything but building.
//
// Vocabulary:
//
//	socket      a Unix socket (SocketPath; Listen, or SystemdListener for
//	            socket activation) on which Server.Serve accepts connections
//	peer        the process on the other end, as SO_PEERCRED tells (Peer)
//	auth hook   decides from the peer who the user is, whether it may connect
//	            and whether it is trusted (AuthHook; Policy is nix-daemon's rule
//	            over allowed-users, trusted-users and build-users-group)
//	client      a connection's identity and trust (Client), kept in the
//	            connection's context; operations read trust from there and
//	            never look at the peer themselves
//	connection  one goroutine and one cancellable context: the handshake
//	            (protocol.ServerHandshake, announcing ProtocolVersion and
//	            Features), then operations until the client hangs up
//	operation   arguments, then work during which log messages stream to the
//	            client (the stderr channel), then STDERR_LAST and a reply, or
//	            STDERR_ERROR. Messages logged between operations are queued
//	            and sent when the next one starts; log lines above the
//	            verbosity the client asked for in SetOptions are dropped.
//
// A connection's grammar is package protocol's. What differs from
// nix-daemon 2.8 on purpose:
//
//   - Building runs on one build.Builder per daemon (package build): goals
//     are shared across connections, so two clients asking for one
//     derivation get one build. Substitution (package substitute) shares
//     the builder's Substituter, one job per path across connections: the
//     substitute queries, QueryMissing's willSubstitute and sizes, and
//     BuildPaths/EnsurePath of plain paths answer from the connection's
//     substituters (the client's only where trusted-substituters or
//     substituters allow them), as docs/substitute.md describes. Nix's
//     on-disk narinfo cache is not kept; lookups are remembered in memory.
//   - CollectGarbage runs package gc on the local store for any client (as
//     nix-daemon 2.8 asks no trust; ignoreLiveness is refused, as there), with
//     the connection's keep-outputs and keep-derivations. Every path a
//     connection adds is a temporary root until it closes (the store calls the
//     connection, a store.TempRooter, before the path reaches the store dir),
//     as Nix's addTempRoot in each add. FindRoots also reports the runtime
//     roots this process can read in /proc. The newer feature form's
//     deleteReferrers is not supported.
//   - RegisterDrvOutput needs the ca-derivations feature (as in Nix) and, unlike
//     nix-daemon 2.8, a trusted client: a realisation decides what every later
//     build of that output resolves to.
//   - AddBuildLog writes LOGDIR/drvs/XX/REST.bz2, as Nix 2.8 does.
//   - NarFromPath checks validity before STDERR_LAST, so an invalid path gets an
//     error instead of a truncated NAR; the connection then closes, because
//     Nix 2.8's client ignores that error and waits for the NAR.
//   - An untrusted client may not repair (AddToStoreNar, AddMultipleToStore,
//     AddToStore, VerifyStore, BuildPaths); nix-daemon 2.8 checks only some.
//   - A refused user gets the handshake and then an error saying why, rather
//     than a closed socket.
//   - ExportPath and ImportPaths (STDERR_WRITE/READ) are served to clients
//     below 1.23 and to Guix only; newer clients never send them.
//   - The handshake's version string is HandshakeVersion, "2.8.0 (Cairn …)".
package daemon
