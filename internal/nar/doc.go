// Package nar reads and writes Nix archives (NARs), the canonical serialisation of
// a file system tree that Nix hashes, stores and ships.
//
// Every token is a wire string: a u64 little-endian length, the bytes, then zero
// padding to a multiple of 8. File contents are one such string.
//
//	nar   := "nix-archive-1" node
//	node  := "(" "type" ( "regular" [ "executable" "" ] "contents" <bytes>
//	                    | "symlink" "target" <string>
//	                    | "directory" { "entry" "(" "name" <name> "node" node ")" } ) ")"
//
// A tree has exactly one encoding: directory entries appear sorted byte-wise
// with no duplicates; names are not empty, ".", "..", and hold no "/" or NUL; the
// "executable" marker is present exactly when the owner-execute bit is set. No
// other metadata (times, owners, permissions) is recorded.
//
// The package is shaped like archive/tar: [NewReader] with Next and Read walks an
// archive entry by entry in the order above, [NewWriter] with WriteHeader, Write
// and Close produces one. The Reader accepts only the canonical encoding, so a
// NAR that reads without error re-encodes through the Writer to the same bytes.
// The Reader never reads past the closing ")" of the root node: a NAR may be
// embedded in a longer stream, and [Reader.Offset] tells how long it was.
//
// [Copy] passes one archive through, checked. [Dump] serialises a tree from disk
// byte for byte as `nix-store --dump` does; [Restore] recreates one (as
// `nix-store --restore` does) through directory file descriptors without ever
// following a symlink. [ListText] and [ListJSON] reproduce `nix nar ls` of Nix 2.8.
//
// Limits, beyond those of the grammar: names are at most [MaxNameLen] bytes,
// symlink targets at most [MaxTargetLen] bytes (and not empty, and without NUL),
// directories nest at most [MaxDepth] deep, and file sizes fit an int64.
package nar
