// Package substitute reads binary caches as Nix 2.8 lays them out and
// substitutes store paths from them into the local store.
//
// A binary cache is a directory (file://DIR) or a URL prefix (http://,
// https://) holding:
//
//	nix-cache-info          "Key: value" lines: StoreDir (must be the store's),
//	                        Priority (lower is tried first; 50 when absent),
//	                        WantMassQuery (1 or 0)
//	<hashpart>.narinfo      a narinfo (package narinfo): the path's NAR hash and
//	                        size, references, deriver, signatures, content
//	                        address, and URL/Compression/FileHash/FileSize of
//	                        the file holding its NAR
//	nar/<filehash>.nar[.xz|.bz2|.zst]
//	                        the NAR, compressed as Compression says (none, xz,
//	                        bzip2, zstd)
//
// Vocabulary: a Cache is one binary cache (its Backend fetches files by name;
// it remembers narinfos and their absence for the narinfo-cache-*-ttl
// settings); a Config is a request's choice of caches, trusted keys and
// require-sigs; a Substituter makes paths valid in a local store from the
// caches of a Config, one substitution per path however many callers ask,
// references first, at most max-substitution-jobs downloads at once.
//
// A substitution verifies before anything becomes valid: the narinfo's
// signatures against trusted-public-keys when require-sigs is set (a path
// whose content address matches is accepted unsigned, as by Nix), the file's
// FileHash and FileSize and the NAR's NarHash and NarSize while streaming; the
// NAR goes through the local store's AddNar (restore into a temporary, verify,
// rename, register with the narinfo's references, deriver, signatures and
// content address), and a failure leaves nothing registered.
package substitute
