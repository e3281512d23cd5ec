package build

import (
	"slices"
	"strings"
	"testing"

	"cairn/internal/derivation"
	"cairn/internal/nixhash"
	"cairn/internal/sandbox"
	"cairn/internal/storepath"
)

// TestImpureEnvVars: a fixed-output derivation's impureEnvVars pass the
// daemon's values, from a plain attribute or from structured attributes
// (a list of strings there, as Nix's getStringsAttr wants); other
// derivations get none.
func TestImpureEnvVars(t *testing.T) {
	fixed := map[string]derivation.Output{"out": derivation.FixedOutput(storepath.StorePath{},
		nixhash.ContentAddress{Method: nixhash.Flat, Hash: nixhash.Sum(nixhash.SHA256, []byte("x"))})}
	getenv := func(name string) string {
		return map[string]string{"http_proxy": "http://proxy:3128", "no_proxy": ""}[name]
	}
	for _, c := range []struct {
		name    string
		outputs map[string]derivation.Output
		env     map[string]string
		want    map[string]string // variables the builder must get, with their values
		err     string
	}{
		{"plain", fixed, map[string]string{"impureEnvVars": "http_proxy no_proxy other"},
			map[string]string{"http_proxy": "http://proxy:3128", "no_proxy": "", "other": ""}, ""},
		{"structured", fixed, map[string]string{"__json": `{"impureEnvVars":["http_proxy","no_proxy"]}`},
			map[string]string{"http_proxy": "http://proxy:3128", "no_proxy": ""}, ""},
		{"structured, not a list", fixed, map[string]string{"__json": `{"impureEnvVars":"http_proxy"}`}, nil,
			"attribute 'impureEnvVars' of derivation 'f' must be a list of strings"},
		{"not fixed", map[string]derivation.Output{"out": derivation.DeferredOutput()},
			map[string]string{"impureEnvVars": "http_proxy"}, nil, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := &derivation.Derivation{Name: "f", Outputs: c.outputs, Env: c.env}
			e, err := MakeEnv(d, EnvParams{StoreDir: "/nix/store", BuildTop: "/build", Getenv: getenv})
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error %v, want %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for name, want := range c.want {
				if got, ok := e.Vars[name]; !ok || got != want {
					t.Errorf("%s = %q (set %v), want %q", name, got, ok, want)
				}
			}
			if c.want == nil {
				if _, ok := e.Vars["http_proxy"]; ok {
					t.Errorf("http_proxy passed to a derivation that is not fixed-output")
				}
			}
		})
	}
}

func TestParsePreBuildHook(t *testing.T) {
	binds, err := parsePreBuildHook("extra-sandbox-paths\n/a\n/b=/c\n\nextra-chroot-dirs\n/d=/e=f\n/ignored-no-newline")
	if err != nil {
		t.Fatal(err)
	}
	want := []sandbox.Bind{{Source: "/a", Target: "/a"}, {Source: "/c", Target: "/b"}, {Source: "/e=f", Target: "/d"}}
	if !slices.Equal(binds, want) {
		t.Errorf("binds %+v, want %+v", binds, want)
	}
	for out, msg := range map[string]string{"bogus\n": "unknown pre-build hook command 'bogus'", "extra-sandbox-paths\n/a\n\n\n": "unknown pre-build hook command ''"} {
		if _, err := parsePreBuildHook(out); err == nil || err.Error() != msg {
			t.Errorf("%q: error %v, want %q", out, err, msg)
		}
	}
}
