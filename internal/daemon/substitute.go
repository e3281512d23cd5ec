package daemon

import (
	"errors"
	"fmt"
	"sync"

	"cairn/internal/build"
	"cairn/internal/protocol"
	"cairn/internal/storepath"
	"cairn/internal/substitute"
)

// substConfig is the connection's substitution settings: the daemon's
// substituters, or the client's where the daemon trusts them (settings.go),
// trusted-public-keys, require-sigs; none with substitute = false or when
// SetOptions' useSubstitutes is false (nix-daemon 2.8 applies that field
// for every client).
func (c *conn) substConfig() substitute.Config {
	cfg := substitute.ConfigFrom(&c.settings, c.log.Warn)
	if c.optionsSent() && !c.options.UseSubstitutes {
		cfg.Caches = nil
	}
	return cfg
}

// substCounts are the numbers of a request's CopyPaths activity.
type substCounts struct {
	mu                      sync.Mutex
	done, expected, running int
	narSize                 uint64
}

// Substituting starts what Nix 2.8 shows for a substitution: a Substitute
// activity (fields: path, cache URI) and under it a CopyPath activity
// "copying path '…' from '…'" (fields: path, cache URI, "local") whose
// Progress results carry the bytes; the request's CopyPaths activity counts
// the paths and expects their NAR bytes.
func (l *buildLogger) Substituting(p storepath.StorePath, cacheURL string, narSize uint64) substitute.Activity {
	l.counts.mu.Lock()
	l.counts.expected++
	l.counts.running++
	l.counts.narSize += narSize
	d, e, r, total := l.counts.done, l.counts.expected, l.counts.running, l.counts.narSize
	l.counts.mu.Unlock()
	log := l.c.log
	log.result(l.copyPaths, protocol.ResSetExpected, protocol.IntField(uint64(protocol.ActCopyPath)), protocol.IntField(total))
	log.result(l.copyPaths, protocol.ResProgress, protocol.IntField(uint64(d)), protocol.IntField(uint64(e)), protocol.IntField(uint64(r)), protocol.IntField(0))
	sub := log.startChild(protocol.LvlError, protocol.ActSubstitute, "", 0,
		protocol.StringField(p.String()), protocol.StringField(cacheURL))
	cp := log.startChild(protocol.LvlInfo, protocol.ActCopyPath, fmt.Sprintf("copying path '%s' from '%s'", p, cacheURL), sub,
		protocol.StringField(p.String()), protocol.StringField(cacheURL), protocol.StringField("local"))
	return &substActivity{l: l, sub: sub, cp: cp}
}

// Warn logs a skipped cache or a failed substitution as a warning.
func (l *buildLogger) Warn(msg string) { l.c.log.Warn(msg) }

type substActivity struct {
	l       *buildLogger
	sub, cp uint64
}

func (a *substActivity) Progress(done, expected uint64) {
	a.l.c.log.result(a.cp, protocol.ResProgress, protocol.IntField(done), protocol.IntField(expected), protocol.IntField(0), protocol.IntField(0))
}

// Downloading starts Nix's FileTransfer activity "downloading '…'" (fields:
// the URL) under the Substitute activity; its Progress results carry the
// file's bytes.
func (a *substActivity) Downloading(url string) substitute.Activity {
	log := a.l.c.log
	id := log.startChild(protocol.LvlTalkative, protocol.ActFileTransfer, fmt.Sprintf("downloading '%s'", url), a.sub,
		protocol.StringField(url))
	return &transferActivity{c: a.l.c, id: id}
}

type transferActivity struct {
	c  *conn
	id uint64
}

func (t *transferActivity) Progress(done, expected uint64) {
	t.c.log.result(t.id, protocol.ResProgress, protocol.IntField(done), protocol.IntField(expected), protocol.IntField(0), protocol.IntField(0))
}

func (t *transferActivity) Done() { t.c.log.StopActivity(t.id) }

func (a *substActivity) Done() {
	l := a.l
	l.c.log.StopActivity(a.cp)
	l.c.log.StopActivity(a.sub)
	l.counts.mu.Lock()
	l.counts.done++
	l.counts.running--
	d, e, r := l.counts.done, l.counts.expected, l.counts.running
	l.counts.mu.Unlock()
	l.c.log.result(l.copyPaths, protocol.ResProgress, protocol.IntField(uint64(d)), protocol.IntField(uint64(e)), protocol.IntField(uint64(r)), protocol.IntField(0))
}

// ensurePaths makes opaque paths valid, substituting what is missing; err
// matches substitute.ErrNoSubstitute for a path no cache has.
func (c *conn) ensurePaths(paths []storepath.StorePath) error {
	b, err := c.builder()
	if err != nil {
		return err
	}
	log := newBuildLogger(c)
	defer log.stop()
	return b.EnsurePaths(c.ctx, paths, c.buildOptions(), log)
}

// missingError is Nix's message for an opaque path that cannot be made
// valid: msg when no cache has it, the substitution's error otherwise.
func missingError(err error, msg string) error {
	if errors.Is(err, substitute.ErrNoSubstitute) {
		return errors.New(msg)
	}
	return err
}

// substitutable answers QuerySubstitutablePathInfos: the paths some cache
// has, with what its narinfo says (signatures unchecked, as Nix).
func (c *conn) substitutable(paths []storepath.StorePath) ([]protocol.SubstitutablePathInfo, error) {
	return c.substitutableIn(c.substConfig(), paths)
}

// substitutablePaths answers QuerySubstitutablePaths and HasSubstitutes:
// the paths a cache that wants mass queries has.
func (c *conn) substitutablePaths(paths []storepath.StorePath) ([]storepath.StorePath, error) {
	infos, err := c.substitutableIn(c.substConfig().MassQuery(c.ctx, c.s.Store.StoreDir()), paths)
	var out []storepath.StorePath
	for _, i := range infos {
		out = append(out, i.Path)
	}
	return out, err
}

func (c *conn) substitutableIn(cfg substitute.Config, paths []storepath.StorePath) ([]protocol.SubstitutablePathInfo, error) {
	return substitute.Substitutable(c.ctx, cfg, paths)
}

var _ build.Logger = (*buildLogger)(nil)
var _ substitute.Logger = (*buildLogger)(nil)

// validPaths returns which of paths are valid.
func (c *conn) validPaths(paths []storepath.StorePath) (map[storepath.StorePath]bool, error) {
	out := map[storepath.StorePath]bool{}
	for _, p := range paths {
		ok, err := c.isValid(p)
		if err != nil {
			return nil, err
		}
		out[p] = ok
	}
	return out, nil
}
