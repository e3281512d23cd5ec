package local

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"cairn/internal/store"
	"cairn/internal/storepath"
)

// CASchemaVersion is the version of the ca-derivations part of Nix's schema
// (db/ca-schema), which holds the realisations. Nix creates those tables only
// with the ca-derivations feature; Cairn creates them on first use.
const CASchemaVersion = 3

// caSchemaDDL creates the realisation tables exactly as Nix's version 3 has them.
const caSchemaDDL = `
create table if not exists Realisations (
    id integer primary key autoincrement not null,
    drvPath text not null,
    outputName text not null,
    outputPath integer not null,
    signatures text,
    foreign key (outputPath) references ValidPaths(id) on delete cascade
);
create index if not exists IndexRealisations on Realisations(drvPath, outputName);
create table if not exists RealisationsRefs (
    referrer integer not null,
    realisationReference integer,
    foreign key (referrer) references Realisations(id) on delete cascade,
    foreign key (realisationReference) references Realisations(id) on delete restrict
);
create index if not exists IndexRealisationsRefs on RealisationsRefs(referrer);
create index if not exists IndexRealisationsRefsOnOutputPath on Realisations(outputPath);
`

var _ store.RealisationStore = (*Store)(nil)

// caSchema remembers whether the realisation tables exist.
type caSchema struct {
	mu    sync.Mutex
	ready bool
}

func (s *Store) caSchemaPath() string { return filepath.Join(s.cfg.StateDir, "db", "ca-schema") }

// ensureCASchema creates the realisation tables if the store has none yet
// (create reports whether to), and reports whether they exist.
func (s *Store) ensureCASchema(ctx context.Context, create bool) (bool, error) {
	s.ca.mu.Lock()
	defer s.ca.mu.Unlock()
	if s.ca.ready {
		return true, nil
	}
	path := s.caSchemaPath()
	cur, err := readSchema(path)
	if err != nil {
		return false, err
	}
	switch {
	case cur > CASchemaVersion:
		return false, fmt.Errorf("current Nix store ca-schema is version %d, but I only support %d", cur, CASchemaVersion)
	case cur != 0 && cur < CASchemaVersion:
		return false, fmt.Errorf("the Nix store ca-schema is version %d; run a Nix command with the ca-derivations feature on it once to upgrade it to %d", cur, CASchemaVersion)
	case cur == 0 && !create:
		return false, nil
	case cur == 0:
		if err := s.writeTx(ctx, func(tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, caSchemaDDL)
			return err
		}); err != nil {
			return false, fmt.Errorf("create the realisation tables: %w", err)
		}
		if err := writeFileAtomic(path, []byte(strconv.Itoa(CASchemaVersion)), 0o644); err != nil {
			return false, err
		}
	}
	s.ca.ready = true
	return true, nil
}

// RegisterRealisation records r as Nix 2.8 does: a realisation already known
// for the same output must name the same path, and then only gains r's
// signatures; every realisation r depends on must be known, with the same path.
func (s *Store) RegisterRealisation(ctx context.Context, r *store.Realisation) error {
	if err := s.checkPath(r.OutPath); err != nil {
		return err
	}
	if _, err := s.ensureCASchema(ctx, true); err != nil {
		return fmt.Errorf("register realisation %s: %w", r.ID, err)
	}
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var outID int64
		err := tx.QueryRowContext(ctx, "select id from ValidPaths where path = ?", r.OutPath.String()).Scan(&outID)
		if errors.Is(err, sql.ErrNoRows) {
			return store.NotValid(r.OutPath)
		} else if err != nil {
			return err
		}
		old, err := queryRealisationCore(ctx, tx, s.dir, r.ID)
		if err != nil {
			return err
		}
		switch {
		case old == nil:
			if _, err := tx.ExecContext(ctx,
				"insert into Realisations (drvPath, outputName, outputPath, signatures) values (?, ?, ?, ?)",
				r.ID.HashString(), r.ID.Output, outID, joinSigs(r.Signatures)); err != nil {
				return err
			}
		case old.OutPath != r.OutPath:
			return fmt.Errorf("Trying to register a realisation of '%s', but we already have another one locally.\nLocal:  %s\nRemote: %s",
				r.ID, old.OutPath, r.OutPath)
		default:
			if _, err := tx.ExecContext(ctx,
				"update Realisations set signatures = ? where drvPath = ? and outputName = ?",
				joinSigs(slices.Concat(old.Signatures, r.Signatures)), r.ID.HashString(), r.ID.Output); err != nil {
				return err
			}
		}
		for dep, path := range r.Dependent {
			local, err := queryRealisationCore(ctx, tx, s.dir, dep)
			if err != nil {
				return err
			}
			if local == nil {
				return fmt.Errorf("unable to register the derivation '%s' as it depends on the non existent '%s'", r.ID, dep)
			}
			if local.OutPath != path {
				return fmt.Errorf("unable to register the derivation '%s' as it depends on a realisation of '%s' that doesn't match what we have locally", r.ID, dep)
			}
			if _, err := tx.ExecContext(ctx, `insert or replace into RealisationsRefs (referrer, realisationReference) values (
				(select id from Realisations where drvPath = ? and outputName = ?),
				(select id from Realisations where drvPath = ? and outputName = ?))`,
				r.ID.HashString(), r.ID.Output, dep.HashString(), dep.Output); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("register realisation %s: %w", r.ID, err)
	}
	return nil
}

// QueryRealisation returns the realisation of id with the realisations it
// depends on, or nil.
func (s *Store) QueryRealisation(ctx context.Context, id store.DrvOutput) (*store.Realisation, error) {
	ok, err := s.ensureCASchema(ctx, false)
	if err != nil || !ok {
		return nil, err
	}
	tx, err := s.rdb.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("query realisation %s: %w", id, err)
	}
	defer tx.Rollback()
	r, err := queryRealisationCore(ctx, tx, s.dir, id)
	if err != nil || r == nil {
		return r, err
	}
	rows, err := tx.QueryContext(ctx, `select Realisations.drvPath, Realisations.outputName, Output.path
		from RealisationsRefs
		join Realisations on Realisations.id = RealisationsRefs.realisationReference
		join ValidPaths as Output on Output.id = Realisations.outputPath
		where RealisationsRefs.referrer = (select id from Realisations where drvPath = ? and outputName = ?)`,
		id.HashString(), id.Output)
	if err != nil {
		return nil, fmt.Errorf("query realisation %s: %w", id, err)
	}
	defer rows.Close()
	for rows.Next() {
		var hash, out, path string
		if err := rows.Scan(&hash, &out, &path); err != nil {
			return nil, fmt.Errorf("query realisation %s: %w", id, err)
		}
		dep, err := store.ParseDrvOutput(hash + "!" + out)
		if err != nil {
			return nil, fmt.Errorf("query realisation %s: %w", id, err)
		}
		p, err := s.dir.Parse(path)
		if err != nil {
			return nil, fmt.Errorf("query realisation %s: %w", id, err)
		}
		if r.Dependent == nil {
			r.Dependent = map[store.DrvOutput]storepath.StorePath{}
		}
		r.Dependent[dep] = p
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query realisation %s: %w", id, err)
	}
	return r, nil
}

// joinSigs renders a signature set as Nix stores it: sorted, unique, spaces between.
func joinSigs(sigs []string) string {
	sigs = slices.Clone(sigs)
	slices.Sort(sigs)
	return strings.Join(slices.Compact(sigs), " ")
}

// queryRealisationCore reads one realisation row without its dependencies.
func queryRealisationCore(ctx context.Context, tx *sql.Tx, dir storepath.StoreDir, id store.DrvOutput) (*store.Realisation, error) {
	var path string
	var sigs sql.NullString
	err := tx.QueryRowContext(ctx, `select Output.path, Realisations.signatures from Realisations
		join ValidPaths as Output on Output.id = Realisations.outputPath
		where drvPath = ? and outputName = ?`, id.HashString(), id.Output).Scan(&path, &sigs)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	p, err := dir.Parse(path)
	if err != nil {
		return nil, err
	}
	return &store.Realisation{ID: id, OutPath: p, Signatures: strings.Fields(sigs.String)}, nil
}
