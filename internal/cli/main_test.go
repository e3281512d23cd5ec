package cli

import (
	"os"
	"testing"
)

// TestMain keeps the tests off the default substituter, https://cache.nixos.org/:
// a machine without network may drop the packets rather than refuse them,
// and a lookup would then wait for the system's connect timeout. Tests that
// substitute name their own caches with --option.
func TestMain(m *testing.M) {
	if _, ok := os.LookupEnv("NIX_CONFIG"); !ok {
		os.Setenv("NIX_CONFIG", "substituters =")
	}
	os.Exit(m.Run())
}
