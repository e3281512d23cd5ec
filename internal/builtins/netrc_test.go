package builtins

import "testing"

func TestNetrc(t *testing.T) {
	text := "machine a.example login alice password pa\n" +
		"macdef init\ncd /pub\nbinary\n\n" +
		"machine B.example\n  login bob\n  password pb account x\n" +
		"default login anon password guest\n"
	n, err := parseNetrc(text)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ host, login, password string }{
		{"a.example", "alice", "pa"},
		{"b.example", "bob", "pb"},
		{"c.example", "anon", "guest"},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			l, p, ok := n.lookup(tt.host)
			if !ok || l != tt.login || p != tt.password {
				t.Errorf("%q %q %v", l, p, ok)
			}
		})
	}
	for _, bad := range []string{"machine", "login x", "machine a frobnicate b"} {
		if _, err := parseNetrc(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
	if _, _, ok := (netrc{{machine: "a"}}).lookup("b"); ok {
		t.Error("no default, yet a match")
	}
}

func FuzzNetrc(f *testing.F) {
	f.Add("machine a login b password c\ndefault login x password y\n")
	f.Add("macdef x\nstuff\n\nmachine m")
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseNetrc(s)
		if err != nil {
			return
		}
		n.lookup("a")
	})
}
