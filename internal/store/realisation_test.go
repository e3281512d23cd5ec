package store

import (
	"strings"
	"testing"
)

func TestParseDrvOutput(t *testing.T) {
	const hash = "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"
	for _, c := range []struct {
		in, want, err string
	}{
		{in: hash + "!out", want: "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad!out"},
		{in: "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad!dev", want: "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad!dev"},
		{in: hash, err: "want <hash>!<output>"},
		{in: hash + "!", err: "want <hash>!<output>"},
		{in: "sha256:xyz!out", err: "parse derivation output id"},
		{in: "!out", err: "parse derivation output id"},
	} {
		got, err := ParseDrvOutput(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParseDrvOutput(%q) = %v, %v; want error %q", c.in, got, err, c.err)
			}
			continue
		}
		if err != nil || got.String() != c.want {
			t.Errorf("ParseDrvOutput(%q) = %v, %v; want %s", c.in, got, err, c.want)
		}
	}
}

// FuzzParseDrvOutput: whatever parses prints in the base16 form and parses back
// to the same value.
func FuzzParseDrvOutput(f *testing.F) {
	f.Add("sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad!out")
	f.Add("sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s!dev")
	f.Add("sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg==!out")
	f.Fuzz(func(t *testing.T, s string) {
		o, err := ParseDrvOutput(s)
		if err != nil {
			return
		}
		back, err := ParseDrvOutput(o.String())
		if err != nil || back != o {
			t.Fatalf("%q → %q → %v, %v", s, o.String(), back, err)
		}
	})
}
