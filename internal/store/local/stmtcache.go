package local

import (
	"context"
	"database/sql"
)

// stmtCache is a queryer over a transaction that prepares each distinct query
// once: SQLite parses a statement in about as long as it takes to run a
// point lookup, so a loop of thousands of lookups halves its time this way.
// Close it before the transaction ends.
type stmtCache struct {
	tx    *sql.Tx
	base  *preparedWrites // statements prepared for the store's life, or nil
	stmts map[string]*sql.Stmt
}

func newStmtCache(tx *sql.Tx) *stmtCache {
	return &stmtCache{tx: tx, stmts: map[string]*sql.Stmt{}}
}

// newWriteCache is a stmtCache that takes the statements base has prepared
// on the write connection instead of preparing them again.
func newWriteCache(tx *sql.Tx, base *preparedWrites) *stmtCache {
	return &stmtCache{tx: tx, base: base, stmts: map[string]*sql.Stmt{}}
}

func (c *stmtCache) stmt(ctx context.Context, query string) (*sql.Stmt, error) {
	if st, ok := c.stmts[query]; ok {
		return st, nil
	}
	var st *sql.Stmt
	var err error
	if c.base != nil {
		st, err = c.base.stmt(ctx, c.tx, query)
	} else {
		st, err = c.tx.PrepareContext(ctx, query)
	}
	if err != nil {
		return nil, err
	}
	c.stmts[query] = st
	return st, nil
}

// ExecContext runs query through its prepared statement.
func (c *stmtCache) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	st, err := c.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	return st.ExecContext(ctx, args...)
}

// QueryRowContext runs query through its prepared statement. A preparation
// error surfaces from the Row's Scan.
func (c *stmtCache) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	st, err := c.stmt(ctx, query)
	if err != nil {
		return c.tx.QueryRowContext(ctx, query, args...)
	}
	return st.QueryRowContext(ctx, args...)
}

func (c *stmtCache) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	st, err := c.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(ctx, args...)
}

// Close releases the prepared statements.
func (c *stmtCache) Close() {
	for _, st := range c.stmts {
		st.Close()
	}
	clear(c.stmts)
}
