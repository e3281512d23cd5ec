// Package gc is the garbage collector of a local store, with Nix 2.8's
// semantics (libstore/gc.cc) and vocabulary:
//
//	root          a path that must stay: a permanent root (gcroots/, profiles/,
//	              indirect roots through gcroots/auto), a temporary root
//	              (temproots/N of a live process, or sent to the collector's
//	              socket while it runs), or a runtime root (a store path a
//	              process has open, maps, runs or names in its environment,
//	              read from /proc where readable)
//	live          in the closure of the roots over references, plus, with
//	              keep-derivations (default true), the valid deriver of every
//	              live path and, with keep-outputs (default false), the valid
//	              outputs of every live derivation
//	dead          a valid path that is not live; an entry of the store dir that
//	              is not a valid path (a leftover, a stale "<path>.lock") and
//	              whose hash part no temporary root names; any other name in
//	              the store dir but .links and Cairn's temporaries
//	              (local.TempDirName, which Cairn keeps even when no process
//	              holds its temporary root; Nix 2.8 deletes it then)
//	action        ReturnLive, ReturnDead (list), DeleteDead (delete every dead
//	              path until more than MaxFreed bytes are freed), DeleteSpecific
//	              (delete the given paths, each only if it is dead and every
//	              path that would keep it alive is among them)
//
// A collection holds STATE/gc.lock exclusively from before it reads the roots
// until it is done, and serves STATE/gc-socket/socket meanwhile: a process
// that adds a temporary root while the collector runs sends it there
// ("<path>\n", answered "1"), and the answer waits while that path is being
// deleted. Writers of the local store take a temporary root or the shared GC
// lock before a path reaches the store dir (store/local/gc.go).
//
// The mark is one read of the whole graph (three queries: ValidPaths, Refs,
// DerivationOutputs) and a walk in memory. The sweep deletes dead paths
// referrers first, each through store/local's delete: invalidated in a
// transaction that checks that no valid path refers to it (so a path that
// gained a referrer since the mark stays), moved out of the store dir, removed
// fd-relative without following symlinks. Then unused .links entries go, as in
// Nix's removeUnusedLinks. Bytes freed are counted as Nix counts them: the
// size of each non-directory with at most two links.
//
// Runtime roots come from RuntimeRoots; the default reads /proc as Nix 2.8
// does, skipping what this process may not read. A privileged helper
// (cairn-roots) can stand in through Options.RuntimeRoots.
package gc
