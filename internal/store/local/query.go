package local

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"cairn/internal/nar"
	"cairn/internal/nixbase32"
	"cairn/internal/nixhash"
	"cairn/internal/store"
	"cairn/internal/storepath"
)

// queryer is what a query runs on: the read pool or a write transaction.
type queryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// QueryPathInfo returns the info of a valid path. It is answered from a cache
// while the database is unchanged (infocache.go); the slices of the info may
// be shared with it, so a caller must not change their elements in place.
func (s *Store) QueryPathInfo(ctx context.Context, p storepath.StorePath) (*store.PathInfo, error) {
	return s.cachedPathInfo(ctx, p)
}

// queryPathInfoDB reads the info of a valid path from the database.
func (s *Store) queryPathInfoDB(ctx context.Context, p storepath.StorePath) (*store.PathInfo, error) {
	var info *store.PathInfo
	err := retryBusy(ctx, func() error {
		var err error
		info, err = s.queryPathInfo(ctx, s.reads, p)
		return err
	})
	if err != nil {
		return nil, err
	}
	return info, nil
}

// QueryPathInfos returns the info of many valid paths, in the order given, in one
// query over all of them; the first invalid one is an error matching ErrNotFound.
func (s *Store) QueryPathInfos(ctx context.Context, paths []storepath.StorePath) ([]*store.PathInfo, error) {
	for _, p := range paths {
		if err := s.checkPath(p); err != nil {
			return nil, err
		}
	}
	out := make([]*store.PathInfo, len(paths))
	err := retryBusy(ctx, func() error {
		clear(out)
		rows, err := s.reads.QueryContext(ctx, sqlQueryPathInfos, jsonPaths(paths))
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				i   int
				row pathInfoRow
			)
			if err := rows.Scan(&i, &row.hash, &row.regTime, &row.deriver, &row.narSize, &row.ultimate, &row.sigs, &row.ca, &row.refs); err != nil {
				return err
			}
			if i < 0 || i >= len(out) {
				return fmt.Errorf("query path infos: row for index %d of %d", i, len(out))
			}
			if out[i], err = s.parsePathInfo(paths[i], &row); err != nil {
				return err
			}
		}
		return rows.Err()
	})
	if err != nil {
		var nv *store.NotValidError
		if errors.As(err, &nv) || errors.Is(err, store.ErrInvalid) {
			return nil, err
		}
		return nil, fmt.Errorf("query path infos: %w", err)
	}
	for i, info := range out {
		if info == nil {
			return nil, store.NotValid(paths[i])
		}
	}
	return out, nil
}

// pathInfoRow is a ValidPaths row with its references (space-separated).
type pathInfoRow struct {
	hash              string
	regTime           int64
	deriver, sigs, ca sql.NullString
	narSize, ultimate sql.NullInt64
	refs              sql.NullString
}

func (s *Store) queryPathInfo(ctx context.Context, q queryer, p storepath.StorePath) (*store.PathInfo, error) {
	if err := s.checkPath(p); err != nil {
		return nil, err
	}
	var row pathInfoRow
	err := q.QueryRowContext(ctx, sqlQueryPathInfo, p.String()).Scan(&row.hash, &row.regTime, &row.deriver, &row.narSize, &row.ultimate, &row.sigs, &row.ca, &row.refs)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.NotValid(p)
	}
	if err != nil {
		return nil, fmt.Errorf("query path info %s: %w", p, err)
	}
	return s.parsePathInfo(p, &row)
}

// parsePathInfo makes the info of p from its row.
func (s *Store) parsePathInfo(p storepath.StorePath, row *pathInfoRow) (*store.PathInfo, error) {
	info := &store.PathInfo{Path: p, RegistrationTime: time.Unix(row.regTime, 0), Ultimate: row.ultimate.Valid && row.ultimate.Int64 == 1}
	if row.regTime == 0 {
		info.RegistrationTime = time.Time{}
	}
	bad := func(what string, err error) error {
		return fmt.Errorf("invalid-path entry for '%s': %s: %w", p, what, err)
	}
	var err error
	if info.NarHash, err = nixhash.Parse(row.hash); err != nil {
		return nil, bad("hash", err)
	}
	if row.narSize.Valid && row.narSize.Int64 > 0 {
		info.NarSize = uint64(row.narSize.Int64)
	}
	if row.deriver.Valid && row.deriver.String != "" {
		if info.Deriver, err = s.dir.Parse(row.deriver.String); err != nil {
			return nil, bad("deriver", err)
		}
	}
	if row.sigs.Valid {
		info.Signatures = splitSorted(row.sigs.String, " ")
	}
	if row.ca.Valid && row.ca.String != "" {
		if info.CA, err = nixhash.ParseContentAddress(row.ca.String); err != nil {
			return nil, bad("ca", err)
		}
	}
	if row.refs.Valid && row.refs.String != "" {
		if info.References, err = s.parsePaths(strings.Split(row.refs.String, " ")); err != nil {
			return nil, bad("references", err)
		}
		storepath.SortPaths(info.References)
	}
	return info, nil
}

// splitSorted splits s on sep, dropping empty fields, sorted and without duplicates.
func splitSorted(s, sep string) []string {
	var out []string
	for _, f := range strings.Split(s, sep) {
		if f != "" {
			out = append(out, f)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func (s *Store) parsePaths(ss []string) ([]storepath.StorePath, error) {
	out := make([]storepath.StorePath, 0, len(ss))
	for _, x := range ss {
		p, err := s.dir.Parse(x)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// checkPath rejects paths of another store dir.
func (s *Store) checkPath(p storepath.StorePath) error {
	if p.IsZero() || p.Dir() != s.dir {
		return fmt.Errorf("path '%s' is not in the Nix store %s: %w", p, s.dir, store.ErrInvalid)
	}
	return nil
}

// IsValidPath reports whether p is valid.
func (s *Store) IsValidPath(ctx context.Context, p storepath.StorePath) (bool, error) {
	if p.IsZero() || p.Dir() != s.dir {
		return false, nil
	}
	info, found, st := s.infos.get(s, p)
	if found {
		return info != nil, nil
	}
	var ok bool
	err := retryBusy(ctx, func() error {
		var err error
		ok, err = isValid(ctx, s.reads, p)
		return err
	})
	if err == nil && !ok {
		s.infos.put(p, nil, st)
	}
	return ok, err
}

func isValid(ctx context.Context, q queryer, p storepath.StorePath) (bool, error) {
	var id int64
	err := q.QueryRowContext(ctx, sqlQueryPathID, p.String()).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("query validity of %s: %w", p, err)
	}
	return true, nil
}

// jsonPaths encodes paths as a JSON array for json_each.
func jsonPaths(paths []storepath.StorePath) string {
	// A store path holds nothing JSON escapes (nixbase32 and name characters).
	n := 2
	for _, p := range paths {
		n += len(p.String()) + 3
	}
	b := make([]byte, 0, n)
	b = append(b, '[')
	for i, p := range paths {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, p.String()...)
		b = append(b, '"')
	}
	b = append(b, ']')
	return string(b)
}

// queryPaths runs a query that returns one store path per row.
func (s *Store) queryPaths(ctx context.Context, q queryer, what, query string, args ...any) ([]storepath.StorePath, error) {
	var out []storepath.StorePath
	err := retryBusy(ctx, func() error {
		out = out[:0]
		rows, err := q.QueryContext(ctx, query, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var x string
			if err := rows.Scan(&x); err != nil {
				return err
			}
			p, err := s.dir.Parse(x)
			if err != nil {
				return fmt.Errorf("invalid-path entry %q: %w", x, err)
			}
			out = append(out, p)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}

// QueryValidPaths returns the valid paths among paths, in input order, each once.
func (s *Store) QueryValidPaths(ctx context.Context, paths []storepath.StorePath) ([]storepath.StorePath, error) {
	valid, err := s.queryPaths(ctx, s.reads, "query valid paths", sqlQueryValidPaths, jsonPaths(paths))
	if err != nil {
		return nil, err
	}
	set := make(map[storepath.StorePath]bool, len(valid))
	for _, p := range valid {
		set[p] = true
	}
	out := make([]storepath.StorePath, 0, len(valid))
	for _, p := range paths {
		if set[p] {
			out = append(out, p)
			delete(set, p)
		}
	}
	return out, nil
}

// QueryReferrers returns the valid paths that refer to p, sorted.
func (s *Store) QueryReferrers(ctx context.Context, p storepath.StorePath) ([]storepath.StorePath, error) {
	out, err := s.queryPaths(ctx, s.reads, "query referrers of "+p.String(), sqlQueryReferrers, p.String())
	if err != nil {
		return nil, err
	}
	storepath.SortPaths(out)
	return out, nil
}

// QueryClosure returns the closure of roots over references (or referrers, when
// reverse), sorted, computed by one recursive query.
func (s *Store) QueryClosure(ctx context.Context, roots []storepath.StorePath, reverse bool) ([]storepath.StorePath, error) {
	query := sqlQueryClosureFwd
	if reverse {
		query = sqlQueryClosureRev
	}
	out, err := s.queryPaths(ctx, s.reads, "query closure", query, jsonPaths(roots))
	if err != nil {
		return nil, err
	}
	storepath.SortPaths(out)
	for _, r := range roots {
		if _, found := slices.BinarySearchFunc(out, r, storepath.Compare); !found {
			return nil, store.NotValid(r)
		}
	}
	return out, nil
}

// QueryDerivationOutputs returns the outputs registered for the valid derivation drv.
func (s *Store) QueryDerivationOutputs(ctx context.Context, drv storepath.StorePath) (map[string]storepath.StorePath, error) {
	out := map[string]storepath.StorePath{}
	err := retryBusy(ctx, func() error {
		clear(out)
		var id int64
		err := s.reads.QueryRowContext(ctx, sqlQueryPathID, drv.String()).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			return store.NotValid(drv)
		}
		if err != nil {
			return err
		}
		rows, err := s.reads.QueryContext(ctx, sqlQueryDrvOutputs, id)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var name, path string
			if err := rows.Scan(&name, &path); err != nil {
				return err
			}
			p, err := s.dir.Parse(path)
			if err != nil {
				return fmt.Errorf("invalid output entry %q: %w", path, err)
			}
			out[name] = p
		}
		return rows.Err()
	})
	if err != nil {
		var nv *store.NotValidError
		if errors.As(err, &nv) {
			return nil, err
		}
		return nil, fmt.Errorf("query outputs of %s: %w", drv, err)
	}
	return out, nil
}

// QueryValidDerivers returns the valid derivations that have p as an output, sorted.
func (s *Store) QueryValidDerivers(ctx context.Context, p storepath.StorePath) ([]storepath.StorePath, error) {
	out, err := s.queryPaths(ctx, s.reads, "query valid derivers of "+p.String(), sqlQueryDerivers, p.String())
	if err != nil {
		return nil, err
	}
	storepath.SortPaths(out)
	return slices.Compact(out), nil
}

// QueryPathFromHashPart returns the valid path whose hash part is hashPart.
func (s *Store) QueryPathFromHashPart(ctx context.Context, hashPart string) (storepath.StorePath, error) {
	if len(hashPart) != storepath.HashPartLen || nixbase32.ValidateString(hashPart) != nil {
		return storepath.StorePath{}, fmt.Errorf("query path from hash part %q: %w: not a hash part", hashPart, store.ErrInvalid)
	}
	prefix := string(s.dir) + "/" + hashPart
	var path string
	err := retryBusy(ctx, func() error {
		return s.reads.QueryRowContext(ctx, sqlQueryFromHash, prefix).Scan(&path)
	})
	if errors.Is(err, sql.ErrNoRows) || (err == nil && !strings.HasPrefix(path, prefix+"-")) {
		return storepath.StorePath{}, fmt.Errorf("query path from hash part %s: %w", hashPart, store.ErrNotFound)
	}
	if err != nil {
		return storepath.StorePath{}, fmt.Errorf("query path from hash part %s: %w", hashPart, err)
	}
	return s.dir.Parse(path)
}

// QueryAllValidPaths returns every valid path, sorted.
func (s *Store) QueryAllValidPaths(ctx context.Context) ([]storepath.StorePath, error) {
	out, err := s.queryPaths(ctx, s.reads, "query all valid paths", sqlQueryAllPaths)
	if err != nil {
		return nil, err
	}
	storepath.SortPaths(out)
	return out, nil
}

// NarFromPath writes the NAR of the valid path p to w.
func (s *Store) NarFromPath(ctx context.Context, p storepath.StorePath, w io.Writer) error {
	ok, err := s.IsValidPath(ctx, p)
	if err != nil {
		return err
	}
	if !ok {
		return store.NotValid(p)
	}
	return nar.Dump(w, s.RealPath(p), nar.DumpOptions{})
}

// QueryReferencesOf returns the references of each valid path among paths, in
// one query; invalid paths are missing from the map.
func (s *Store) QueryReferencesOf(ctx context.Context, paths []storepath.StorePath) (map[storepath.StorePath][]storepath.StorePath, error) {
	out := make(map[storepath.StorePath][]storepath.StorePath, len(paths))
	// Rows name their path by its index in paths, counted once.
	first := make(map[storepath.StorePath]int, len(paths))
	for i, p := range paths {
		if _, dup := first[p]; !dup {
			first[p] = i
		}
	}
	err := retryBusy(ctx, func() error {
		clear(out)
		rows, err := s.reads.QueryContext(ctx, sqlQueryRefsOf, jsonPaths(paths))
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var i int
			var to sql.NullString
			if err := rows.Scan(&i, &to); err != nil {
				return err
			}
			if i < 0 || i >= len(paths) {
				return fmt.Errorf("row for index %d of %d", i, len(paths))
			}
			p := paths[i]
			if first[p] != i {
				continue
			}
			refs := out[p]
			if to.Valid {
				r, err := s.dir.Parse(to.String)
				if err != nil {
					return fmt.Errorf("invalid-path entry %q: %w", to.String, err)
				}
				refs = append(refs, r)
			}
			out[p] = refs
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("query references: %w", err)
	}
	return out, nil
}
