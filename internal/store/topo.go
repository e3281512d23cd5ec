package store

import (
	"fmt"
	"slices"

	"cairn/internal/storepath"
)

// TopoSort orders paths so that every path comes before the paths it refers to
// (referrers first), exactly as Nix's topoSortPaths does: a depth-first walk
// over the paths in Nix's order, visiting references in Nix's order, ignoring
// references outside paths and self-references. A cycle is an error.
func TopoSort(paths []storepath.StorePath, refs func(storepath.StorePath) []storepath.StorePath) ([]storepath.StorePath, error) {
	items := slices.Clone(paths)
	storepath.SortPaths(items)
	items = slices.Compact(items)
	in := make(map[storepath.StorePath]bool, len(items))
	for _, p := range items {
		in[p] = true
	}
	sorted := make([]storepath.StorePath, 0, len(items))
	visited := make(map[storepath.StorePath]bool, len(items))
	parents := map[storepath.StorePath]bool{}
	var visit func(p, parent storepath.StorePath) error
	visit = func(p, parent storepath.StorePath) error {
		if parents[p] {
			return fmt.Errorf("cycle detected in the references of '%s' from '%s'", p, parent)
		}
		if visited[p] {
			return nil
		}
		visited[p] = true
		parents[p] = true
		children := slices.Clone(refs(p))
		storepath.SortPaths(children)
		for _, c := range children {
			if c != p && in[c] {
				if err := visit(c, p); err != nil {
					return err
				}
			}
		}
		sorted = append(sorted, p)
		delete(parents, p)
		return nil
	}
	for _, p := range items {
		if err := visit(p, storepath.StorePath{}); err != nil {
			return nil, err
		}
	}
	slices.Reverse(sorted)
	return sorted, nil
}
