# Derivations for the differential tests against nix-instantiate 2.8 (see README.md).
# Each attribute is instantiated on its own; floating and impure ones need the
# ca-derivations and impure-derivations experimental features.
let
  sys = "x86_64-linux";
  mk = attrs: derivation ({ system = sys; builder = "/bin/sh"; } // attrs);
  fixed = name: mode: algo: hash: mk {
    inherit name;
    args = [ "-c" "echo fixed > $out" ];
    outputHashMode = mode;
    outputHashAlgo = algo;
    outputHash = hash;
  };
in rec {
  simple = mk { name = "simple"; args = [ "-c" "echo hello > $out" ]; };
  multi = mk { name = "multi"; outputs = [ "out" "dev" "bin" ]; args = [ "-c" "touch $out $dev $bin" ]; };
  dependent = mk {
    name = "dependent";
    args = [ "-c" "cat ${simple} ${multi.dev} > $out" ];
    whole = multi;
  };
  fixedFlatSha256 = fixed "fixed-flat-sha256" "flat" "sha256" "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s";
  fixedRecSha256 = fixed "fixed-rec-sha256" "recursive" "sha256" "0sg9f58l1jj88w6pdrfdpj5x9b1zrwszk84j81zvby36q9whhhqa";
  fixedFlatSha1 = fixed "fixed-flat-sha1" "flat" "sha1" "a9993e364706816aba3e25717850c26c9cd0d89d";
  fixedRecSha1 = fixed "fixed-rec-sha1" "recursive" "sha1" "2jmj7l5rSw0yVb/vlWAYkK/YBwk=";
  fixedFlatSha512 = fixed "fixed-flat-sha512" "flat" "sha512" "sha512:ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f";
  fixedRecMd5 = fixed "fixed-rec-md5" "recursive" "md5" "900150983cd24fb0d6963f7d28e17f72";
  fixedFlatMd5 = fixed "fixed-flat-md5" "flat" "md5" "900150983cd24fb0d6963f7d28e17f72";
  usesFixed = mk {
    name = "uses-fixed";
    args = [ "-c" "cat ${fixedFlatSha256} ${fixedRecSha1} > $out" ];
  };
  usesUsesFixed = mk { name = "uses-uses-fixed"; dep = usesFixed; };
  escapes = mk {
    name = "escapes";
    builder = "/bin/sh \"quoted\" back\\slash";
    args = [ "-c" "echo \"hi\" \\ \n\t\r ü 🙂 $out" "" "\\n" "a\"b" ];
    "we\"ird\nkey\\" = "value with \"quotes\"\tand\ttabs\r\n";
    unicode = "héllo wörld — ✓";
    empty = "";
  };
  control = mk {
    name = "control";
    x = builtins.fromJSON "\"a\\u0001b\\u0008c\\u000cd\\u007fe\\u001f/<>&\\u2028\"";
  };
  toFile = mk {
    name = "to-file";
    script = builtins.toFile "script.sh" "echo from a file\n";
    other = builtins.toFile "other.txt" "another";
  };
  pathSrc = mk { name = "path-src"; src = ./cases.nix; };
  passAsFile = mk { name = "pass-as-file"; passAsFile = [ "big" ]; big = "lots of text"; };
  structured = mk { name = "structured"; __structuredAttrs = true; list = [ 1 2 "three" ]; nested = { a = true; }; };
  noArgs = mk { name = "no-args"; };
  floating = mk { name = "floating"; __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; outputs = [ "out" "lib" ]; };
  floatingFlat = mk { name = "floating-flat"; __contentAddressed = true; outputHashMode = "flat"; outputHashAlgo = "sha1"; };
  impure = mk { name = "impure"; __impure = true; };
  deferred = mk { name = "deferred"; dep = floating.lib; };
  deferredDeep = mk { name = "deferred-deep"; dep = deferred; };
  usesImpure = mk { name = "uses-impure"; __impure = true; dep = impure; };
}
