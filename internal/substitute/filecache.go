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

// CacheWriter writes a binary cache, in a directory (file:///DIR) or an S3
// bucket (s3://BUCKET), as Nix 2.8's binary cache stores do for nix copy
// --to: nix-cache-info, the NARs under nar/ (compressed as the compression
// parameter says, xz by default), a narinfo per path, signed with the
// secret-key parameter's key.
type CacheWriter struct {
	files       cacheFiles
	uri         string
	storeDir    storepath.StoreDir
	compression string
	key         narinfo.SecretKey
}

// cacheFiles is where a CacheWriter keeps its files.
type cacheFiles interface {
	has(ctx context.Context, name string) (bool, error)
	// put stores data as name; putFile stores the temporary file tmp
	// (which it may take) as name.
	put(ctx context.Context, name string, data []byte, contentType string) error
	putFile(ctx context.Context, name string, tmp *os.File, contentType string) error
	// tempDir is where NARs are compressed before they are put.
	tempDir() string
}

// The content types Nix's uploads have.
const (
	typeCacheInfo = "text/x-nix-cache-info"
	typeNarInfo   = "text/x-nix-narinfo"
	typeNar       = "application/x-nix-nar"
)

// compressions are the methods a FileCache writes, with their NAR file
// extensions.
var compressions = map[string]string{"none": "", "xz": ".xz", "bzip2": ".bz2", "zstd": ".zst"}

// OpenCacheWriter opens the cache rawURL names (file:///DIR, made if need
// be, or s3://BUCKET), for paths of storeDir, and writes its
// nix-cache-info if it has none.
func OpenCacheWriter(ctx context.Context, rawURL string, storeDir storepath.StoreDir, o HTTPOptions) (*CacheWriter, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("open binary cache %s: %w", rawURL, err)
	}
	q := u.Query()
	w := &CacheWriter{storeDir: storeDir, compression: "xz"}
	switch {
	case u.Scheme == "file" && u.Path != "":
		for _, d := range []string{"", "nar", "log", "realisations"} {
			if err := os.MkdirAll(filepath.Join(u.Path, d), 0o755); err != nil {
				return nil, fmt.Errorf("open binary cache %s: %w", rawURL, err)
			}
		}
		w.files, w.uri = dirFiles(u.Path), "file://"+u.Path
	case u.Scheme == "s3":
		b, err := newS3Backend(u, o)
		if err != nil {
			return nil, err
		}
		w.files, w.uri = &s3Files{b: b, tmp: os.TempDir()}, "s3://"+u.Host
	default:
		return nil, fmt.Errorf("open binary cache %s: not a file:// or s3:// URL", rawURL)
	}
	if c := q.Get("compression"); c != "" {
		w.compression = c
	}
	if _, ok := compressions[w.compression]; !ok {
		return nil, fmt.Errorf("unknown compression method '%s'", w.compression)
	}
	if k := q.Get("secret-key"); k != "" {
		text, err := os.ReadFile(k)
		if err != nil {
			return nil, fmt.Errorf("open binary cache %s: %w", rawURL, err)
		}
		if w.key, err = narinfo.ParseSecretKey(strings.TrimSpace(string(text))); err != nil {
			return nil, fmt.Errorf("open binary cache %s: secret key %s: %w", rawURL, k, err)
		}
	}
	if ok, err := w.files.has(ctx, "nix-cache-info"); err != nil {
		return nil, fmt.Errorf("open binary cache %s: %w", rawURL, err)
	} else if !ok {
		if err := w.files.put(ctx, "nix-cache-info", []byte("StoreDir: "+string(storeDir)+"\n"), typeCacheInfo); err != nil {
			return nil, fmt.Errorf("open binary cache %s: %w", rawURL, err)
		}
	}
	return w, nil
}

// dirFiles keeps a cache's files in a directory.
type dirFiles string

func (d dirFiles) has(ctx context.Context, name string) (bool, error) {
	_, err := os.Stat(filepath.Join(string(d), name))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

func (d dirFiles) put(ctx context.Context, name string, data []byte, contentType string) error {
	return writeAtomically(filepath.Join(string(d), name), data)
}

func (d dirFiles) putFile(ctx context.Context, name string, tmp *os.File, contentType string) error {
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(string(d), name))
}

func (d dirFiles) tempDir() string { return filepath.Join(string(d), "nar") }

// URI is the cache as Nix names it in messages.
func (f *CacheWriter) URI() string { return f.uri }

// StoreDir is the store directory of the cache's paths.
func (f *CacheWriter) StoreDir() storepath.StoreDir { return f.storeDir }

// Close releases nothing; a CacheWriter holds no resources.
func (f *CacheWriter) Close() error { return nil }

// QueryValidPaths returns the paths among paths whose narinfo the cache has.
func (f *CacheWriter) QueryValidPaths(ctx context.Context, paths []storepath.StorePath) ([]storepath.StorePath, error) {
	var out []storepath.StorePath
	for _, p := range paths {
		ok, err := f.files.has(ctx, p.HashPart()+".narinfo")
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, p)
		}
	}
	return out, nil
}

// IsValidPath reports whether the cache has p's narinfo.
func (f *CacheWriter) IsValidPath(ctx context.Context, p storepath.StorePath) (bool, error) {
	v, err := f.QueryValidPaths(ctx, []storepath.StorePath{p})
	return len(v) == 1, err
}

// AddNar writes the NAR read from r (exactly info.NarSize bytes, hashing to
// info.NarHash) compressed under nar/, then the path's narinfo: the NAR
// first, so that a narinfo never names a missing file.
func (f *CacheWriter) AddNar(ctx context.Context, info *store.PathInfo, r io.Reader, opts store.AddNarOptions) error {
	tmp, err := os.CreateTemp(f.files.tempDir(), ".tmp-")
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
	fh := fileHash.Sum()
	name := "nar/" + fh.Format(nixhash.Nix32, false) + ".nar" + compressions[f.compression]
	if err := f.files.putFile(ctx, name, tmp, typeNar); err != nil {
		return fmt.Errorf("add %s to %s: %w", info.Path, f.uri, err)
	}
	ni := &narinfo.NarInfo{StorePath: info.Path, URL: name, Compression: f.compression, FileHash: fh, FileSize: file.n,
		NarHash: info.NarHash, NarSize: info.NarSize, References: info.References, Deriver: info.Deriver, CA: info.CA}
	ni.Sigs = narinfo.ParseSignatures(info.Signatures)
	if !f.key.IsZero() {
		if err := ni.Sign(f.key); err != nil {
			return err
		}
	}
	return f.files.put(ctx, info.Path.HashPart()+".narinfo", []byte(ni.String()), typeNarInfo)
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
