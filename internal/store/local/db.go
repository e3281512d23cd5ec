package local

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// SQLite settings, as Nix 2.8 sets them.
const (
	// busyTimeoutMillis is how long SQLite itself waits for a lock: an hour.
	busyTimeoutMillis = 60 * 60 * 1000
	// walAutocheckpoint is the WAL size in pages that triggers a checkpoint.
	walAutocheckpoint = 40000
	// maxBusyBackoff caps the sleep between retries of a busy transaction.
	maxBusyBackoff = 100 * time.Millisecond
	// maxReadConns bounds the read connections; WAL lets them run in parallel.
	maxReadConns = 8
)

// Rows of ValidPaths are inserted registerRows at a time by one statement
// with a VALUES list: binding registerColumns values a row costs less than
// the statement over a JSON array it replaced (64 rows: 0.43 against 0.68 ms
// a transaction, modernc.org/sqlite), and binds every byte as it is.
const (
	registerColumns = 8 // registerArgs
	registerRows    = maxSpareLocks
)

var sqlRegisterFull = sqlRegisterValuesText(registerRows)

// sqlRegisterValues is the statement that inserts n rows of registerArgs and
// returns their ids and paths.
func sqlRegisterValues(n int) string {
	if n == registerRows {
		return sqlRegisterFull
	}
	return sqlRegisterValuesText(n)
}

func sqlRegisterValuesText(n int) string {
	var b strings.Builder
	b.WriteString("insert into ValidPaths (path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca) values ")
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("(?,?,?,?,?,?,?,?)")
	}
	b.WriteString(" returning id, path")
	return b.String()
}

// openDB opens the database at path twice: a pool of read connections and one
// write connection whose transactions begin IMMEDIATE, so a writer takes the
// write lock up front and never fails to upgrade a read lock midway.
func openDB(path string, fsync bool) (rdb, wdb *sql.DB, err error) {
	if strings.ContainsAny(path, "?#") {
		return nil, nil, fmt.Errorf("open database %s: the path must not contain '?' or '#'", path)
	}
	sync := "normal"
	if !fsync {
		sync = "off"
	}
	dsn := fmt.Sprintf("%s?_pragma=busy_timeout(%d)&_pragma=foreign_keys(1)&_pragma=synchronous(%s)&_pragma=wal_autocheckpoint(%d)",
		path, busyTimeoutMillis, sync, walAutocheckpoint)
	wdb, err = sql.Open("sqlite", dsn+"&_txlock=immediate")
	if err != nil {
		return nil, nil, fmt.Errorf("open database %s: %w", path, err)
	}
	wdb.SetMaxOpenConns(1)
	wdb.SetMaxIdleConns(1)
	wdb.SetConnMaxLifetime(0)
	// WAL is a property of the file; set it once, outside any transaction, the
	// way Nix does (query first, change only if needed).
	var mode string
	if err := retryBusy(context.Background(), func() error {
		return wdb.QueryRow("pragma main.journal_mode").Scan(&mode)
	}); err != nil {
		wdb.Close()
		return nil, nil, fmt.Errorf("open database %s: query journal mode: %w", path, err)
	}
	if !strings.EqualFold(mode, "wal") {
		if err := retryBusy(context.Background(), func() error {
			return wdb.QueryRow("pragma main.journal_mode = wal").Scan(&mode)
		}); err != nil {
			wdb.Close()
			return nil, nil, fmt.Errorf("open database %s: set journal mode: %w", path, err)
		}
	}
	rdb, err = sql.Open("sqlite", dsn)
	if err != nil {
		wdb.Close()
		return nil, nil, fmt.Errorf("open database %s: %w", path, err)
	}
	rdb.SetMaxOpenConns(maxReadConns)
	rdb.SetMaxIdleConns(maxReadConns)
	return rdb, wdb, nil
}

// isBusy reports whether err is SQLite's "database is locked" (or its WAL
// cousin SQLITE_PROTOCOL), which a retry cures.
func isBusy(err error) bool {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return false
	}
	switch se.Code() & 0xff {
	case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_PROTOCOL:
		return true
	}
	return false
}

// retryBusy runs f until it returns something other than a busy error, sleeping
// a random while (at most maxBusyBackoff) between tries, so "database is locked"
// never reaches a user. It gives up only when ctx is done.
func retryBusy(ctx context.Context, f func() error) error {
	for {
		err := f()
		if err == nil || !isBusy(err) {
			return err
		}
		t := time.NewTimer(time.Duration(rand.Int64N(int64(maxBusyBackoff))))
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (while waiting for the database: %v)", ctx.Err(), err)
		case <-t.C:
		}
	}
}

// SQL statements. Paths are full store paths, hashes "sha256:<base16>".
const (
	sqlQueryPathInfo = `select v.hash, v.registrationTime, v.deriver, v.narSize, v.ultimate, v.sigs, v.ca,
  (select group_concat(r.path, ' ') from Refs join ValidPaths r on r.id = Refs.reference where Refs.referrer = v.id)
  from ValidPaths v where v.path = ?`
	sqlQueryPathInfos = `select j.key, v.hash, v.registrationTime, v.deriver, v.narSize, v.ultimate, v.sigs, v.ca,
  (select group_concat(r.path, ' ') from Refs join ValidPaths r on r.id = Refs.reference where Refs.referrer = v.id)
  from json_each(?) j join ValidPaths v on v.path = j.value`
	sqlQueryPathIDs    = `select v.id, v.path from json_each(?) j join ValidPaths v on v.path = j.value`
	sqlAddReferences   = `insert or replace into Refs (referrer, reference) select value->>0, value->>1 from json_each(?)`
	sqlAddDrvOutputs   = `insert or replace into DerivationOutputs (drv, id, path) select value->>0, value->>1, value->>2 from json_each(?)`
	sqlQueryPathID     = `select id from ValidPaths where path = ?`
	sqlRegisterPath    = `insert into ValidPaths (path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca) values (?, ?, ?, ?, ?, ?, ?, ?)`
	sqlUpdatePathInfo  = `update ValidPaths set narSize = ?, hash = ?, ultimate = ?, sigs = ?, ca = ? where path = ?`
	sqlAddReference    = `insert or replace into Refs (referrer, reference) values (?, ?)`
	sqlAddDrvOutput    = `insert or replace into DerivationOutputs (drv, id, path) values (?, ?, ?)`
	sqlQueryReferrers  = `select v.path from Refs join ValidPaths v on v.id = Refs.referrer where Refs.reference = (select id from ValidPaths where path = ?)`
	sqlQueryDerivers   = `select v.path from DerivationOutputs d join ValidPaths v on d.drv = v.id where d.path = ?`
	sqlQueryDrvOutputs = `select id, path from DerivationOutputs where drv = ?`
	sqlQueryFromHash   = `select path from ValidPaths where path >= ? limit 1`
	sqlQueryAllPaths   = `select path from ValidPaths`
	sqlQueryValidPaths = `select v.path from json_each(?) j join ValidPaths v on v.path = j.value`
	sqlQueryRefsOf     = `select j.key, b.path from json_each(?) j join ValidPaths a on a.path = j.value
  left join Refs on Refs.referrer = a.id left join ValidPaths b on b.id = Refs.reference`
	sqlQueryClosureFwd = `with recursive closure(id) as (
  select v.id from json_each(?) j join ValidPaths v on v.path = j.value
  union
  select Refs.reference from Refs join closure on Refs.referrer = closure.id)
select v.path from closure join ValidPaths v on v.id = closure.id`
	sqlQueryClosureRev = `with recursive closure(id) as (
  select v.id from json_each(?) j join ValidPaths v on v.path = j.value
  union
  select Refs.referrer from Refs join closure on Refs.reference = closure.id)
select v.path from closure join ValidPaths v on v.id = closure.id`
)
