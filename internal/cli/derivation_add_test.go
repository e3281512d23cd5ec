package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cairn/internal/testutil/nixtest"
)

// TestDerivationAdd adds nix show-derivation JSON and .drv files written by
// Nix 2.8 and checks that the paths come out as nix-instantiate made them.
func TestDerivationAdd(t *testing.T) {
	nixtest.Require(t, "nix-instantiate", "nix")
	ref := nixtest.NewStore(t)
	expr := `let a = derivation { name = "a"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo a > $out"]; outputs = ["out" "dev"]; };
	in derivation { name = "b"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "cat ${a.dev} > $out"]; passAsFile = ["x"]; x = "y"; }`
	drv := ref.Run(t, nil, "nix-instantiate", "-E", expr)
	js := ref.Run(t, nil, "nix", "--extra-experimental-features", "nix-command", "show-derivation", "-r", drv)
	dir := t.TempDir()
	jsonFile := filepath.Join(dir, "b.json")
	if err := os.WriteFile(jsonFile, []byte(js), 0o644); err != nil {
		t.Fatal(err)
	}
	add := func(storeRoot string, args ...string) (string, error) {
		root := NewRoot()
		var out, errb bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&errb)
		root.SetArgs(append([]string{"--store", "local?root=" + storeRoot, "derivation", "add"}, args...))
		err := root.Execute()
		return strings.TrimSpace(out.String()), err
	}
	got, err := add(filepath.Join(dir, "s1"), jsonFile)
	if err != nil || got != drv {
		t.Fatalf("derivation add JSON: %q %v, want %s", got, err, drv)
	}
	// The .drv file itself, its input beside it (as in a store dir).
	got, err = add(filepath.Join(dir, "s2"), filepath.Join(ref.Root, drv))
	if err != nil || got != drv {
		t.Fatalf("derivation add .drv: %q %v, want %s", got, err, drv)
	}
	// A single derivation object without output paths.
	single := `{"name":"c","outputs":{"out":{}},"inputSrcs":[],"inputDrvs":{},"system":"x86_64-linux","builder":"/bin/sh","args":[],"env":{"builder":"/bin/sh","name":"c","out":"","system":"x86_64-linux"}}`
	singleFile := filepath.Join(dir, "c.json")
	os.WriteFile(singleFile, []byte(single), 0o644)
	want := ref.Run(t, nil, "nix-instantiate", "-E", `derivation { name = "c"; system = "x86_64-linux"; builder = "/bin/sh"; }`)
	got, err = add(filepath.Join(dir, "s3"), singleFile)
	if err != nil || got != want {
		t.Fatalf("derivation add single: %q %v, want %s", got, err, want)
	}
}
