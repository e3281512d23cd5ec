package local

import (
	"context"
	"database/sql"
	"fmt"

	"cairn/internal/storepath"
)

// Suspects are the valid paths registered after the last sync the marker
// records (marker.go), when the system went down since: their rows may have
// reached the disk without all of their files. recoverSuspects rehashes each
// (NAR hash and size, as verify --check-contents does) and invalidates those
// that do not match, together with every valid path that refers to them
// (directly or not: a valid path's closure must be valid), deleting their
// rows and then their files, as a failed add leaves nothing. Each
// invalidated path is named in a warning.
//
// The work is bounded by what was added between the last sync and the
// crash, which the syncer keeps to a fraction of a second's adds (more after
// a failed sync); suspects are read suspectChunk rows at a time.

// suspectChunk is how many suspect rows are read at once.
const suspectChunk = 1024

// suspect is a path found corrupt, and why.
type suspect struct {
	id   int64
	path storepath.StorePath
	why  string
}

// recoverSuspects checks the valid paths whose id exceeds after.
func (s *Store) recoverSuspects(ctx context.Context, after int64) error {
	var bad []suspect
	checked := 0
	for last := after; ; {
		ids, paths, next, err := s.suspectRows(ctx, last)
		if err != nil {
			return err
		}
		if next == last {
			break
		}
		last = next
		checked += len(ids)
		for i, p := range paths {
			if why := s.checkSuspect(ctx, p); why != "" {
				bad = append(bad, suspect{id: ids[i], path: p, why: why})
			}
		}
	}
	s.suspectsChecked.Add(int64(checked))
	if len(bad) == 0 {
		return nil
	}
	return s.invalidateSuspects(ctx, bad)
}

// suspectRows returns the valid paths among the suspectChunk rows with ids
// above after, in id order, and the highest id read (after, if none).
func (s *Store) suspectRows(ctx context.Context, after int64) (ids []int64, paths []storepath.StorePath, last int64, err error) {
	last = after
	rows, err := s.rdb.QueryContext(ctx, `select id, path from ValidPaths where id > ? order by id limit ?`, after, suspectChunk)
	if err != nil {
		return nil, nil, after, fmt.Errorf("query paths added since the last sync: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var path string
		if err := rows.Scan(&id, &path); err != nil {
			return nil, nil, after, fmt.Errorf("query paths added since the last sync: %w", err)
		}
		last = id
		p, err := s.dir.Parse(path)
		if err != nil {
			// Not a path of this store: nothing to rehash; Nix's verify reports it.
			continue
		}
		ids = append(ids, id)
		paths = append(paths, p)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, after, fmt.Errorf("query paths added since the last sync: %w", err)
	}
	return ids, paths, last, nil
}

// checkSuspect rehashes p and says what is wrong with it, or "" if nothing is
// (or it is no longer valid).
func (s *Store) checkSuspect(ctx context.Context, p storepath.StorePath) string {
	c := s.rehash(ctx, p)
	switch {
	case c.invalid:
		return ""
	case c.err != nil:
		return c.err.Error()
	case !zeroDigest(c.info.NarHash) && c.got != c.info.NarHash:
		return fmt.Sprintf("its contents hash to '%s', not '%s'", c.got, c.info.NarHash)
	case c.info.NarSize != 0 && c.size != c.info.NarSize:
		return fmt.Sprintf("its NAR is %d bytes, not %d", c.size, c.info.NarSize)
	}
	return ""
}

// invalidateSuspects deletes the rows of bad and of their referrers in one
// transaction, then their files.
func (s *Store) invalidateSuspects(ctx context.Context, bad []suspect) error {
	seeds := make([]any, len(bad))
	for i, b := range bad {
		seeds[i] = b.id
	}
	why := make(map[int64]string, len(bad))
	for _, b := range bad {
		why[b.id] = b.why
	}
	var gone []suspect
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		gone = gone[:0]
		rows, err := tx.QueryContext(ctx, `with recursive bad(id) as (
    select value from json_each(?1)
    union select Refs.referrer from Refs join bad on Refs.reference = bad.id)
  select v.id, v.path from ValidPaths v join bad on v.id = bad.id order by v.id`, jsonArg(seeds))
		if err != nil {
			return err
		}
		var ids []any
		for rows.Next() {
			var b suspect
			var path string
			if err := rows.Scan(&b.id, &path); err != nil {
				rows.Close()
				return err
			}
			p, err := s.dir.Parse(path)
			if err != nil {
				rows.Close()
				return fmt.Errorf("invalidate %s: %w", path, err)
			}
			b.path = p
			gone = append(gone, b)
			ids = append(ids, b.id)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		set := jsonArg(ids)
		var hasCA int
		if err := tx.QueryRowContext(ctx, `select count(*) from sqlite_master where type = 'table' and name = 'RealisationsRefs'`).Scan(&hasCA); err != nil {
			return err
		}
		stmts := []string{
			`delete from Refs where reference in (select value from json_each(?1))`,
			`delete from ValidPaths where id in (select value from json_each(?1))`,
		}
		if hasCA > 0 {
			stmts = append([]string{`delete from RealisationsRefs where realisationReference in
  (select id from Realisations where outputPath in (select value from json_each(?1)))`}, stmts...)
		}
		for _, q := range stmts {
			if _, err := tx.ExecContext(ctx, q, set); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("invalidate paths left incomplete by a crash: %w", err)
	}
	var t *tempDir
	if len(gone) > 0 {
		if t, err = s.newTemp(); err != nil {
			return fmt.Errorf("invalidate paths left incomplete by a crash: %w", err)
		}
		defer t.remove()
	}
	for _, b := range gone {
		reason, ok := why[b.id]
		if !ok {
			reason = "it refers to another path invalidated here"
		}
		s.warnf("warning: invalidating path '%s', registered after the last sync the store recorded: %s", b.path, reason)
		if _, err := s.deleteOne(ctx, b.path, false, t); err != nil {
			s.warnf("warning: removing the files of '%s': %v", b.path, err)
		}
	}
	s.suspectsInvalidated.Add(int64(len(gone)))
	return nil
}
