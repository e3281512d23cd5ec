package substitute

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzCacheInfo parses arbitrary nix-cache-info files: never a panic, and
// what parses prints to text that parses to the same.
func FuzzCacheInfo(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/nix-cache-info.*")
	for _, s := range seeds {
		data, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(data))
	}
	f.Add("Priority: x\nStoreDir: a: b\nWantMassQuery: 0\n")
	f.Fuzz(func(t *testing.T, s string) {
		ci, err := ParseCacheInfo(strings.NewReader(s))
		if err != nil {
			return
		}
		again, err := ParseCacheInfo(strings.NewReader(ci.String()))
		if err != nil {
			t.Fatal(err)
		}
		if *again != *ci {
			t.Fatalf("round trip: %+v became %+v", ci, again)
		}
	})
}

func TestParseCacheInfo(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       CacheInfo
	}{
		{"nixos", "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n", CacheInfo{"/nix/store", true, 40}},
		{"defaults", "", CacheInfo{"", false, DefaultPriority}},
		{"bad priority ignored", "Priority: high\nWantMassQuery: yes\n", CacheInfo{"", false, DefaultPriority}},
		{"crlf", "StoreDir: /nix/store\r\nPriority: 10\r\n", CacheInfo{"/nix/store", false, 10}},
		{"unknown keys", "Foo: bar\nnonsense\nPriority: -3\n", CacheInfo{"", false, -3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseCacheInfo(strings.NewReader(tc.text))
			if err != nil {
				t.Fatal(err)
			}
			if *got != tc.want {
				t.Errorf("got %+v, want %+v", *got, tc.want)
			}
		})
	}
	if _, err := ParseCacheInfo(strings.NewReader(strings.Repeat("x", MaxCacheInfoSize+1))); err == nil {
		t.Error("oversized nix-cache-info accepted")
	}
}
