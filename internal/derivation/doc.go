// Package derivation reads, writes and hashes Nix derivations (.drv files) in the
// ATerm form Nix 2.8 writes:
//
//	drv        = "Derive(" "[" outputs "]" "," "[" inputDrvs "]" "," "[" inputSrcs "]" ","
//	             platform "," builder "," "[" args "]" "," "[" env "]" ")"
//	outputs    = output { "," output }                 (sorted by name; at least one)
//	output     = "(" name "," path "," hashAlgo "," hash ")"
//	inputDrvs  = [ inputDrv { "," inputDrv } ]         (sorted by path)
//	inputDrv   = "(" drvPath "," "[" outName { "," outName } "]" ")"   (names sorted)
//	inputSrcs  = [ path { "," path } ]                 (sorted)
//	args       = [ string { "," string } ]             (in order)
//	env        = [ "(" key "," value ")" { "," … } ]   (sorted by key)
//	string     = '"' { char | "\" char } '"'
//
// There is no whitespace anywhere. The output slots (path, hashAlgo, hash) say what
// kind of output it is:
//
//	input-addressed   (path, "", "")
//	fixed (CAFixed)   (path, [r:]algo, base16 digest)
//	floating CA       ("", [r:]algo, "")
//	deferred          ("", "", "")
//	impure            ("", [r:]algo, "impure")
//
// When reading, a backslash followed by n, r or t stands for LF, CR or TAB, and a
// backslash followed by any other byte stands for that byte. When writing, only
// builder, args, env keys and env values are escaped (" \ LF CR TAB); every other
// string is written raw, exactly as Nix does, so a .drv Nix wrote reads and prints
// back byte for byte.
//
// Besides the ATerm form the package speaks the JSON form of
// `nix show-derivation` (Nix 2.8), computes hashDerivationModulo (HashModulo), the
// output paths nix-instantiate would give a derivation (FillOutputs), and the
// derivation's own store path (StorePath).
package derivation
