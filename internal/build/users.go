package build

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"cairn/internal/sandbox"
	"cairn/internal/substitute"
)

// Build identities. A daemon that is not root builds as itself (mapped to
// 1000/100 in the sandbox's user namespace). A root daemon gives each build
// ids of its own, from one of two pools, and never the same ids to two
// builds at once:
//
//	group pool  build-users-group: the members of the group (nixbld1…N). A
//	            build takes the first member whose lock, STATE/userpool/<uid>,
//	            it can flock; its gid is the group's, its supplementary groups
//	            the member's other groups (as Nix 2.8).
//	auto        auto-allocate-uids: id-count/65536 slots of 65536 ids from
//	            start-id, locked by STATE/userpool2/slot-<n> (as Nix 2.12+). A
//	            build uses the slot's first id, or all 65536 when the
//	            derivation requires the uid-range feature (it then runs as 0/0
//	            in the sandbox). Sandboxed builds get gid = uid; builds on the
//	            host get build-users-group's gid.
//
// The locks are Nix's, so Nix and Cairn daemons on one state dir never share
// a uid. When every id is busy a build waits for one. Users and groups are
// read from /etc/passwd and /etc/group (group members are not available
// through os/user); pools served by other NSS sources are not supported.

// idsPerSlot is the number of ids an auto-allocated slot holds: a uid-range
// build's whole range (Nix's maxIdsPerBuild).
const idsPerSlot = 1 << 16

// uidPollInterval is how often a build waiting for a uid looks again for
// one another process released (releases in this process wake it at once).
const uidPollInterval = time.Second

// Config is the daemon-wide part of the build settings: where build dirs go
// and how builds get their identities and cgroups. Unlike Options it is fixed
// for a Builder's life; no client changes it.
type Config struct {
	// BuildsDir holds the build dirs ("" means STATE/builds).
	BuildsDir string
	// BuildUsersGroup is build-users-group: with root, builds run as the
	// group's members. "" means none.
	BuildUsersGroup string
	// AutoAllocateUIDs is auto-allocate-uids: with root, builds run as ids
	// from [StartID, StartID+IDCount) (IDCount a multiple of 65536).
	AutoAllocateUIDs bool
	StartID, IDCount int64
	// NoCgroups is use-cgroups = false: builds get no cgroup of their own
	// even where the daemon could make one.
	NoCgroups bool
	// CgroupParent is the cgroup v2 directory build cgroups are made in;
	// "" means the daemon's own cgroup when it may write there (see
	// sandbox.DetectCgroup).
	CgroupParent string
	// SubstitutionJobs bounds the downloads from binary caches at once
	// (max-substitution-jobs); 0 means substitute.DefaultJobs.
	SubstitutionJobs int
	// ServeRecursive serves a recursive-nix build's daemon on ln (see
	// recursive.go) until ctx ends; nil means no recursive Nix.
	ServeRecursive func(ctx context.Context, ln net.Listener, rec *Recursion)
}

// ConfigFrom reads Config from settings as Nix names them.
func ConfigFrom(s Getter) Config {
	atoi := func(name string) int64 {
		n, _ := strconv.ParseInt(s.Get(name), 10, 64)
		return n
	}
	return Config{
		BuildUsersGroup:  s.Get("build-users-group"),
		AutoAllocateUIDs: s.Get("auto-allocate-uids") == "true",
		StartID:          atoi("start-id"),
		IDCount:          atoi("id-count"),
		NoCgroups:        s.Get("use-cgroups") == "false",
		SubstitutionJobs: substitute.JobsFrom(s),
	}
}

// userPool hands out build identities to a root daemon's builds.
type userPool struct {
	auto    bool
	group   string // build-users-group
	dir     string // STATE/userpool or STATE/userpool2
	startID int
	slots   int

	mu   sync.Mutex
	wake chan struct{} // closed when this process releases an identity
}

// newUserPool returns the pool cfg describes, or nil when builds use the
// daemon's own ids.
func newUserPool(cfg Config, stateDir string) (*userPool, error) {
	if os.Geteuid() != 0 || (cfg.BuildUsersGroup == "" && !cfg.AutoAllocateUIDs) {
		return nil, nil
	}
	p := &userPool{group: cfg.BuildUsersGroup, dir: filepath.Join(stateDir, "userpool"), wake: make(chan struct{})}
	if cfg.AutoAllocateUIDs {
		if cfg.StartID <= 0 || cfg.IDCount <= 0 || cfg.IDCount%idsPerSlot != 0 || cfg.StartID+cfg.IDCount > 1<<32-1 {
			return nil, fmt.Errorf("auto-allocate-uids: start-id %d and id-count %d do not make whole ranges of %d ids below 2^32-1",
				cfg.StartID, cfg.IDCount, idsPerSlot)
		}
		p.auto = true
		p.dir = filepath.Join(stateDir, "userpool2")
		p.startID, p.slots = int(cfg.StartID), int(cfg.IDCount/idsPerSlot)
	}
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		return nil, fmt.Errorf("build users: %w", err)
	}
	return p, nil
}

// buildUser is the identity one build holds until release.
type buildUser struct {
	uid, gid int
	count    int   // ids from uid on: 1, or 65536 for a uid-range build
	groups   []int // supplementary groups (group pool members), for builds on the host
	lock     *os.File
	pool     *userPool
}

// release gives the identity back.
func (u *buildUser) release() {
	u.lock.Close() // drops the flock
	p := u.pool
	p.mu.Lock()
	close(p.wake)
	p.wake = make(chan struct{})
	p.mu.Unlock()
}

// acquire takes a free identity with count ids, waiting for one while all
// are busy (waiting is called once, then). sandboxed says whether the build
// runs in a user namespace, where an auto-allocated slot brings its own gid.
func (p *userPool) acquire(ctx context.Context, count int, sandboxed bool, waiting func()) (*buildUser, error) {
	for said := false; ; said = true {
		p.mu.Lock()
		wake := p.wake
		p.mu.Unlock()
		u, err := p.tryAcquire(count, sandboxed)
		if u != nil || err != nil {
			return u, err
		}
		if !said && waiting != nil {
			waiting()
		}
		t := time.NewTimer(uidPollInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-wake:
		case <-t.C:
		}
		t.Stop()
	}
}

func (p *userPool) tryAcquire(count int, sandboxed bool) (*buildUser, error) {
	db, err := readUserDB()
	if err != nil {
		return nil, err
	}
	if p.auto {
		return p.tryAcquireSlot(db, count, sandboxed)
	}
	if count != 1 {
		return nil, errors.New("feature 'uid-range' requires the setting 'auto-allocate-uids' to be enabled")
	}
	g, ok := db.groups[p.group]
	if !ok {
		return nil, fmt.Errorf("the group '%s' specified in 'build-users-group' does not exist", p.group)
	}
	if len(g.members) == 0 {
		return nil, fmt.Errorf("the build users group '%s' has no members", p.group)
	}
	for _, name := range g.members {
		uid, ok := db.users[name]
		if !ok {
			return nil, fmt.Errorf("the user '%s' in the group '%s' does not exist", name, p.group)
		}
		if uid == os.Getuid() || uid == os.Geteuid() {
			return nil, fmt.Errorf("the Nix user should not be a member of '%s'", p.group)
		}
		lock, err := p.lock(strconv.Itoa(uid))
		if err != nil {
			return nil, err
		}
		if lock == nil {
			continue // another build's
		}
		u := &buildUser{uid: uid, gid: g.gid, count: 1, lock: lock, pool: p}
		for _, og := range db.groups {
			if og.gid != g.gid && og.has(name) {
				u.groups = append(u.groups, og.gid)
			}
		}
		return u, nil
	}
	return nil, nil
}

func (p *userPool) tryAcquireSlot(db *userDB, count int, sandboxed bool) (*buildUser, error) {
	for i := range p.slots {
		lock, err := p.lock("slot-" + strconv.Itoa(i))
		if err != nil {
			return nil, err
		}
		if lock == nil {
			continue
		}
		first := p.startID + i*idsPerSlot
		if name, ok := db.byUID[first]; ok {
			lock.Close()
			return nil, fmt.Errorf("auto-allocated UID %d clashes with existing user account '%s'", first, name)
		}
		u := &buildUser{uid: first, gid: first, count: count, lock: lock, pool: p}
		if !sandboxed {
			g, ok := db.groups[p.group]
			if !ok {
				lock.Close()
				return nil, fmt.Errorf("the group '%s' specified in 'build-users-group' does not exist", p.group)
			}
			u.gid = g.gid
		}
		return u, nil
	}
	return nil, nil
}

// lock opens and flocks STATE/userpool*/name, as Nix does; nil when another
// build holds it.
func (p *userPool) lock(name string) (*os.File, error) {
	path := filepath.Join(p.dir, name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening user lock '%s': %w", path, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, nil
		}
		return nil, fmt.Errorf("locking user lock '%s': %w", path, err)
	}
	return f, nil
}

// userDB is what a pool needs of /etc/passwd and /etc/group.
type userDB struct {
	users  map[string]int // name → uid
	byUID  map[int]string
	groups map[string]*groupEntry
}

type groupEntry struct {
	gid     int
	members []string
}

func (g *groupEntry) has(name string) bool {
	for _, m := range g.members {
		if m == name {
			return true
		}
	}
	return false
}

// maxUserDBLine bounds a line of /etc/passwd or /etc/group.
const maxUserDBLine = 1 << 20

var (
	userDBMu    sync.Mutex
	userDBCache *userDB
	userDBStamp [2]unix.Stat_t
)

// passwdFile and groupFile are the files readUserDB reads.
var passwdFile, groupFile = "/etc/passwd", "/etc/group"

// readUserDB reads /etc/passwd and /etc/group, again only when one changed.
func readUserDB() (*userDB, error) {
	var stamp [2]unix.Stat_t
	for i, f := range []string{passwdFile, groupFile} {
		if err := unix.Stat(f, &stamp[i]); err != nil {
			return nil, fmt.Errorf("build users: %s: %w", f, err)
		}
	}
	userDBMu.Lock()
	defer userDBMu.Unlock()
	if userDBCache != nil && sameFile(&stamp[0], &userDBStamp[0]) && sameFile(&stamp[1], &userDBStamp[1]) {
		return userDBCache, nil
	}
	db := &userDB{users: map[string]int{}, byUID: map[int]string{}, groups: map[string]*groupEntry{}}
	err := eachEntry(passwdFile, func(f []string) {
		if uid, err := strconv.Atoi(f[2]); err == nil {
			if _, dup := db.users[f[0]]; !dup {
				db.users[f[0]] = uid
			}
			if _, dup := db.byUID[uid]; !dup {
				db.byUID[uid] = f[0]
			}
		}
	})
	if err == nil {
		err = eachEntry(groupFile, func(f []string) {
			if gid, err := strconv.Atoi(f[2]); err == nil {
				if _, dup := db.groups[f[0]]; !dup {
					db.groups[f[0]] = &groupEntry{gid: gid, members: strings.FieldsFunc(f[3], func(r rune) bool { return r == ',' })}
				}
			}
		})
	}
	if err != nil {
		return nil, err
	}
	userDBCache, userDBStamp = db, stamp
	return db, nil
}

func sameFile(a, b *unix.Stat_t) bool {
	return a.Dev == b.Dev && a.Ino == b.Ino && a.Size == b.Size && a.Mtim == b.Mtim && a.Ctim == b.Ctim
}

// eachEntry calls f with the colon-separated fields of each line of path
// that has at least four.
func eachEntry(path string, f func([]string)) error {
	file, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("build users: %w", err)
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	sc.Buffer(make([]byte, 4096), maxUserDBLine)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || strings.HasPrefix(line, "+") || strings.HasPrefix(line, "-") {
			continue
		}
		if fields := strings.Split(line, ":"); len(fields) >= 4 {
			f(fields)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("build users: read %s: %w", path, err)
	}
	return nil
}

// killUser kills every process of uid (see sandbox.KillUser).
func killUser(uid int) error { return sandbox.KillUser(uid) }
