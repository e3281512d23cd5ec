package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"cairn/internal/testutil/nixtest"
)

const derivationShowNix = `
let
  mk = attrs: derivation ({ system = "x86_64-linux"; builder = "/bin/sh"; } // attrs);
  multi = mk { name = "multi"; outputs = [ "out" "dev" ]; };
  fixed = mk { name = "fixed"; outputHashMode = "recursive"; outputHash = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="; };
in mk {
  name = "top";
  args = [ "-c" "echo \"${multi.dev}\"\n\t\\ ${fixed}" ];
  src = builtins.toFile "src.txt" "hello";
  m = multi;
}
`

func runCairn(t *testing.T, args ...string) ([]byte, error) {
	t.Helper()
	root := NewRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.Bytes(), err
}

// TestDerivationShowNix compares `cairn derivation show` with `nix show-derivation`
// 2.8 (plain and -r) on derivations nix-instantiate wrote to a throwaway store, read
// from the store's real directory and from a copy elsewhere.
func TestDerivationShowNix(t *testing.T) {
	nixtest.Require(t, "nix-instantiate", "nix")
	s := nixtest.NewStore(t)
	expr := filepath.Join(t.TempDir(), "drv.nix")
	if err := os.WriteFile(expr, []byte(derivationShowNix), 0o644); err != nil {
		t.Fatal(err)
	}
	drvPath := s.Run(t, nil, "nix-instantiate", expr)
	file := filepath.Join(s.Root, drvPath)
	copyPath := filepath.Join(t.TempDir(), "top.drv")
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(copyPath, data, 0o644); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		cairn   []string
		nixArgs []string
	}{
		{"store file", []string{file}, []string{drvPath}},
		{"copy elsewhere", []string{copyPath}, []string{drvPath}},
		{"recursive", []string{"-r", file}, []string{"-r", drvPath}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want, err := nixtest.Output(nil, "nix", append([]string{"--store", s.URL(), "show-derivation"}, tt.nixArgs...)...)
			if err != nil {
				t.Fatal(err)
			}
			got, err := runCairn(t, append([]string{"derivation", "show"}, tt.cairn...)...)
			if err != nil {
				t.Fatalf("cairn derivation show: %v", err)
			}
			var gotV, wantV any
			if err := json.Unmarshal(got, &gotV); err != nil {
				t.Fatalf("cairn output is not JSON: %v\n%s", err, got)
			}
			if err := json.Unmarshal(want, &wantV); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(gotV, wantV) {
				t.Errorf("JSON values differ:\n got %s\nwant %s", got, want)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("bytes differ:\n got %q\nwant %q", got, want)
			}
		})
	}
}

func TestDerivationShowErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.drv")
	if err := os.WriteFile(bad, []byte(`Derive([("out"`), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"missing file", []string{filepath.Join(dir, "nope.drv")}, "no such file"},
		{"bad drv", []string{bad}, "offset"},
		{"bad store dir", []string{"--store-dir", "relative", bad}, "store dir"},
		{"no args", nil, "requires at least 1 arg"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := runCairn(t, append([]string{"derivation", "show"}, tt.args...)...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v, want %q", err, tt.want)
			}
		})
	}
}
