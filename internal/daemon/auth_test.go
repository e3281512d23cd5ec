package daemon

import (
	"context"
	"slices"
	"testing"
)

// fakeDirectory is a user and group database for tests.
type fakeDirectory struct {
	users   map[uint32]string
	groups  map[uint32]string
	members map[string][]string // group → members (besides primary)
}

func (d fakeDirectory) UserName(uid uint32) (string, bool)  { n, ok := d.users[uid]; return n, ok }
func (d fakeDirectory) GroupName(gid uint32) (string, bool) { n, ok := d.groups[gid]; return n, ok }
func (d fakeDirectory) InGroup(user, group string) bool {
	return slices.Contains(d.members[group], user)
}

func TestPolicy(t *testing.T) {
	dir := fakeDirectory{
		users:   map[uint32]string{0: "root", 1000: "alice", 1001: "bob", 1002: "carol", 30001: "nixbld1"},
		groups:  map[uint32]string{0: "root", 100: "users", 200: "wheel", 30000: "nixbld"},
		members: map[string][]string{"wheel": {"bob"}},
	}
	peer := func(uid, gid uint32) Peer { return Peer{Known: true, UID: uid, GID: gid, PID: 42} }
	type want struct {
		user             string
		allowed, trusted bool
	}
	for _, tc := range []struct {
		name             string
		trusted, allowed []string
		peer             Peer
		want             want
	}{
		{"root default", []string{"root"}, []string{"*"}, peer(0, 0), want{"root", true, true}},
		{"user default", []string{"root"}, []string{"*"}, peer(1000, 100), want{"alice", true, false}},
		{"trusted by name", []string{"root", "alice"}, []string{"*"}, peer(1000, 100), want{"alice", true, true}},
		{"trusted by primary group", []string{"@users"}, []string{}, peer(1000, 100), want{"alice", true, true}},
		{"trusted by membership", []string{"@wheel"}, []string{}, peer(1001, 100), want{"bob", true, true}},
		{"not a member", []string{"@wheel"}, []string{"root"}, peer(1002, 100), want{"carol", false, false}},
		{"allowed by group", []string{"root"}, []string{"@wheel"}, peer(1001, 100), want{"bob", true, false}},
		{"not allowed", []string{"root"}, []string{"alice"}, peer(1001, 100), want{"bob", false, false}},
		{"trusted overrides allowed", []string{"bob"}, []string{"alice"}, peer(1001, 100), want{"bob", true, true}},
		{"trusted star", []string{"*"}, []string{}, peer(1002, 100), want{"carol", true, true}},
		{"build user refused", []string{"*"}, []string{"*"}, peer(30001, 30000), want{"nixbld1", false, false}},
		{"unknown uid", []string{"root"}, []string{"*"}, peer(4242, 4242), want{"4242", true, false}},
		{"unknown uid by number", []string{"4242"}, []string{}, peer(4242, 4242), want{"4242", true, true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &Policy{TrustedUsers: tc.trusted, AllowedUsers: tc.allowed, BuildUsersGroup: "nixbld", Directory: dir}
			d, err := p.Authorize(context.Background(), tc.peer)
			if err != nil {
				t.Fatal(err)
			}
			got := want{d.User, d.Allowed, d.Trusted}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
			if !d.Allowed && d.Refusal != "user '"+d.User+"' is not allowed to connect to the Nix daemon" {
				t.Errorf("refusal %q", d.Refusal)
			}
		})
	}
	if _, err := (&Policy{}).Authorize(context.Background(), Peer{}); err == nil {
		t.Error("unknown peer authorized")
	}
}
