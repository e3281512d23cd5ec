package storepath

import (
	"errors"
	"strings"
	"testing"
)

const validBase = "7rjj86a15146cq1d3qy068lml7n8ykzm-hello-2.12"

func TestParse(t *testing.T) {
	p, err := Parse("/nix/store/" + validBase)
	if err != nil {
		t.Fatal(err)
	}
	checks := map[string][2]string{
		"Dir":      {string(p.Dir()), "/nix/store"},
		"Base":     {p.Base(), validBase},
		"HashPart": {p.HashPart(), "7rjj86a15146cq1d3qy068lml7n8ykzm"},
		"Name":     {p.Name(), "hello-2.12"},
		"String":   {p.String(), "/nix/store/" + validBase},
	}
	for k, v := range checks {
		if v[0] != v[1] {
			t.Errorf("%s = %q, want %q", k, v[0], v[1])
		}
	}
	if p.IsDerivation() {
		t.Error("IsDerivation of a non-drv path")
	}
	q, err := StoreDir("/nix/store").FromBase(validBase)
	if err != nil || q != p {
		t.Errorf("FromBase = %v, %v; want %v", q, err, p)
	}
	// Non-default store dirs work the same way.
	r, err := StoreDir("/gnu/store").Parse("/gnu/store/" + validBase)
	if err != nil || r.Dir() != "/gnu/store" || r.Base() != validBase {
		t.Errorf("Parse in /gnu/store = %v, %v", r, err)
	}
}

func TestParseInvalid(t *testing.T) {
	tests := []struct{ name, in string }{
		{"empty", ""},
		{"relative", validBase},
		{"no name", "/nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm"},
		{"empty name", "/nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-"},
		{"short hash", "/nix/store/7rjj86a15146cq1d3qy068lml7n8ykz-hello"},
		{"bad hash char", "/nix/store/7rjj86a15146cq1d3qy068lml7n8ykze-hello"},
		{"upper hash", "/nix/store/7RJJ86A15146CQ1D3QY068LML7N8YKZM-hello"},
		{"bad name char", "/nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-hel lo"},
		{"slash in name", "/nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-hello/bin"},
		{"dot", "/nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-."},
		{"dotdot", "/nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-.."},
		{"dot dash", "/nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-.-x"},
		{"long name", "/nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-" + strings.Repeat("x", 212)},
		{"unclean dir", "/nix//store/" + validBase},
		{"trailing slash", "/nix/store/" + validBase + "/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Parse(tt.in); !errors.Is(err, ErrInvalid) {
				t.Errorf("Parse(%q) error = %v, want ErrInvalid", tt.in, err)
			}
		})
	}
	if _, err := StoreDir("/nix/store").Parse("/gnu/store/" + validBase); !errors.Is(err, ErrInvalid) {
		t.Errorf("Parse in the wrong store dir: %v", err)
	}
	if _, err := Parse("/nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-" + strings.Repeat("x", 211)); err != nil {
		t.Errorf("a 211-character name is allowed: %v", err)
	}
}

func TestToStorePath(t *testing.T) {
	d := DefaultStoreDir
	p, rest, err := d.ToStorePath("/nix/store/" + validBase + "/bin/hello")
	if err != nil || p.Base() != validBase || rest != "bin/hello" {
		t.Errorf("ToStorePath = %v, %q, %v", p, rest, err)
	}
	if _, _, err := d.ToStorePath("/usr/bin"); err == nil {
		t.Error("ToStorePath outside the store succeeded")
	}
}

func FuzzParse(f *testing.F) {
	f.Add("/nix/store/" + validBase)
	f.Add("/gnu/store/" + validBase + ".drv")
	f.Add("/nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-.-x")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := Parse(s)
		if err != nil {
			return
		}
		if p.String() != s {
			t.Fatalf("String() = %q, want %q", p.String(), s)
		}
		q, err := p.Dir().FromBase(p.Base())
		if err != nil || q != p {
			t.Fatalf("FromBase(Base()) = %v, %v; want %v", q, err, p)
		}
		if p.Dir().String()+"/"+p.HashPart()+"-"+p.Name() != s {
			t.Fatalf("parts of %q do not add up", s)
		}
	})
}

func BenchmarkParse(b *testing.B) {
	s := "/nix/store/" + validBase
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(s); err != nil {
			b.Fatal(err)
		}
	}
}
