package build

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/dsnet/compress/bzip2"

	"cairn/internal/storepath"
)

// Build logs live where Nix 2.8 puts them: LOGDIR/drvs/XX/REST, where XX
// are the first two characters of the .drv's base name and REST the rest,
// with ".bz2" appended when compress-build-log is on (the default), in
// which case the file is one bzip2 stream of the builder's raw output.
// Readers (Nix's `nix log`, `nix-store -l`, `cairn log`) try the plain
// name first, so writing one form removes the other.

// logFile is one build's log file, written as the log flows.
type logFile struct {
	f *os.File
	w io.WriteCloser // f itself, or a bzip2 writer on it
}

// openLogFile creates the log file of a build of drvPath.
func (b *Builder) openLogFile(drvPath storepath.StorePath, compress bool) (*logFile, error) {
	base := drvPath.Base()
	dir := filepath.Join(b.store.LogDir(), "drvs", base[:2])
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("build log %s: %w", drvPath, err)
	}
	name, other := filepath.Join(dir, base[2:]), filepath.Join(dir, base[2:])+".bz2"
	if compress {
		name, other = other, name
	}
	if err := os.Remove(other); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("build log %s: %w", drvPath, err)
	}
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("build log %s: %w", drvPath, err)
	}
	l := &logFile{f: f, w: f}
	if compress {
		l.w = NewLogWriter(f)
	}
	return l, nil
}

// Write writes raw log bytes.
func (l *logFile) Write(p []byte) (int, error) { return l.w.Write(p) }

// Close flushes and closes the file; it may be called again.
func (l *logFile) Close() error {
	if l.f == nil {
		return nil
	}
	err := l.w.Close()
	if l.w != io.WriteCloser(l.f) {
		if cerr := l.f.Close(); err == nil {
			err = cerr
		}
	}
	l.f = nil
	if err != nil {
		return fmt.Errorf("build log: %w", err)
	}
	return nil
}

// bzFree keeps a few idle bzip2 writers: each holds a 900 kB block buffer,
// which a sync.Pool would drop at every garbage collection (about one per
// build).
var bzFree = make(chan *bzip2.Writer, maxIdleLogWriters)

// maxIdleLogWriters bounds the idle writers kept.
const maxIdleLogWriters = 4

// NewLogWriter returns a writer that compresses a build log on w as Nix
// does (bzip2, 900 kB blocks), in constant memory. Close ends the bzip2
// stream; it does not close w.
func NewLogWriter(w io.Writer) io.WriteCloser {
	var zw *bzip2.Writer
	select {
	case zw = <-bzFree:
		zw.Reset(w)
	default:
		// The level is valid, so there is no error.
		zw, _ = bzip2.NewWriter(w, &bzip2.WriterConfig{Level: bzip2.BestCompression})
	}
	return &bzLogWriter{zw: zw}
}

type bzLogWriter struct{ zw *bzip2.Writer }

func (c *bzLogWriter) Write(p []byte) (int, error) {
	if c.zw == nil {
		return 0, errors.New("write build log: closed")
	}
	return c.zw.Write(p)
}

func (c *bzLogWriter) Close() error {
	if c.zw == nil {
		return nil
	}
	err := c.zw.Close()
	c.zw.Reset(io.Discard) // let go of the file
	select {
	case bzFree <- c.zw:
	default:
	}
	c.zw = nil
	return err
}
