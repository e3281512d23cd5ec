package store

import (
	"context"
	"fmt"
	"strings"

	"cairn/internal/nixhash"
	"cairn/internal/storepath"
)

// DrvOutput names an output of a content-addressed derivation by the
// derivation's hash modulo: "sha256:<base16 hash>!<output name>".
type DrvOutput struct {
	DrvHash nixhash.Hash
	Output  string
}

// ParseDrvOutput parses the "<algo>:<hash>!<output>" form.
func ParseDrvOutput(s string) (DrvOutput, error) {
	h, out, ok := strings.Cut(s, "!")
	if !ok || out == "" {
		return DrvOutput{}, fmt.Errorf("parse derivation output id %q: want <hash>!<output>", s)
	}
	hash, err := nixhash.Parse(h)
	if err != nil {
		return DrvOutput{}, fmt.Errorf("parse derivation output id %q: %w", s, err)
	}
	return DrvOutput{DrvHash: hash, Output: out}, nil
}

// HashString is the hash part as the database keeps it: "sha256:<base16>".
func (o DrvOutput) HashString() string { return o.DrvHash.Format(nixhash.Base16, true) }

func (o DrvOutput) String() string { return o.HashString() + "!" + o.Output }

// Realisation says which store path realises a derivation output, with the
// realisations of other outputs it was built from.
type Realisation struct {
	ID         DrvOutput
	OutPath    storepath.StorePath
	Signatures []string
	Dependent  map[DrvOutput]storepath.StorePath
}

// RealisationStore keeps realisations (Nix's ca-derivations tables).
type RealisationStore interface {
	// RegisterRealisation records r; registering it again adds its signatures.
	// Its OutPath, and the realisations it depends on, must already be known.
	RegisterRealisation(ctx context.Context, r *Realisation) error
	// QueryRealisation returns the realisation of id, or nil if there is none.
	QueryRealisation(ctx context.Context, id DrvOutput) (*Realisation, error)
}
