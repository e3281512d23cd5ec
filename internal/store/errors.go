package store

import (
	"errors"
	"fmt"

	"cairn/internal/storepath"
)

// Error kinds. Callers match them with errors.Is; the errors themselves carry the
// subject and the cause.
var (
	// ErrNotFound: the path is not valid in the store (or no path has the hash part).
	ErrNotFound = errors.New("not valid")
	// ErrHashMismatch: content does not match the hash, size or content address
	// it was declared with.
	ErrHashMismatch = errors.New("hash mismatch")
	// ErrInvalid: a request is malformed (bad name, references not allowed, …).
	ErrInvalid = errors.New("invalid request")
	// ErrUnsupported: the store or URL does not offer the operation (yet).
	ErrUnsupported = errors.New("not supported")
)

// NotValidError says that a path is not valid. It matches ErrNotFound and reads
// as Nix's message: "path '/nix/store/…' is not valid".
type NotValidError struct {
	Path storepath.StorePath
}

// NotValid returns the error for an invalid path p.
func NotValid(p storepath.StorePath) error { return &NotValidError{Path: p} }

func (e *NotValidError) Error() string { return fmt.Sprintf("path '%s' is not valid", e.Path) }

// Is makes errors.Is(err, ErrNotFound) true.
func (e *NotValidError) Is(target error) bool { return target == ErrNotFound }
