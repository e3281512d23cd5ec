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
	index := make(map[storepath.StorePath]int, len(items))
	for i, p := range items {
		index[p] = i
	}
	// state: 0 not visited, 1 on the current walk (a parent), 2 done.
	state := make([]uint8, len(items))
	sorted := make([]storepath.StorePath, 0, len(items))
	var children []int
	var visit func(i int, parent storepath.StorePath) error
	visit = func(i int, parent storepath.StorePath) error {
		switch state[i] {
		case 1:
			return fmt.Errorf("cycle detected in the references of '%s' from '%s'", items[i], parent)
		case 2:
			return nil
		}
		state[i] = 1
		// The references inside items, in Nix's order: items is sorted, so
		// their indexes sort the same way.
		start := len(children)
		for _, c := range refs(items[i]) {
			if j, ok := index[c]; ok && j != i {
				children = append(children, j)
			}
		}
		mine := children[start:]
		slices.Sort(mine)
		mine = slices.Compact(mine)
		for k := range mine {
			if err := visit(mine[k], items[i]); err != nil {
				return err
			}
		}
		children = children[:start]
		sorted = append(sorted, items[i])
		state[i] = 2
		return nil
	}
	for i := range items {
		if err := visit(i, storepath.StorePath{}); err != nil {
			return nil, err
		}
	}
	slices.Reverse(sorted)
	return sorted, nil
}
