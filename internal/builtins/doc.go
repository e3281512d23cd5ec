// Package builtins implements Nix's builtin builders: the derivations whose
// builder is "builtin:NAME" are built by the daemon itself, not by a program.
//
// Vocabulary:
//
//	builtin     a builder named "builtin:fetchurl", "builtin:buildenv" or
//	            "builtin:unpack-channel"
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
//
// builtin:unpack-channel reads (as nix-channel's unpack-channel.nix sets
// them):
//
//	src          a tarball: tar (ustar, GNU, pax), plain or compressed with
//	             gzip, bzip2, xz or zstd (recognised by magic bytes, up to
//	             MaxFilters layers)
//	channelName  the name the tarball's one top-level entry gets
//
// and unpacks src into the output as Nix 2.8 does through libarchive with
// ARCHIVE_EXTRACT_PERM|_TIME|_FFLAGS|_SECURE_SYMLINKS|_SECURE_NODOTDOT:
//
//	name        cleaned: "//" and "." dropped, a leading "/" kept inside
//	            the output, ".." refused ("Path contains '..'")
//	parents     made when missing; a symlink among them is refused
//	            ("Cannot extract through symlink"), another non-directory
//	            too ("Could not stat")
//	in the way  a symlink or file at the name is replaced, an empty
//	            directory too; a full one is an error
//	file        any type libarchive does not know, "name/" of a regular
//	            type a directory; executable when the owner's x bit is set
//	link        a hard link to OUT/target, itself checked as a name; a link
//	            to a symlink links the symlink
//	empty link  a symlink or hard link with no target is a regular file
//	device      refused ("Can't create", as for a build user's mknod)
//	fifo        refused ("has an unsupported type", Nix's later failure)
//
// then the output must hold exactly one entry ("channel tarball '…'
// contains more than one file"), renamed channelName.
package builtins
