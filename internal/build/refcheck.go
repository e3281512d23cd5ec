package build

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"cairn/internal/derivation"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
)

// outputChecks are the reference and size limits of one output, from
// allowedReferences, allowedRequisites, disallowedReferences and
// disallowedRequisites (env, as whitespace-separated lists), or from
// __structuredAttrs' outputChecks.<output> (also maxSize and
// maxClosureSize).
type outputChecks struct {
	ignoreSelfRefs                                           bool
	maxSize, maxClosureSize                                  *uint64
	allowedRefs, allowedReqs, disallowedRefs, disallowedReqs *[]string
}

// checkReferences applies each output's checks as Nix 2.8's checkOutputs
// does, before anything is registered.
func checkReferences(ctx context.Context, st *local.Store, drv *derivation.Derivation, drvPath storepath.StorePath, infos []*store.PathInfo) error {
	byName := map[string]*store.PathInfo{}
	byPath := map[storepath.StorePath]*store.PathInfo{}
	for _, info := range infos {
		byName[outputName(drvPath, info.Path)] = info
		byPath[info.Path] = info
	}
	var structured map[string]json.RawMessage
	if text, ok := drv.Env["__json"]; ok {
		if err := json.Unmarshal([]byte(text), &structured); err != nil {
			return fmt.Errorf("structured attributes of '%s': %w", drvPath, err)
		}
	}
	for _, name := range sortedKeys(byName) {
		info := byName[name]
		var checks outputChecks
		if structured != nil {
			var all map[string]map[string]json.RawMessage
			if raw, ok := structured["outputChecks"]; !ok {
				continue
			} else if err := json.Unmarshal(raw, &all); err != nil {
				return fmt.Errorf("attribute 'outputChecks' of derivation '%s': %w", drvPath, err)
			}
			oc, ok := all[name]
			if !ok {
				continue
			}
			for key, dst := range map[string]**uint64{"maxSize": &checks.maxSize, "maxClosureSize": &checks.maxClosureSize} {
				if raw, ok := oc[key]; ok {
					var n uint64
					if err := json.Unmarshal(raw, &n); err != nil {
						return fmt.Errorf("attribute '%s' of derivation '%s': %w", key, drvPath, err)
					}
					*dst = &n
				}
			}
			for _, f := range []struct {
				key string
				dst **[]string
			}{{"allowedReferences", &checks.allowedRefs}, {"allowedRequisites", &checks.allowedReqs},
				{"disallowedReferences", &checks.disallowedRefs}, {"disallowedRequisites", &checks.disallowedReqs}} {
				raw, ok := oc[f.key]
				if !ok {
					continue
				}
				var list []string
				if err := json.Unmarshal(raw, &list); err != nil {
					return fmt.Errorf("attribute '%s' of derivation '%s' must be a list of strings", f.key, drvPath)
				}
				*f.dst = &list
			}
		} else {
			checks.ignoreSelfRefs = true
			attr := func(key string) *[]string {
				if v, ok := drv.Env[key]; ok {
					list := strings.Fields(v)
					return &list
				}
				return nil
			}
			checks.allowedRefs, checks.allowedReqs = attr("allowedReferences"), attr("allowedRequisites")
			checks.disallowedRefs, checks.disallowedReqs = attr("disallowedReferences"), attr("disallowedRequisites")
		}
		if err := applyChecks(ctx, st, drvPath, info, byName, byPath, &checks); err != nil {
			return err
		}
	}
	return nil
}

func applyChecks(ctx context.Context, st *local.Store, drvPath storepath.StorePath, info *store.PathInfo,
	byName map[string]*store.PathInfo, byPath map[storepath.StorePath]*store.PathInfo, checks *outputChecks) error {
	if checks.maxSize != nil && info.NarSize > *checks.maxSize {
		return fmt.Errorf("path '%s' is too large at %s bytes; limit is %s bytes",
			hl(info.Path.String()), hl(fmt.Sprint(info.NarSize)), hl(fmt.Sprint(*checks.maxSize)))
	}
	closure := func() ([]storepath.StorePath, uint64, error) { return outputClosure(ctx, st, info.Path, byPath) }
	if checks.maxClosureSize != nil {
		_, size, err := closure()
		if err != nil {
			return err
		}
		if size > *checks.maxClosureSize {
			return fmt.Errorf("closure of path '%s' is too large at %s bytes; limit is %s bytes",
				hl(info.Path.String()), hl(fmt.Sprint(size)), hl(fmt.Sprint(*checks.maxClosureSize)))
		}
	}
	checkRefs := func(value *[]string, allowed, recursive bool) error {
		if value == nil {
			return nil
		}
		spec := map[storepath.StorePath]bool{}
		for _, s := range *value {
			if p, err := st.StoreDir().Parse(s); err == nil {
				spec[p] = true
			} else if o, ok := byName[s]; ok {
				spec[o.Path] = true
			} else {
				return fmt.Errorf("derivation contains an illegal reference specifier '%s'", hl(s))
			}
		}
		used := info.References
		if recursive {
			c, _, err := closure()
			if err != nil {
				return err
			}
			used = c
			if checks.ignoreSelfRefs {
				used = slices.DeleteFunc(slices.Clone(used), func(p storepath.StorePath) bool { return p == info.Path })
			}
		}
		var bad []storepath.StorePath
		for _, p := range used {
			if spec[p] != allowed {
				bad = append(bad, p)
			}
		}
		if len(bad) == 0 {
			return nil
		}
		storepath.SortPaths(bad)
		var sb strings.Builder
		for _, p := range bad {
			sb.WriteString("\n  " + p.String())
		}
		return fmt.Errorf("output '%s' is not allowed to refer to the following paths:%s", hl(info.Path.String()), hl(sb.String()))
	}
	for _, c := range []struct {
		v                  *[]string
		allowed, recursive bool
	}{{checks.allowedRefs, true, false}, {checks.allowedReqs, true, true}, {checks.disallowedRefs, false, false}, {checks.disallowedReqs, false, true}} {
		if err := checkRefs(c.v, c.allowed, c.recursive); err != nil {
			return err
		}
	}
	return nil
}

// outputClosure is the closure of an output not registered yet, and its
// size: other new outputs are followed through their infos, valid paths
// through the store.
func outputClosure(ctx context.Context, st *local.Store, p storepath.StorePath, byPath map[storepath.StorePath]*store.PathInfo) ([]storepath.StorePath, uint64, error) {
	done := map[storepath.StorePath]bool{}
	var size uint64
	var valid []storepath.StorePath
	todo := []storepath.StorePath{p}
	for len(todo) > 0 {
		q := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		if done[q] {
			continue
		}
		info, ok := byPath[q]
		if !ok {
			valid = append(valid, q)
			continue
		}
		done[q] = true
		size += info.NarSize
		todo = append(todo, info.References...)
	}
	if len(valid) > 0 {
		closure, err := st.QueryClosure(ctx, valid, false)
		if err != nil {
			return nil, 0, err
		}
		infos, err := st.QueryPathInfos(ctx, closure)
		if err != nil {
			return nil, 0, err
		}
		for _, info := range infos {
			if !done[info.Path] {
				done[info.Path] = true
				size += info.NarSize
			}
		}
	}
	out := make([]storepath.StorePath, 0, len(done))
	for q := range done {
		out = append(out, q)
	}
	storepath.SortPaths(out)
	return out, size, nil
}
