package sandbox

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

func TestLookNet(t *testing.T) {
	type lookCase struct {
		stack string
		tool  string // "" when an error is expected
		err   string
	}
	tests := []lookCase{
		{"bogus", "", "unknown stack"},
		{"/bin/true", "", "neither pasta nor slirp4netns"},
		{"/nonexistent/pasta", "", "no user-mode network stack found"},
		{"/nonexistent/slirp4netns", "", "no user-mode network stack found"},
	}
	if p, err := exec.LookPath("pasta"); err == nil {
		tests = append(tests, lookCase{"pasta", NetPasta, ""}, lookCase{p, NetPasta, ""}, lookCase{"auto", NetPasta, ""})
	}
	if p, err := exec.LookPath("slirp4netns"); err == nil {
		tests = append(tests, lookCase{"slirp4netns", NetSlirp4netns, ""}, lookCase{p, NetSlirp4netns, ""})
	}
	for _, tt := range tests {
		t.Run(tt.stack, func(t *testing.T) {
			n, err := LookNet(tt.stack, true)
			if tt.tool == "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("LookNet(%q) = %+v, %v; want an error saying %q", tt.stack, n, err, tt.err)
				}
				if strings.HasPrefix(tt.stack, "/nonexistent") && !errors.Is(err, ErrNoNet) {
					t.Errorf("LookNet(%q): %v does not wrap ErrNoNet", tt.stack, err)
				}
				return
			}
			if err != nil || n.Tool != tt.tool || !n.HostLoopback || n.Path == "" {
				t.Fatalf("LookNet(%q) = %+v, %v; want %s", tt.stack, n, err, tt.tool)
			}
		})
	}
}

func TestResolvConf(t *testing.T) {
	tests := []struct{ host, want string }{
		{"", "nameserver 10.0.2.3\n"},
		{"nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n", "nameserver 10.0.2.3\noptions edns0 trust-ad\nsearch .\n"},
		{"# comment\ndomain example.org\nnameserver ::1\nsortlist 10.0.0.0\n  search a b  ", "nameserver 10.0.2.3\ndomain example.org\nsearch a b\n"},
	}
	for _, tt := range tests {
		if got := string(ResolvConf([]byte(tt.host))); got != tt.want {
			t.Errorf("ResolvConf(%q) = %q, want %q", tt.host, got, tt.want)
		}
	}
}

func TestValidateNet(t *testing.T) {
	base := func() *Spec {
		return &Spec{Root: "/r", UID: 1000, GID: 100,
			UIDMap:  []IDMap{{Inside: 1000, Outside: 5, Count: 1}},
			GIDMap:  []IDMap{{Inside: 100, Outside: 5, Count: 1}},
			Command: Command{Path: "/bin/sh", Args: []string{"sh"}},
			Net:     &Net{Tool: NetPasta, Path: "/usr/bin/pasta"}}
	}
	tests := []struct {
		name   string
		modify func(*Spec)
		err    string
	}{
		{"ok", func(*Spec) {}, ""},
		{"unknown tool", func(s *Spec) { s.Net.Tool = "vde" }, `unknown network stack "vde"`},
		{"relative path", func(s *Spec) { s.Net.Path = "pasta" }, "network stack path"},
		{"relative dir", func(s *Spec) { s.Net.Dir = "tmp" }, "network stack dir"},
		{"pasta without a user namespace", func(s *Spec) { s.UIDMap, s.GIDMap = nil, nil }, "pasta needs a user namespace"},
		{"slirp4netns without a user namespace", func(s *Spec) {
			s.UIDMap, s.GIDMap = nil, nil
			s.Net = &Net{Tool: NetSlirp4netns, Path: "/usr/bin/slirp4netns"}
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := base()
			tt.modify(s)
			err := s.Validate()
			if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
				t.Errorf("Validate = %v, want %q", err, tt.err)
			}
		})
	}
}
