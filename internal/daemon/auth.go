package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/user"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"cairn/internal/config"
)

// Peer is who is on the other end of a connection, as the kernel says.
type Peer struct {
	// Known says the credentials below came from the kernel (SO_PEERCRED);
	// false for --stdio, where nobody can tell.
	Known    bool
	PID      int32
	UID, GID uint32
}

// PeerCred returns the credentials of the process that opened a Unix socket
// connection.
func PeerCred(c *net.UnixConn) (Peer, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return Peer{}, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Peer{}, fmt.Errorf("peer credentials: %w", err)
	}
	if serr != nil {
		return Peer{}, fmt.Errorf("peer credentials: %w", serr)
	}
	return Peer{Known: true, PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}, nil
}

// Decision is what an AuthHook decided about a peer.
type Decision struct {
	// User is the peer's user name (its uid in decimal when it has none).
	User    string
	UID     uint32
	Trusted bool
	// Allowed says the peer may connect at all. A refused peer gets Refusal
	// as the error of its handshake.
	Allowed bool
	Refusal string
}

// AuthHook decides who a peer is and what it may do. An error means the
// decision could not be made (the connection is refused with it).
type AuthHook func(ctx context.Context, peer Peer) (Decision, error)

// Directory answers the questions the policy asks about users and groups.
type Directory interface {
	// UserName returns the name of uid; ok is false when it has none.
	UserName(uid uint32) (name string, ok bool)
	// GroupName returns the name of gid; ok is false when it has none.
	GroupName(gid uint32) (name string, ok bool)
	// InGroup reports whether user is a member of group (by the group
	// database's member list, or because it is the user's primary group).
	InGroup(user, group string) bool
}

// SystemDirectory is the Directory of this machine (os/user: the C library,
// or /etc/passwd and /etc/group without cgo).
type SystemDirectory struct{}

func (SystemDirectory) UserName(uid uint32) (string, bool) {
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return "", false
	}
	return u.Username, true
}

func (SystemDirectory) GroupName(gid uint32) (string, bool) {
	g, err := user.LookupGroupId(strconv.FormatUint(uint64(gid), 10))
	if err != nil {
		return "", false
	}
	return g.Name, true
}

func (SystemDirectory) InGroup(name, group string) bool {
	g, err := user.LookupGroup(group)
	if err != nil {
		return false
	}
	u, err := user.Lookup(name)
	if err != nil {
		return false
	}
	if u.Gid == g.Gid {
		return true
	}
	ids, err := u.GroupIds()
	return err == nil && slices.Contains(ids, g.Gid)
}

// Policy is nix-daemon's rule for who may connect and who is trusted:
//
//	trusted = the user matches TrustedUsers
//	refused = (not trusted and the user does not match AllowedUsers)
//	          or the user's primary group is BuildUsersGroup
//
// A list entry matches as Nix's matchUser does: "*" matches everyone, a user
// name that user, "@group" the members of group and those whose primary group
// it is.
type Policy struct {
	TrustedUsers    []string
	AllowedUsers    []string
	BuildUsersGroup string
	Directory       Directory // nil means SystemDirectory
}

// PolicyFromSettings reads trusted-users, allowed-users and build-users-group.
func PolicyFromSettings(s *config.Settings) *Policy {
	return &Policy{
		TrustedUsers:    s.Strings("trusted-users"),
		AllowedUsers:    s.Strings("allowed-users"),
		BuildUsersGroup: s.Get("build-users-group"),
	}
}

// Authorize is the Policy as an AuthHook.
func (p *Policy) Authorize(ctx context.Context, peer Peer) (Decision, error) {
	if !peer.Known {
		return Decision{}, errors.New("authorize: peer credentials unknown")
	}
	dir := p.Directory
	if dir == nil {
		dir = SystemDirectory{}
	}
	name, ok := dir.UserName(peer.UID)
	if !ok {
		name = strconv.FormatUint(uint64(peer.UID), 10)
	}
	group, ok := dir.GroupName(peer.GID)
	if !ok {
		group = strconv.FormatUint(uint64(peer.GID), 10)
	}
	d := Decision{User: name, UID: peer.UID}
	d.Trusted = matchUser(dir, name, group, p.TrustedUsers)
	d.Allowed = d.Trusted || matchUser(dir, name, group, p.AllowedUsers)
	if p.BuildUsersGroup != "" && group == p.BuildUsersGroup {
		d.Allowed = false
	}
	if !d.Allowed {
		d.Trusted = false
		d.Refusal = fmt.Sprintf("user '%s' is not allowed to connect to the Nix daemon", name)
	}
	return d, nil
}

func matchUser(dir Directory, name, group string, list []string) bool {
	for _, e := range list {
		if e == "*" || e == name {
			return true
		}
	}
	for _, e := range list {
		if g, ok := strings.CutPrefix(e, "@"); ok && g != "" {
			if g == group || dir.InGroup(name, g) {
				return true
			}
		}
	}
	return false
}

// clientKey is the context key of the connection's Client.
type clientKey struct{}

// Client is who a connection serves and what it may do. It lives in the
// connection's context; operations read trust from there.
type Client struct {
	Decision
	Peer Peer
	// ID numbers the connection (in the daemon's log).
	ID uint64
}

// WithClient returns ctx carrying c.
func WithClient(ctx context.Context, c *Client) context.Context {
	return context.WithValue(ctx, clientKey{}, c)
}

// ClientFrom returns the Client in ctx, or an untrusted anonymous one.
func ClientFrom(ctx context.Context) *Client {
	if c, ok := ctx.Value(clientKey{}).(*Client); ok {
		return c
	}
	return &Client{}
}
