package daemon

import (
	"context"
	"strings"
	"testing"

	"cairn/internal/build"
	"cairn/internal/derivation"
	"cairn/internal/nixhash"
	"cairn/internal/protocol"
	"cairn/internal/store"
)

// TestRealisations registers and queries realisations in each form the
// protocol has had: an id and a path (1.27–1.30), Realisation JSON (1.31–1.37),
// and a derivation path with an output name (the 1.38 feature).
func TestRealisations(t *testing.T) {
	td := newTestDaemon(t, [2]string{"experimental-features", "nix-command ca-derivations"})
	cl := td.mustDial(protocol.ClientConfig{Version: protocol.V(1, 30)})
	data := fileNAR(t, "realised")
	info := narInfo(t, "realised", data)
	cl.mustCall(&protocol.AddToStoreNarRequest{Info: *info, DontCheckSigs: true}, data)

	id := store.DrvOutput{DrvHash: nixhash.Sum(nixhash.SHA256, []byte("a drv")), Output: "out"}
	other := store.DrvOutput{DrvHash: nixhash.Sum(nixhash.SHA256, []byte("another")), Output: "out"}

	// 1.30: an id and a path.
	cl.mustCall(&protocol.RegisterDrvOutputRequest{ID: id.String(), Realisation: protocol.Realisation{OutPath: info.Path}}, nil)
	rep := cl.mustCall(&protocol.QueryRealisationRequest{ID: id.String()}, nil).(*protocol.RealisationsReply)
	if len(rep.Paths) != 1 || rep.Paths[0] != info.Path {
		t.Fatalf("1.30 query: %+v", rep)
	}
	rep = cl.mustCall(&protocol.QueryRealisationRequest{ID: other.String()}, nil).(*protocol.RealisationsReply)
	if len(rep.Paths) != 0 {
		t.Fatalf("1.30 query of an unknown output: %+v", rep)
	}

	// 1.31–1.37: JSON, here with a dependency on the first and a signature.
	cl = td.mustDial(protocol.ClientConfig{Version: protocol.Nix28})
	real := protocol.Realisation{ID: other.String(), OutPath: info.Path, Signatures: []string{"k:sig"},
		DependentRealisations: map[string]string{id.String(): info.Path.Base()}}
	cl.mustCall(&protocol.RegisterDrvOutputRequest{JSON: string(real.JSON()), Realisation: real}, nil)
	rep = cl.mustCall(&protocol.QueryRealisationRequest{ID: other.String()}, nil).(*protocol.RealisationsReply)
	if len(rep.JSON) != 1 || rep.JSON[0] != string(real.JSON()) {
		t.Fatalf("1.34 query:\n got %q\nwant %q", rep.JSON, real.JSON())
	}

	// A conflicting realisation is refused with Nix's words.
	data2 := fileNAR(t, "elsewhere")
	info2 := narInfo(t, "elsewhere", data2)
	cl.mustCall(&protocol.AddToStoreNarRequest{Info: *info2, DontCheckSigs: true}, data2)
	bad := protocol.Realisation{ID: id.String(), OutPath: info2.Path}
	if _, err := cl.call(&protocol.RegisterDrvOutputRequest{JSON: string(bad.JSON()), Realisation: bad}, nil); err == nil ||
		!strings.Contains(err.Error(), "but we already have another one locally") {
		t.Fatalf("conflicting realisation: %v", err)
	}

	// 1.38 with the feature: a derivation path and an output name, keyed by
	// the derivation's hash modulo.
	drv, err := derivation.ParseJSON(td.cfg.StoreDir, []byte(`{"outputs":{"out":{}},"inputSrcs":[],"inputDrvs":{},
		"system":"x86_64-linux","builder":"/bin/sh","args":[],"env":{"name":"ca","out":""}}`), "ca")
	if err != nil {
		t.Fatal(err)
	}
	drvPath, err := build.AddDerivation(context.Background(), td.st, drv)
	if err != nil {
		t.Fatal(err)
	}
	h, err := derivation.HashModulo(drv, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	cl = td.mustDial(protocol.ClientConfig{Version: protocol.V(1, 38), Features: protocol.LatestFeatures})
	cl.mustCall(&protocol.RegisterDrvOutputRequest{DrvPath: drvPath, OutputName: "out",
		Realisation: protocol.Realisation{OutPath: info2.Path, Signatures: []string{"k:2"}}}, nil)
	rep = cl.mustCall(&protocol.QueryRealisationRequest{DrvPath: drvPath, OutputName: "out"}, nil).(*protocol.RealisationsReply)
	if !rep.Found || rep.OutPath != info2.Path || len(rep.Signatures) != 1 {
		t.Fatalf("1.38 query: %+v", rep)
	}
	old := store.DrvOutput{DrvHash: h.Outputs["out"], Output: "out"}
	rep = td.mustDial(protocol.ClientConfig{Version: protocol.Nix28}).mustCall(&protocol.QueryRealisationRequest{ID: old.String()}, nil).(*protocol.RealisationsReply)
	if len(rep.JSON) != 1 || !strings.Contains(rep.JSON[0], info2.Path.Base()) {
		t.Fatalf("the 1.38 realisation under its id %s: %+v", old, rep)
	}

	// An untrusted client may query but not register.
	td.setDecision(Decision{User: "someone", Allowed: true})
	cl = td.mustDial(protocol.ClientConfig{Version: protocol.Nix28})
	if _, err := cl.call(&protocol.RegisterDrvOutputRequest{JSON: string(bad.JSON()), Realisation: bad}, nil); err == nil ||
		!strings.Contains(err.Error(), "not privileged") {
		t.Fatalf("untrusted register: %v", err)
	}
	rep = cl.mustCall(&protocol.QueryRealisationRequest{ID: id.String()}, nil).(*protocol.RealisationsReply)
	if len(rep.JSON) != 1 {
		t.Fatalf("untrusted query: %+v", rep)
	}
}

// TestRealisationsNeedFeature: without ca-derivations, registering fails as in Nix.
func TestRealisationsNeedFeature(t *testing.T) {
	td := newTestDaemon(t)
	cl := td.mustDial(protocol.ClientConfig{Version: protocol.Nix28})
	id := store.DrvOutput{DrvHash: nixhash.Sum(nixhash.SHA256, []byte("x")), Output: "out"}
	real := protocol.Realisation{ID: id.String(), OutPath: narInfo(t, "x", fileNAR(t, "x")).Path}
	_, err := cl.call(&protocol.RegisterDrvOutputRequest{JSON: string(real.JSON()), Realisation: real}, nil)
	if err == nil || !strings.Contains(err.Error(), "experimental Nix feature 'ca-derivations' is disabled") {
		t.Fatalf("register without the feature: %v", err)
	}
	rep := cl.mustCall(&protocol.QueryRealisationRequest{ID: id.String()}, nil).(*protocol.RealisationsReply)
	if len(rep.JSON) != 0 {
		t.Fatalf("query: %+v", rep)
	}
}
