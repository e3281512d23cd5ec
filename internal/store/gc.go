package store

import (
	"context"

	"cairn/internal/storepath"
)

// A TempRooter makes paths temporary GC roots for as long as its owner lives
// (a daemon connection, a process): Nix's addTempRoot. A store that adds a
// path asks the TempRooter its context carries before the path's files reach
// the store dir, so that a garbage collector running meanwhile keeps them.
type TempRooter interface {
	AddTempRoot(ctx context.Context, p storepath.StorePath) error
}

type tempRooterKey struct{}

// WithTempRooter returns ctx carrying t.
func WithTempRooter(ctx context.Context, t TempRooter) context.Context {
	return context.WithValue(ctx, tempRooterKey{}, t)
}

// TempRooterFrom returns the TempRooter ctx carries, or nil.
func TempRooterFrom(ctx context.Context) TempRooter {
	t, _ := ctx.Value(tempRooterKey{}).(TempRooter)
	return t
}
