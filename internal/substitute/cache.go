package substitute

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"cairn/internal/narinfo"
	"cairn/internal/storepath"
)

// Limits on what a cache sends.
const (
	// MaxNarInfoSize bounds a .narinfo file: room for narinfo.MaxReferences
	// references and the other lines.
	MaxNarInfoSize = narinfo.MaxLineLen + 64<<10
	// MaxRemembered bounds the narinfo lookups a Cache remembers; past it the
	// memory is cleared.
	MaxRemembered = 1 << 16
	// disabledFor is how long a cache whose nix-cache-info could not be read
	// is left alone (Nix disables an unreachable HTTP cache for a minute).
	disabledFor = time.Minute
)

// Cache is one binary cache. Its methods may be called concurrently.
type Cache struct {
	url     string
	backend Backend
	// trusted caches' narinfos need no signature (?trusted=1).
	trusted bool
	// priority from the URL (?priority=N) overrides nix-cache-info's.
	priority    int
	hasPriority bool

	mu        sync.Mutex
	info      *CacheInfo
	infoErr   error
	infoUntil time.Time // when infoErr expires
	warned    bool      // infoErr was reported (once per expiry)
	negTTL    time.Duration
	posTTL    time.Duration
	known     map[string]remembered // by hash part
}

type remembered struct {
	ni    *narinfo.NarInfo // nil: absent
	until time.Time
}

// Options are how caches are opened: TTLs of remembered lookups and the HTTP
// client's settings.
type Options struct {
	NegativeTTL time.Duration // narinfo-cache-negative-ttl
	PositiveTTL time.Duration // narinfo-cache-positive-ttl
	HTTP        HTTPOptions
}

var (
	registryMu sync.Mutex
	registry   = map[string]*Cache{}
)

// Open returns the process's Cache for rawURL (file://DIR, http://…,
// https://…, with optional ?priority=N and ?trusted=1), made on first use, so
// that every request shares what it remembers.
func Open(rawURL string, o Options) (*Cache, error) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if c, ok := registry[rawURL]; ok {
		c.mu.Lock()
		c.negTTL, c.posTTL = o.NegativeTTL, o.PositiveTTL
		c.mu.Unlock()
		return c, nil
	}
	c, err := NewCache(rawURL, o)
	if err != nil {
		return nil, err
	}
	registry[rawURL] = c
	return c, nil
}

// NewCache returns a Cache for rawURL of its own (see Open).
func NewCache(rawURL string, o Options) (*Cache, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("open cache %s: %w", rawURL, err)
	}
	b, err := newBackend(u, o.HTTP)
	if err != nil {
		return nil, err
	}
	c := NewCacheFrom(rawURL, b, o)
	q := u.Query()
	c.trusted = q.Get("trusted") == "1" || q.Get("trusted") == "true"
	if p := q.Get("priority"); p != "" {
		n, err := strconv.ParseInt(p, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("open cache %s: bad priority %q", rawURL, p)
		}
		c.priority, c.hasPriority = int(n), true
	}
	return c, nil
}

// NewCacheFrom returns a Cache named name over backend b.
func NewCacheFrom(name string, b Backend, o Options) *Cache {
	return &Cache{url: name, backend: b, negTTL: o.NegativeTTL, posTTL: o.PositiveTTL, known: map[string]remembered{}}
}

// URI is the cache as Nix names it in messages (its getUri): the URL
// without its parameters, and for http(s) without a trailing "/".
func (c *Cache) URI() string {
	u, _, _ := strings.Cut(c.url, "?")
	if strings.HasPrefix(u, "http://") || strings.HasPrefix(u, "https://") {
		u = strings.TrimRight(u, "/")
	}
	return u
}

// URL is the cache's URL as it was opened.
func (c *Cache) URL() string { return c.url }

// Info returns the cache's nix-cache-info, checked against storeDir. A cache
// without one is taken as Nix would a fresh one of its own store dir with
// the default priority.
func (c *Cache) Info(ctx context.Context, storeDir storepath.StoreDir) (*CacheInfo, error) {
	c.mu.Lock()
	info, err, until := c.info, c.infoErr, c.infoUntil
	c.mu.Unlock()
	if info == nil && (err == nil || time.Now().After(until)) {
		info, err = c.readInfo(ctx)
		if ctx.Err() != nil {
			return nil, err // not the cache's fault: not remembered
		}
		c.mu.Lock()
		c.info, c.infoErr, c.infoUntil, c.warned = info, err, time.Now().Add(disabledFor), false
		c.mu.Unlock()
	}
	if err != nil {
		return nil, err
	}
	if info.StoreDir != "" && info.StoreDir != storeDir.String() {
		return nil, fmt.Errorf("binary cache '%s' is for Nix stores with prefix '%s', not '%s'", c.url, info.StoreDir, storeDir)
	}
	return info, nil
}

func (c *Cache) readInfo(ctx context.Context) (*CacheInfo, error) {
	rc, err := c.backend.Get(ctx, "nix-cache-info")
	var info *CacheInfo
	switch {
	case errors.Is(err, ErrNotFound):
		if _, isFile := c.backend.(fileBackend); !isFile {
			return nil, fmt.Errorf("'%s' does not appear to be a binary cache", c.url)
		}
		info = &CacheInfo{Priority: DefaultPriority}
	case err != nil:
		return nil, err
	default:
		info, err = ParseCacheInfo(rc)
		rc.Close()
		if err != nil {
			return nil, fmt.Errorf("binary cache '%s': %w", c.url, err)
		}
	}
	if c.hasPriority {
		info.Priority = c.priority
	}
	return info, nil
}

// NarInfo returns the narinfo of p, or an error matching ErrNotFound when the
// cache does not have it. Answers are remembered for the TTLs.
func (c *Cache) NarInfo(ctx context.Context, p storepath.StorePath) (*narinfo.NarInfo, error) {
	hp := p.HashPart()
	now := time.Now()
	c.mu.Lock()
	r, ok := c.known[hp]
	c.mu.Unlock()
	if ok && now.Before(r.until) {
		if r.ni == nil || r.ni.StorePath != p {
			return nil, fmt.Errorf("narinfo %s in %s: %w", p, c.url, ErrNotFound)
		}
		return r.ni, nil
	}
	ni, err := c.fetchNarInfo(ctx, p)
	switch {
	case err == nil:
		c.remember(hp, remembered{ni: ni, until: now.Add(c.posTTL)})
	case errors.Is(err, ErrNotFound):
		c.remember(hp, remembered{until: now.Add(c.negTTL)})
	}
	return ni, err
}

func (c *Cache) remember(hp string, r remembered) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.known) >= MaxRemembered {
		clear(c.known)
	}
	c.known[hp] = r
}

func (c *Cache) fetchNarInfo(ctx context.Context, p storepath.StorePath) (*narinfo.NarInfo, error) {
	rc, err := c.backend.Get(ctx, p.HashPart()+".narinfo")
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, fmt.Errorf("narinfo %s in %s: %w", p, c.url, ErrNotFound)
		}
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, int64(MaxNarInfoSize)+1))
	if err != nil {
		return nil, fmt.Errorf("read narinfo %s from %s: %w", p, c.url, err)
	}
	if len(data) > MaxNarInfoSize {
		return nil, fmt.Errorf("read narinfo %s from %s: larger than %d bytes", p, c.url, MaxNarInfoSize)
	}
	ni, err := narinfo.ParseString(p.Dir(), string(data))
	if err != nil {
		return nil, fmt.Errorf("read narinfo %s from %s: %w", p, c.url, err)
	}
	if ni.StorePath != p {
		// A hash part that names another path: the cache does not have p.
		return nil, fmt.Errorf("narinfo %s in %s: %w (it describes %s)", p, c.url, ErrNotFound, ni.StorePath)
	}
	if !validName(ni.URL) {
		return nil, fmt.Errorf("read narinfo %s from %s: bad URL %q", p, c.url, ni.URL)
	}
	return ni, nil
}

// OpenNar opens the file a narinfo names (still compressed).
func (c *Cache) OpenNar(ctx context.Context, ni *narinfo.NarInfo) (io.ReadCloser, error) {
	rc, err := c.backend.Get(ctx, ni.URL)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("file '%s' does not exist in binary cache '%s'", ni.URL, c.url)
	}
	return rc, err
}

// firstWarning reports whether the cache's failure to answer has not been
// reported yet, and marks it reported: a cache that cannot be reached is
// reported once per minute, not for every path.
func (c *Cache) firstWarning() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.infoErr == nil || c.warned {
		return c.infoErr == nil
	}
	c.warned = true
	return true
}

// remote reports whether the cache is fetched over the network.
func (c *Cache) remote() bool {
	_, ok := c.backend.(*httpBackend)
	return ok
}

// fileURL is the full URL of a file of the cache.
func (c *Cache) fileURL(name string) string {
	if h, ok := c.backend.(*httpBackend); ok {
		return h.base + "/" + name
	}
	return c.url + "/" + name
}
