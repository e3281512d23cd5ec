package local

import (
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"cairn/internal/store"
	"cairn/internal/storepath"
)

// The WAL-index header SQLite keeps at the start of a database's -shm file
// (https://sqlite.org/walformat.html, "The WAL-Index Header"): two copies of
//
//	iVersion u32, unused u32, iChange u32, isInit u8, bigEndCksum u8, szPage u16,
//	mxFrame u32, nPage u32, aFrameCksum [2]u32, aSalt [2]u32, aCksum [2]u32
//
// 48 bytes each. Every commit, by any connection of any process, rewrites
// both with iChange incremented (the second copy first, the first last), and
// every process using the database maps the same file, so its format is one
// every SQLite since 3.7.0 shares. If the first copy reads the same as
// before, nothing was committed in between.
const (
	walHdrSize    = 48
	walHdrIChange = 8  // offset of iChange, the commit counter
	walHdrIsInit  = 12 // offset of isInit, 1 once the header is valid
	// maxCachedInfos bounds the cache; beyond it an entry is dropped for each
	// one added (a QueryPathInfo reply holds a few hundred bytes).
	maxCachedInfos = 1 << 14
)

// infoCache keeps what QueryPathInfo read (infos, and the paths found
// invalid) for as long as the database is unchanged, which it checks on each
// lookup with one pread of the WAL-index header: a commit anywhere (this
// process's adds, deletes and AddSignatures, or a Nix process deleting a
// path) empties it before the next answer. Lookups that find the header
// unreadable go to the database.
//
// The -shm file is only deleted or truncated by the last connection to
// close, so the cache holds a read connection open for its life (pin).
type infoCache struct {
	once  sync.Once
	shm   *os.File // nil: no cache
	pin   *sql.Conn
	ready atomic.Bool // init has run and opened shm

	mu  sync.Mutex
	hdr [walHdrSize]byte                        // the header the entries were read under
	m   map[storepath.StorePath]*store.PathInfo // nil value: not valid
}

// stamp is a WAL-index header as read, ok when it is complete and initialised.
type stamp struct {
	hdr [walHdrSize]byte
	ok  bool
}

// init opens the -shm file next to the database on the first lookup (so a
// store opened only to add never does).
func (c *infoCache) init(s *Store) {
	c.once.Do(func() {
		ctx := context.Background()
		pin, err := s.rdb.Conn(ctx)
		if err != nil {
			return
		}
		// A read maps the -shm file on this connection.
		var v int64
		if err := pin.QueryRowContext(ctx, "pragma data_version").Scan(&v); err != nil {
			pin.Close()
			return
		}
		f, err := os.Open(filepath.Join(s.cfg.StateDir, "db", "db.sqlite-shm"))
		if err != nil {
			pin.Close()
			return
		}
		c.shm, c.pin = f, pin
		c.m = make(map[storepath.StorePath]*store.PathInfo)
		c.ready.Store(true)
	})
}

func (c *infoCache) read() stamp {
	var st stamp
	n, err := unix.Pread(int(c.shm.Fd()), st.hdr[:], 0)
	st.ok = err == nil && n == walHdrSize && st.hdr[walHdrIsInit] != 0
	return st
}

// get returns the cached entry of p (found; info nil when p is not valid)
// and the stamp under which to put what the database says otherwise.
func (c *infoCache) get(s *Store, p storepath.StorePath) (info *store.PathInfo, found bool, st stamp) {
	c.init(s)
	if c.shm == nil {
		return nil, false, st
	}
	st = c.read()
	c.mu.Lock()
	defer c.mu.Unlock()
	if !st.ok || st.hdr != c.hdr {
		clear(c.m)
		if !st.ok {
			return nil, false, st
		}
		c.hdr = st.hdr
	}
	info, found = c.m[p]
	return info, found, st
}

// put caches info (nil: not valid) for p if the database is still as it was
// when st was read, before the lookup that found info began.
func (c *infoCache) put(p storepath.StorePath, info *store.PathInfo, st stamp) {
	if c.shm == nil || !st.ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if st.hdr != c.hdr {
		return
	}
	if len(c.m) >= maxCachedInfos {
		for k := range c.m {
			delete(c.m, k)
			break
		}
	}
	c.m[p] = info
}

// writeStamp reads the header inside a write transaction, for registered;
// it reads nothing until a lookup has started the cache.
func (c *infoCache) writeStamp() stamp {
	if !c.ready.Load() {
		return stamp{}
	}
	return c.read()
}

// iChange is the header's commit counter (native byte order).
func (st stamp) iChange() uint32 { return binary.NativeEndian.Uint32(st.hdr[walHdrIChange:]) }

// registered puts in the cache the infos a commit of this process has just
// registered, so that a client asking for a path it has added is answered
// without a lookup. before is the header read inside the commit's
// transaction: no other connection can commit while a write transaction is
// open, and every commit adds exactly one to iChange, so if the header now
// shows one commit more, that commit was this one and the cache can move to
// the new header with the batch's infos. The entries already there stay when
// they were read under before: a commit of fresh paths changes no other
// path's info. Paths registered again (repairs, RegisterValidPaths) keep
// their old deriver and registration time in the database, so they are
// dropped rather than put. Otherwise nothing is done, and the next lookup
// finds the header changed and empties the cache.
func (c *infoCache) registered(before stamp, items []*pending) {
	if !before.ok || !c.ready.Load() {
		return
	}
	after := c.read()
	if !after.ok || after.iChange() != before.iChange()+1 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hdr != before.hdr && c.hdr != after.hdr {
		clear(c.m)
	}
	c.hdr = after.hdr
	for _, it := range items {
		switch {
		case it.skip:
		case it.repair:
			delete(c.m, it.info.Path)
		case len(c.m) < maxCachedInfos:
			c.m[it.info.Path] = asStored(it.info)
		}
	}
}

// asStored returns info as a lookup of its fresh row reads it back
// (parsePathInfo): registration time in whole seconds, signatures split,
// sorted and without duplicates, references sorted and without duplicates,
// slices clipped.
func asStored(info *store.PathInfo) *store.PathInfo {
	cp := *info
	cp.RegistrationTime = time.Time{}
	if t := info.RegistrationTime.Unix(); t != 0 {
		cp.RegistrationTime = time.Unix(t, 0)
	}
	cp.Signatures = nil
	if len(info.Signatures) > 0 {
		cp.Signatures = slices.Clip(splitSorted(strings.Join(info.Signatures, " "), " "))
	}
	cp.References = nil
	if len(info.References) > 0 {
		refs := slices.Clone(info.References)
		storepath.SortPaths(refs)
		cp.References = slices.Clip(slices.Compact(refs))
	}
	return &cp
}

// close releases the -shm file and the pinned connection.
func (c *infoCache) close() {
	c.once.Do(func() {}) // no init after close
	if c.shm != nil {
		c.shm.Close()
		c.pin.Close()
	}
}

// cachedPathInfo is QueryPathInfo through the cache. The info returned is a
// copy whose slices are shared with the cache, clipped so that appending to
// them copies.
func (s *Store) cachedPathInfo(ctx context.Context, p storepath.StorePath) (*store.PathInfo, error) {
	if err := s.checkPath(p); err != nil {
		return nil, err
	}
	info, found, st := s.infos.get(s, p)
	if !found {
		var err error
		info, err = s.queryPathInfoDB(ctx, p)
		var nv *store.NotValidError
		switch {
		case errors.As(err, &nv):
			s.infos.put(p, nil, st)
			return nil, err
		case err != nil:
			return nil, err
		}
		info.References = slices.Clip(info.References)
		info.Signatures = slices.Clip(info.Signatures)
		s.infos.put(p, info, st)
	}
	if info == nil {
		return nil, store.NotValid(p)
	}
	cp := *info
	return &cp, nil
}
