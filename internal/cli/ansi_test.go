package cli

import (
	"bytes"
	"testing"
)

func TestANSIStripper(t *testing.T) {
	in := "error: \x1b[35;1m1\x1b[0m dependencies of derivation '\x1b[35;1m/nix/store/x.drv\x1b[0m' failed"
	want := "error: 1 dependencies of derivation '/nix/store/x.drv' failed"
	for split := 0; split <= len(in); split++ {
		var out bytes.Buffer
		a := &ansiStripper{w: &out}
		a.Write([]byte(in[:split]))
		a.Write([]byte(in[split:]))
		if out.String() != want {
			t.Fatalf("split at %d: %q, want %q", split, out.String(), want)
		}
	}
}
