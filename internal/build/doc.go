// Package build realises derivations: it builds the missing outputs of a
// .drv and of everything it needs, in a sandbox, and registers them.
//
// Vocabulary:
//
//	target      a .drv store path and the output names wanted (none: all)
//	goal        the work of making every missing output of one derivation
//	            valid; one goal per .drv however many requests ask for it,
//	            shared by reference count and cancelled when nobody waits
//	request     one call of Builder.Build: its Options (max-jobs, cores,
//	            keep-going, timeouts, sandbox paths), its Logger, its job slots
//	input       an input derivation's wanted outputs, or an input source;
//	            the input closure is everything they refer to, transitively
//	build dir   STATE/builds/<n>/ (0700, the daemon's): build/ is the
//	            builder's /build, store/ is the writable store dir inside the
//	            sandbox where the outputs appear, root/ is the sandbox root
//	log         the builder's stdout and stderr, line by line to the
//	            Logger and whole to LOGDIR/drvs/XX/REST[.bz2]
//	mode        Normal, Check (build again and compare) or Repair (rebuild
//	            what is missing or corrupt and swap it in); see Mode
//
// A goal, in order: read the .drv; start (or join) a goal for every input
// derivation whose wanted outputs are not valid and wait for them (without
// keep-going the first failure ends the wait); check the input sources;
// take a place to prepare (max-jobs per request; 0 means none) and the
// outputs' path locks (Nix's <path>.lock, so Nix itself and other Cairn processes
// agree); look again whether another builder made the outputs meanwhile;
// set the sandbox up, held; take a place to run (max-jobs per request) and
// run the builder with Nix 2.8's environment (Env); give the place back
// when the builder has exited; for each output:
// check it exists, check a fixed output's hash, scan references against
// the input closure and the outputs, canonicalise and register all outputs
// in one transaction with the .drv as deriver.
//
// Statuses and their numbers are those of Nix's BuildResult (Status).
package build
