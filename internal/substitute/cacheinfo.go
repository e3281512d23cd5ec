package substitute

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// MaxCacheInfoSize bounds a nix-cache-info file.
const MaxCacheInfoSize = 64 << 10

// DefaultPriority is the priority of a cache whose nix-cache-info names none
// (Nix's BinaryCacheStore default).
const DefaultPriority = 50

// CacheInfo is the parsed nix-cache-info of a binary cache.
type CacheInfo struct {
	StoreDir      string // "" when not given
	WantMassQuery bool
	Priority      int
}

// ParseCacheInfo parses a nix-cache-info file as Nix 2.8 does: "Key: value"
// lines, unknown keys and lines without ": " ignored, a Priority that is not
// an integer ignored.
func ParseCacheInfo(r io.Reader) (*CacheInfo, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxCacheInfoSize+1))
	if err != nil {
		return nil, fmt.Errorf("parse nix-cache-info: %w", err)
	}
	if len(data) > MaxCacheInfoSize {
		return nil, fmt.Errorf("parse nix-cache-info: %w", errors.New("larger than 64 KiB"))
	}
	ci := &CacheInfo{Priority: DefaultPriority}
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	sc.Buffer(make([]byte, 0, 4096), MaxCacheInfoSize+1)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		key, value, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		switch key {
		case "StoreDir":
			ci.StoreDir = value
		case "WantMassQuery":
			ci.WantMassQuery = value == "1"
		case "Priority":
			if n, err := strconv.ParseInt(value, 10, 32); err == nil {
				ci.Priority = int(n)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("parse nix-cache-info: %w", err)
	}
	return ci, nil
}

// String returns ci as a nix-cache-info file.
func (ci *CacheInfo) String() string {
	var b strings.Builder
	if ci.StoreDir != "" {
		fmt.Fprintf(&b, "StoreDir: %s\n", ci.StoreDir)
	}
	mq := 0
	if ci.WantMassQuery {
		mq = 1
	}
	fmt.Fprintf(&b, "WantMassQuery: %d\nPriority: %d\n", mq, ci.Priority)
	return b.String()
}
