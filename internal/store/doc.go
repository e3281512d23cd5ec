// Package store defines what a Nix store is to the rest of Cairn: the metadata of
// a valid path (PathInfo), the kinds of error a store reports, small interfaces
// split by capability, and the store URLs Nix accepts.
//
// Vocabulary:
//
//	store dir      the logical directory paths are named by, e.g. /nix/store
//	real store dir where the files of a chroot store live, e.g. ROOT/nix/store
//	valid path     a store path registered in the store's database; its files are
//	               complete, canonical and immutable until it is deleted
//	path info      a valid path's metadata: NAR hash and size, references,
//	               deriver, registration time, signatures, content address
//	closure        a set of paths together with everything they refer to,
//	               transitively
//	NAR            the archive form of a path's files (package nar); its sha256 is
//	               the path's narHash
//
// Store URLs, as Nix reads them (ParseURL):
//
//	local                        store /nix/store, state /nix/var/nix, logs /nix/var/log/nix
//	                             (NIX_STORE_DIR or NIX_STORE, NIX_STATE_DIR, NIX_LOG_DIR override)
//	local?root=DIR               a chroot store: logical store dir /nix/store, files in
//	                             DIR/nix/store, state DIR/nix/var/nix, logs DIR/nix/var/log/nix
//	local?store=S&state=T&log=L&real=R
//	                             each directory set on its own (they may be combined with root)
//	DIR (contains "/", no "://") the same as local?root=DIR
//	daemon, unix://PATH          a store behind a daemon socket (not supported yet)
//
// A store implements the capability interfaces it can serve (PathInfoQuerier,
// NarAdder, …); a caller asks for the one it needs with a type assertion, and a
// daemon serves any store through them. Each interface method takes a context
// first and documents what it reads and guarantees.
package store
