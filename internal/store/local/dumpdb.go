package local

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"cairn/internal/nixhash"
	"cairn/internal/store"
	"cairn/internal/storepath"
)

// The registration format of `nix-store --dump-db` and `--load-db` (Nix's
// makeValidityRegistration with derivers and hashes, and decodeValidPathInfo),
// one record per path, each field on its own line:
//
//	record := path "\n" narHash "\n" narSize "\n" deriver "\n" n "\n" { reference "\n" }×n
//
// narHash is sha256 in base16 without a prefix when dumped; any encoding of a
// sha256 (with or without "sha256:") is read. narSize is decimal (0 when
// unknown), deriver is a store path or empty, n is the decimal number of
// references, which follow sorted. The stream ends at end of input where a
// path would start.

// Limits on a registration stream.
const (
	// MaxRegistrationLine bounds one line (a store path is at most 211+33+dir).
	MaxRegistrationLine = 4096
	// MaxRegistrationRefs bounds the reference count of one record.
	MaxRegistrationRefs = 1 << 20
	// dumpChunk is how many path infos DumpDB reads per transaction.
	dumpChunk = 1000
)

// DumpDB writes the registration of paths (every valid path, in Nix's order,
// when paths is nil) to w, byte for byte as `nix-store --dump-db` does.
func (s *Store) DumpDB(ctx context.Context, w io.Writer, paths []storepath.StorePath) error {
	if paths == nil {
		all, err := s.QueryAllValidPaths(ctx)
		if err != nil {
			return fmt.Errorf("dump database: %w", err)
		}
		paths = all
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	for len(paths) > 0 {
		n := min(len(paths), dumpChunk)
		infos, err := s.QueryPathInfos(ctx, paths[:n])
		if err != nil {
			return fmt.Errorf("dump database: %w", err)
		}
		for _, info := range infos {
			WriteRegistration(bw, info)
		}
		paths = paths[n:]
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("dump database: %w", err)
	}
	return nil
}

// WriteRegistration writes one record of the registration format.
func WriteRegistration(w *bufio.Writer, info *store.PathInfo) {
	w.WriteString(info.Path.String())
	w.WriteByte('\n')
	w.WriteString(info.NarHash.Base16())
	w.WriteByte('\n')
	w.WriteString(strconv.FormatUint(info.NarSize, 10))
	w.WriteByte('\n')
	if !info.Deriver.IsZero() {
		w.WriteString(info.Deriver.String())
	}
	w.WriteByte('\n')
	w.WriteString(strconv.Itoa(len(info.References)))
	w.WriteByte('\n')
	for _, r := range info.References {
		w.WriteString(r.String())
		w.WriteByte('\n')
	}
}

// RegistrationReader reads records of the registration format.
type RegistrationReader struct {
	br   *bufio.Reader
	dir  storepath.StoreDir
	line int
	err  error
}

// NewRegistrationReader reads records from r; every path must be in dir.
func NewRegistrationReader(r io.Reader, dir storepath.StoreDir) *RegistrationReader {
	return &RegistrationReader{br: bufio.NewReaderSize(r, 64<<10), dir: dir}
}

// readLine reads one line without its newline. A last line without a newline
// is accepted, as getline does.
func (rr *RegistrationReader) readLine() (string, error) {
	var b []byte
	for {
		frag, err := rr.br.ReadSlice('\n')
		b = append(b, frag...)
		if len(b) > MaxRegistrationLine+1 {
			return "", fmt.Errorf("line %d: longer than %d bytes", rr.line+1, MaxRegistrationLine)
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == io.EOF && len(b) > 0 {
			err = nil
		}
		if err != nil {
			return "", err
		}
		rr.line++
		return strings.TrimSuffix(string(b), "\n"), nil
	}
}

// Next returns the next record, or io.EOF at the end of the stream. Errors are sticky.
func (rr *RegistrationReader) Next() (*store.PathInfo, error) {
	if rr.err != nil {
		return nil, rr.err
	}
	info, err := rr.next()
	if err != nil {
		if err != io.EOF {
			err = fmt.Errorf("read registration: %w", err)
		}
		rr.err = err
		return nil, err
	}
	return info, nil
}

func (rr *RegistrationReader) next() (*store.PathInfo, error) {
	line, err := rr.readLine()
	if err != nil {
		return nil, err // io.EOF: a clean end
	}
	field := func(what string) (string, error) {
		s, err := rr.readLine()
		if err == io.EOF {
			return "", fmt.Errorf("line %d: missing input (%s)", rr.line+1, what)
		}
		return s, err
	}
	info := &store.PathInfo{}
	if info.Path, err = rr.dir.Parse(line); err != nil {
		return nil, fmt.Errorf("line %d: %w", rr.line, err)
	}
	s, err := field("hash")
	if err != nil {
		return nil, err
	}
	if info.NarHash, err = nixhash.ParseAny(s, nixhash.SHA256); err != nil {
		return nil, fmt.Errorf("line %d: %w", rr.line, err)
	}
	if s, err = field("size"); err != nil {
		return nil, err
	}
	if info.NarSize, err = strconv.ParseUint(s, 10, 64); err != nil {
		return nil, fmt.Errorf("line %d: number expected", rr.line)
	}
	if s, err = field("deriver"); err != nil {
		return nil, err
	}
	if s != "" {
		if info.Deriver, err = rr.dir.Parse(s); err != nil {
			return nil, fmt.Errorf("line %d: %w", rr.line, err)
		}
	}
	if s, err = field("reference count"); err != nil {
		return nil, err
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > MaxRegistrationRefs {
		return nil, fmt.Errorf("line %d: number expected", rr.line)
	}
	for range n {
		if s, err = field("reference"); err != nil {
			return nil, err
		}
		ref, err := rr.dir.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", rr.line, err)
		}
		info.References = append(info.References, ref)
	}
	storepath.SortPaths(info.References)
	return info, nil
}

// LoadDB reads a registration stream (`nix-store --dump-db` output) and
// registers every record as `nix-store --load-db` does: all in one
// transaction, new paths added and valid ones updated (hash and size), the
// files assumed to be in place already. References must be valid or in the
// stream. It returns how many records it read.
func (s *Store) LoadDB(ctx context.Context, r io.Reader) (int, error) {
	rr := NewRegistrationReader(r, s.dir)
	byPath := map[storepath.StorePath]int{}
	var infos []*store.PathInfo
	for {
		info, err := rr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("load database: %w", err)
		}
		// A later record of the same path wins, as in Nix's map.
		if i, ok := byPath[info.Path]; ok {
			infos[i] = info
			continue
		}
		byPath[info.Path] = len(infos)
		infos = append(infos, info)
	}
	if len(infos) == 0 {
		return 0, nil
	}
	if err := s.RegisterValidPaths(ctx, infos); err != nil {
		return 0, fmt.Errorf("load database: %w", err)
	}
	return len(infos), nil
}
