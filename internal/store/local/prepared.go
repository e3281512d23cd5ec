package local

import (
	"context"
	"database/sql"
	"sync"
)

// preparedReads runs read queries on the read pool through statements prepared
// once per query text and kept for the store's life. SQLite parses a statement in
// about the time a point lookup takes, and the daemon answers QueryPathInfo and
// IsValidPath one call at a time, so parsing each call would double their cost.
// A *sql.Stmt is safe for concurrent use; database/sql prepares it again on each
// pooled connection as needed.
type preparedReads struct {
	db    *sql.DB
	mu    sync.Mutex
	stmts map[string]*sql.Stmt
}

func newPreparedReads(db *sql.DB) *preparedReads {
	return &preparedReads{db: db, stmts: make(map[string]*sql.Stmt)}
}

func (p *preparedReads) stmt(ctx context.Context, query string) (*sql.Stmt, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if st, ok := p.stmts[query]; ok {
		return st, nil
	}
	st, err := p.db.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	p.stmts[query] = st
	return st, nil
}

// QueryRowContext implements queryer; a preparation error surfaces from Scan.
// Single-row lookups take microseconds, so they run without the caller's
// cancellation: with a cancellable context database/sql starts a goroutine per
// query to watch it, which costs more than the lookup.
func (p *preparedReads) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	ctx = context.WithoutCancel(ctx)
	st, err := p.stmt(ctx, query)
	if err != nil {
		return p.db.QueryRowContext(ctx, query, args...)
	}
	return st.QueryRowContext(ctx, args...)
}

// QueryContext implements queryer.
func (p *preparedReads) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	st, err := p.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(ctx, args...)
}

// Close closes every prepared statement.
func (p *preparedReads) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for q, st := range p.stmts {
		st.Close()
		delete(p.stmts, q)
	}
}

// preparedWrites keeps the statements of the write path prepared on the one
// write connection for the store's life; a transaction uses them through
// tx.StmtContext, which finds the statement already prepared on its
// connection and does not parse it again. They are prepared on the first
// commit, before its transaction begins (preparing needs the connection,
// which a transaction holds): a store opened only to read parses none.
type preparedWrites struct {
	db    *sql.DB
	stmts map[string]*sql.Stmt // nil until prepare succeeds
}

// writeQueries are the statements a Commit runs.
var writeQueries = []string{sqlQueryPathIDs, sqlQueryPathID, sqlRegisterFull, sqlRegisterPath, sqlUpdatePathInfo,
	sqlAddReferences, sqlAddReference, sqlAddDrvOutputs, sqlAddDrvOutput}

func newPreparedWrites(db *sql.DB) *preparedWrites { return &preparedWrites{db: db} }

// prepare prepares the statements if that has not been done. The caller
// holds the store's write mutex and no transaction is open on db. A failure
// only means the transactions prepare their statements themselves.
func (p *preparedWrites) prepare(ctx context.Context) {
	if p == nil || p.stmts != nil {
		return
	}
	stmts := make(map[string]*sql.Stmt, len(writeQueries))
	for _, q := range writeQueries {
		st, err := p.db.PrepareContext(ctx, q)
		if err != nil {
			for _, st := range stmts {
				st.Close()
			}
			return
		}
		stmts[q] = st
	}
	p.stmts = stmts
}

// stmt returns query prepared for tx; the caller closes it (which keeps the
// connection's statement) before tx ends.
func (p *preparedWrites) stmt(ctx context.Context, tx *sql.Tx, query string) (*sql.Stmt, error) {
	if p == nil {
		return tx.PrepareContext(ctx, query)
	}
	if st, ok := p.stmts[query]; ok {
		return tx.StmtContext(ctx, st), nil
	}
	return tx.PrepareContext(ctx, query)
}

// Close closes every prepared statement.
func (p *preparedWrites) Close() {
	if p == nil {
		return
	}
	for _, st := range p.stmts {
		st.Close()
	}
	p.stmts = nil
}
