package gc

import (
	"strings"
	"testing"
)

// FuzzStorePathsIn checks the environ scanner: every match is a piece of the
// input that starts with the store dir and a lower-case letter or digit, and
// running it on the matches alone finds them again.
func FuzzStorePathsIn(f *testing.F) {
	for _, s := range []string{
		"PATH=/nix/store/ab3li50xq0nl4q5lxdyinb8w8y13my9s-f/bin:/usr/bin\x00HOME=/root\x00",
		"/nix/store/", "/nix/store/A", "x=/nix/store/abc?=+-._Z/nix/store/d", "/nix/store//nix/store/a",
	} {
		f.Add(s)
	}
	const prefix = "/nix/store/"
	f.Fuzz(func(t *testing.T, s string) {
		got := storePathsIn(s, prefix)
		for _, m := range got {
			if !strings.HasPrefix(m, prefix) || len(m) == len(prefix) || !strings.Contains(s, m) {
				t.Fatalf("match %q of %q", m, s)
			}
			c := m[len(prefix)]
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z') {
				t.Fatalf("match %q starts badly", m)
			}
			if again := storePathsIn(m, prefix); len(again) != 1 || again[0] != m {
				t.Fatalf("match %q found again as %q", m, again)
			}
		}
	})
}
