package remote_test

import (
	"io"

	"cairn/internal/wire"
)

func wireReader(r io.Reader) *wire.Reader { return wire.NewReader(r) }
func wireWriter(w io.Writer) *wire.Writer { return wire.NewWriter(w) }
