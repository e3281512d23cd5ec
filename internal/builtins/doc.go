// Package builtins implements Nix's builtin builders: the derivations whose
// builder is "builtin:NAME" are built by the daemon itself, not by a program.
//
// Vocabulary:
//
//	builtin     a builder named "builtin:fetchurl" or "builtin:buildenv"
//	            (Nix 2.8 also has "builtin:unpack-channel", which Cairn
//	            does not implement)
//	job         one run of a builtin: the derivation's environment (its
//	            placeholders rewritten), the host path where output "out"
//	            is made, the view it reads through, its log
//	view        the file system as the derivation's builder would see it:
//	            in a sandbox only the input closure and the sandbox-paths,
//	            each at the path the builder uses; outside one the host's
//	            (View.Resolve follows symlinks in those terms)
//	log         lines for the build log; "@nix {json}" lines are messages
//	            (activities, warnings) as Nix's JSON logger writes them
//
// builtin:fetchurl reads these attributes (as <nix/fetchurl.nix> sets them):
//
//	url             the URL: http, https or file
//	unpack          "1": the download is a NAR (xz-compressed when url ends
//	                in ".xz"), restored as the output
//	executable      "1": the output file gets mode 0755 (0555 once
//	                canonicalised)
//	outputHashMode  "flat": the hashed-mirrors are tried first, at
//	                MIRROR/ALGO/BASE16
//	outputHash, outputHashAlgo
//	                the hash the hashed mirrors are asked for
//
// builtin:buildenv reads (as nix-env's buildenv.nix sets them):
//
//	derivations  a flat list of groups "ACTIVE PRIORITY N PATH1 … PATHN"
//	manifest     a store path, linked as OUT/manifest.nix
//
// and makes the profile's symlink forest: each active package's tree linked
// into the output, the lowest priority number winning a collision,
// directories merged, then the packages named by each package's
// nix-support/propagated-user-env-packages at priorities 1000, 1001, ….
package builtins
