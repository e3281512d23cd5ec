package protocol

import (
	"fmt"
	"math"
	"time"

	"cairn/internal/nixhash"
	"cairn/internal/storepath"
	"cairn/internal/wire"
)

// PathInfo is a ValidPathInfo. Its fields match store.PathInfo one for one, so
// the two convert with a plain type conversion.
type PathInfo struct {
	Path             storepath.StorePath
	Deriver          storepath.StorePath // zero when unknown
	NarHash          nixhash.Hash        // sha256; bare base16 on the worker wire
	References       []storepath.StorePath
	RegistrationTime time.Time // zero ↔ 0 on the wire
	NarSize          uint64
	Ultimate         bool                   // ≥1.16
	Signatures       []string               // ≥1.16
	CA               nixhash.ContentAddress // ≥1.16; zero ↔ ""
}

func readTime(r *wire.Reader) time.Time {
	v := r.Uint64()
	if v == 0 || r.Err() != nil {
		return time.Time{}
	}
	if v > math.MaxInt64 {
		r.Failf("read time: %d: %w", v, wire.ErrTooLong)
		return time.Time{}
	}
	return time.Unix(int64(v), 0)
}

func writeTime(w *wire.Writer, t time.Time) {
	if t.IsZero() {
		w.Uint64(0)
		return
	}
	w.Uint64(uint64(t.Unix()))
}

// readNarHash reads a sha256 hash in any of Nix's encodings, prefixed or not.
func readNarHash(r *wire.Reader) nixhash.Hash {
	s := r.Bytes(wire.MaxStringLen)
	if r.Err() != nil {
		return nixhash.Hash{}
	}
	h, err := nixhash.ParseAny(string(s), nixhash.SHA256)
	if err != nil {
		r.Fail(fmt.Errorf("read nar hash: %w", err))
	}
	return h
}

// ReadCA reads an optional content address ("" means none).
func ReadCA(r *wire.Reader) nixhash.ContentAddress {
	s := r.Bytes(wire.MaxStringLen)
	if r.Err() != nil || len(s) == 0 {
		return nixhash.ContentAddress{}
	}
	ca, err := nixhash.ParseContentAddress(string(s))
	if err != nil {
		r.Fail(fmt.Errorf("read content address: %w", err))
	}
	return ca
}

// WriteCA writes an optional content address.
func WriteCA(w *wire.Writer, ca nixhash.ContentAddress) {
	if ca.IsZero() {
		w.String("")
		return
	}
	w.String(ca.String())
}

// ReadUnkeyedPathInfo reads a path info without its path (the QueryPathInfo
// reply); the result's Path is path.
func ReadUnkeyedPathInfo(r *wire.Reader, p Params, path storepath.StorePath) *PathInfo {
	info := &PathInfo{Path: path}
	info.Deriver = r.OptStorePath()
	info.NarHash = readNarHash(r)
	info.References = r.StorePaths()
	info.RegistrationTime = readTime(r)
	info.NarSize = r.Uint64()
	if p.nix(16) {
		info.Ultimate = r.Bool()
		info.Signatures = r.Strings(wire.MaxStringLen)
		info.CA = ReadCA(r)
	}
	if r.Err() != nil {
		return nil
	}
	return info
}

// WriteUnkeyedPathInfo writes info without its path.
func WriteUnkeyedPathInfo(w *wire.Writer, p Params, info *PathInfo) {
	w.OptStorePath(info.Deriver)
	w.String(info.NarHash.Base16())
	w.StorePaths(info.References)
	writeTime(w, info.RegistrationTime)
	w.Uint64(info.NarSize)
	if p.nix(16) {
		w.Bool(info.Ultimate)
		w.Strings(info.Signatures)
		WriteCA(w, info.CA)
	}
}

// ReadPathInfo reads a ValidPathInfo: the path, then the unkeyed form.
func ReadPathInfo(r *wire.Reader, p Params) *PathInfo {
	path := r.StorePath()
	if r.Err() != nil {
		return nil
	}
	return ReadUnkeyedPathInfo(r, p, path)
}

// WritePathInfo writes a ValidPathInfo.
func WritePathInfo(w *wire.Writer, p Params, info *PathInfo) {
	w.StorePath(info.Path)
	WriteUnkeyedPathInfo(w, p, info)
}

// MultipleParams is the version the path infos inside AddMultipleToStore are
// always encoded at (the 1.16 layout, whatever was negotiated).
var MultipleParams = Params{Version: V(1, 16)}

// SubstitutablePathInfo is one entry of a QuerySubstitutablePathInfo(s) reply.
type SubstitutablePathInfo struct {
	Path         storepath.StorePath // QuerySubstitutablePathInfos only
	Deriver      storepath.StorePath
	References   []storepath.StorePath
	DownloadSize uint64
	NarSize      uint64
}

func readSubstitutable(r *wire.Reader, s *SubstitutablePathInfo) {
	s.Deriver = r.OptStorePath()
	s.References = r.StorePaths()
	s.DownloadSize = r.Uint64()
	s.NarSize = r.Uint64()
}

func writeSubstitutable(w *wire.Writer, s *SubstitutablePathInfo) {
	w.OptStorePath(s.Deriver)
	w.StorePaths(s.References)
	w.Uint64(s.DownloadSize)
	w.Uint64(s.NarSize)
}
