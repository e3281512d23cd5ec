package cli

import (
	"os"
	"testing"
)

// TestMain keeps the tests off the default substituter, https://cache.nixos.org/:
// a machine without network may drop the packets rather than refuse them,
// and a lookup would then wait for the system's connect timeout. Tests that
// substitute name their own caches with --option.
//
// It also keeps root's builds off the nixbld users (build-users-group's
// default for root): the daemon package's tests build as them, and a
// daemon kills every process of a build user it takes, so two test
// binaries sharing those uids would kill each other's builds.
func TestMain(m *testing.M) {
	if _, ok := os.LookupEnv("NIX_CONFIG"); !ok {
		os.Setenv("NIX_CONFIG", "substituters =\nbuild-users-group =")
	}
	os.Exit(m.Run())
}
