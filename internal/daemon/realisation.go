package daemon

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"cairn/internal/build"
	"cairn/internal/derivation"
	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
)

// caFeature is the experimental feature Nix requires for realisations.
const caFeature = "ca-derivations"

func (c *conn) requireFeature(name string) error {
	if slices.Contains(c.s.Settings.Strings("experimental-features"), name) {
		return nil
	}
	return fmt.Errorf("experimental Nix feature '%s' is disabled; use '--extra-experimental-features %s' to override", name, name)
}

// registerDrvOutput records a realisation. nix-daemon 2.8 takes one from any
// client; here only a trusted one may, since a realisation decides which path
// every later build of that output resolves to.
func (c *conn) registerDrvOutput(q *protocol.RegisterDrvOutputRequest) error {
	c.start()
	if err := c.requireFeature(caFeature); err != nil {
		return err
	}
	if !ClientFrom(c.ctx).Trusted {
		return errors.New("you are not privileged to register realisations")
	}
	rs, err := capability[store.RealisationStore](c, "realisations")
	if err != nil {
		return err
	}
	r := &store.Realisation{OutPath: q.OutPath, Signatures: q.Signatures}
	switch {
	case !q.DrvPath.IsZero():
		r.ID, err = c.drvOutput(q.DrvPath, q.OutputName)
	case q.JSON != "":
		r.ID, err = store.ParseDrvOutput(q.Realisation.ID)
		for _, k := range slices.Sorted(maps.Keys(q.DependentRealisations)) {
			if err != nil {
				break
			}
			var dep store.DrvOutput
			var p storepath.StorePath
			if dep, err = store.ParseDrvOutput(k); err == nil {
				p, err = c.s.Store.StoreDir().FromBase(q.DependentRealisations[k])
			}
			if r.Dependent == nil {
				r.Dependent = map[store.DrvOutput]storepath.StorePath{}
			}
			r.Dependent[dep] = p
		}
	default:
		r.ID, err = store.ParseDrvOutput(q.ID)
	}
	if err != nil {
		return err
	}
	if err := rs.RegisterRealisation(c.ctx, r); err != nil {
		return err
	}
	return c.reply(nil)
}

// queryRealisation answers in the form the client's version reads.
func (c *conn) queryRealisation(q *protocol.QueryRealisationRequest) error {
	c.start()
	var id store.DrvOutput
	var err error
	if !q.DrvPath.IsZero() {
		id, err = c.drvOutput(q.DrvPath, q.OutputName)
	} else {
		id, err = store.ParseDrvOutput(q.ID)
	}
	if err != nil {
		return err
	}
	var r *store.Realisation
	if rs, ok := c.s.Store.(store.RealisationStore); ok {
		if r, err = rs.QueryRealisation(c.ctx, id); err != nil {
			return err
		}
	}
	reply := &protocol.RealisationsReply{}
	if r != nil {
		reply.Found, reply.OutPath, reply.Signatures = true, r.OutPath, r.Signatures
		reply.Paths = []storepath.StorePath{r.OutPath}
		pr := protocol.Realisation{ID: r.ID.String(), OutPath: r.OutPath, Signatures: r.Signatures}
		for dep, p := range r.Dependent {
			if pr.DependentRealisations == nil {
				pr.DependentRealisations = map[string]string{}
			}
			pr.DependentRealisations[dep.String()] = p.Base()
		}
		reply.JSON = []string{string(pr.JSON())}
	}
	return c.reply(reply)
}

// drvOutput names an output of the derivation at drvPath by its hash modulo,
// as Nix keys realisations.
func (c *conn) drvOutput(drvPath storepath.StorePath, output string) (store.DrvOutput, error) {
	st, ok := c.s.Store.(*local.Store)
	if !ok {
		return store.DrvOutput{}, errNotSupported("realisations by derivation path")
	}
	d, err := build.ReadDerivation(st, drvPath)
	if err != nil {
		return store.DrvOutput{}, err
	}
	resolve := func(p storepath.StorePath) (*derivation.Derivation, error) { return build.ReadDerivation(st, p) }
	h, err := derivation.HashModulo(d, true, resolve)
	if err != nil {
		return store.DrvOutput{}, err
	}
	hash, ok := h.Outputs[output]
	if !ok {
		return store.DrvOutput{}, fmt.Errorf("derivation '%s' has no output '%s'", drvPath, output)
	}
	return store.DrvOutput{DrvHash: hash, Output: output}, nil
}
