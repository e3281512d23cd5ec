package substitute

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/dsnet/compress/bzip2"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"cairn/internal/narinfo"
	"cairn/internal/nixhash"
	"cairn/internal/store"
	"cairn/internal/storepath"
)

// FileCache writes a binary cache in a directory (file:///DIR), as Nix
// 2.8's local binary cache store does for nix copy --to: nix-cache-info,
// the NARs under nar/ (compressed as the compression parameter says, xz by
// default), a narinfo per path, signed with the secret-key parameter's key.
type FileCache struct {
	dir         string
	uri         string
	storeDir    storepath.StoreDir
	compression string
	key         narinfo.SecretKey
}

// compressions are the methods a FileCache writes, with their NAR file
// extensions.
var compressions = map[string]string{"none": "", "xz": ".xz", "bzip2": ".bz2", "zstd": ".zst"}

// OpenFileCache opens (making it if need be) the cache rawURL names, for
// paths of storeDir.
func OpenFileCache(rawURL string, storeDir storepath.StoreDir) (*FileCache, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "file" || u.Path == "" {
		return nil, fmt.Errorf("open binary cache %s: not a file:// URL", rawURL)
	}
	q := u.Query()
	f := &FileCache{dir: u.Path, uri: "file://" + u.Path, storeDir: storeDir, compression: "xz"}
	if c := q.Get("compression"); c != "" {
		f.compression = c
	}
	if _, ok := compressions[f.compression]; !ok {
		return nil, fmt.Errorf("unknown compression method '%s'", f.compression)
	}
	if k := q.Get("secret-key"); k != "" {
		text, err := os.ReadFile(k)
		if err != nil {
			return nil, fmt.Errorf("open binary cache %s: %w", rawURL, err)
		}
		if f.key, err = narinfo.ParseSecretKey(strings.TrimSpace(string(text))); err != nil {
			return nil, fmt.Errorf("open binary cache %s: secret key %s: %w", rawURL, k, err)
		}
	}
	for _, d := range []string{"", "nar", "log", "realisations"} {
		if err := os.MkdirAll(filepath.Join(f.dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("open binary cache %s: %w", rawURL, err)
		}
	}
	info := filepath.Join(f.dir, "nix-cache-info")
	if _, err := os.Stat(info); errors.Is(err, os.ErrNotExist) {
		if err := writeAtomically(info, []byte("StoreDir: "+string(storeDir)+"\n")); err != nil {
			return nil, fmt.Errorf("open binary cache %s: %w", rawURL, err)
		}
	}
	return f, nil
}

// URI is the cache as Nix names it in messages.
func (f *FileCache) URI() string { return f.uri }

// StoreDir is the store directory of the cache's paths.
func (f *FileCache) StoreDir() storepath.StoreDir { return f.storeDir }

// Close releases nothing; a FileCache holds no resources.
func (f *FileCache) Close() error { return nil }

// QueryValidPaths returns the paths among paths whose narinfo the cache has.
func (f *FileCache) QueryValidPaths(ctx context.Context, paths []storepath.StorePath) ([]storepath.StorePath, error) {
	var out []storepath.StorePath
	for _, p := range paths {
		if _, err := os.Stat(filepath.Join(f.dir, p.HashPart()+".narinfo")); err == nil {
			out = append(out, p)
		}
	}
	return out, nil
}

// IsValidPath reports whether the cache has p's narinfo.
func (f *FileCache) IsValidPath(ctx context.Context, p storepath.StorePath) (bool, error) {
	v, err := f.QueryValidPaths(ctx, []storepath.StorePath{p})
	return len(v) == 1, err
}

// AddNar writes the NAR read from r (exactly info.NarSize bytes, hashing to
// info.NarHash) compressed under nar/, then the path's narinfo: the NAR
// first, so that a narinfo never names a missing file.
func (f *FileCache) AddNar(ctx context.Context, info *store.PathInfo, r io.Reader, opts store.AddNarOptions) error {
	tmp, err := os.CreateTemp(filepath.Join(f.dir, "nar"), ".tmp-")
	if err != nil {
		return fmt.Errorf("add %s to %s: %w", info.Path, f.uri, err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	fileHash := nixhash.NewHasher(nixhash.SHA256)
	file := &countingWriter{w: io.MultiWriter(tmp, fileHash)}
	zw, err := compressor(f.compression, file)
	if err != nil {
		return err
	}
	narHash := nixhash.NewHasher(nixhash.SHA256)
	n, err := io.Copy(io.MultiWriter(zw, narHash), io.LimitReader(r, int64(info.NarSize)))
	if err == nil {
		err = zw.Close()
	}
	if err != nil {
		return fmt.Errorf("add %s to %s: %w", info.Path, f.uri, err)
	}
	if uint64(n) != info.NarSize || narHash.Sum() != info.NarHash {
		return fmt.Errorf("add %s to %s: %w", info.Path, f.uri, store.ErrHashMismatch)
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	fh := fileHash.Sum()
	name := "nar/" + fh.Format(nixhash.Nix32, false) + ".nar" + compressions[f.compression]
	if err := os.Rename(tmp.Name(), filepath.Join(f.dir, name)); err != nil {
		return fmt.Errorf("add %s to %s: %w", info.Path, f.uri, err)
	}
	ni := &narinfo.NarInfo{StorePath: info.Path, URL: name, Compression: f.compression, FileHash: fh, FileSize: file.n,
		NarHash: info.NarHash, NarSize: info.NarSize, References: info.References, Deriver: info.Deriver, CA: info.CA}
	for _, s := range info.Signatures {
		if sig, err := narinfo.ParseSignature(s); err == nil {
			ni.Sigs = append(ni.Sigs, sig)
		}
	}
	if !f.key.IsZero() {
		if err := ni.Sign(f.key); err != nil {
			return err
		}
	}
	return writeAtomically(filepath.Join(f.dir, info.Path.HashPart()+".narinfo"), []byte(ni.String()))
}

// countingWriter counts what goes through it.
type countingWriter struct {
	w io.Writer
	n uint64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += uint64(n)
	return n, err
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// compressor compresses into w as method says.
func compressor(method string, w io.Writer) (io.WriteCloser, error) {
	switch method {
	case "none":
		return nopCloser{w}, nil
	case "xz":
		return xz.NewWriter(w)
	case "bzip2":
		return bzip2.NewWriter(w, &bzip2.WriterConfig{Level: bzip2.BestCompression})
	case "zstd":
		return zstd.NewWriter(w, zstd.WithEncoderConcurrency(1))
	}
	return nil, fmt.Errorf("unknown compression method '%s'", method)
}

// writeAtomically writes data to path through a temporary in its directory.
func writeAtomically(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
