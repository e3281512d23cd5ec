package store

import (
	"slices"
	"strings"
	"testing"

	"cairn/internal/storepath"
)

func TestTopoSort(t *testing.T) {
	dir := storepath.StoreDir("/nix/store")
	mk := func(c byte, name string) storepath.StorePath {
		p, err := dir.FromBase(strings.Repeat(string(c), 32) + "-" + name)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	a, b, c, d, x := mk('a', "a"), mk('b', "b"), mk('c', "c"), mk('d', "d"), mk('x', "outside")
	tests := []struct {
		name  string
		paths []storepath.StorePath
		refs  map[storepath.StorePath][]storepath.StorePath
		want  []storepath.StorePath
		err   string
	}{
		{"no references", []storepath.StorePath{d, b, a, c}, nil, []storepath.StorePath{d, c, b, a}, ""},
		{"chain", []storepath.StorePath{a, b, c},
			map[storepath.StorePath][]storepath.StorePath{a: {b}, b: {c}}, []storepath.StorePath{a, b, c}, ""},
		{"referrers first, self and outside ignored, duplicates",
			[]storepath.StorePath{c, a, b, d, a},
			map[storepath.StorePath][]storepath.StorePath{d: {a, d, x, c, a}, c: {b}, b: {a}},
			[]storepath.StorePath{d, c, b, a}, ""},
		{"cycle", []storepath.StorePath{a, b},
			map[storepath.StorePath][]storepath.StorePath{a: {b}, b: {a}}, nil, "cycle detected"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := TopoSort(tt.paths, func(p storepath.StorePath) []storepath.StorePath { return tt.refs[p] })
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %v\nwant %v", got, tt.want)
			}
		})
	}
}
