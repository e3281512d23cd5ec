package derivation

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"cairn/internal/storepath"
	"cairn/internal/testutil/nixtest"
)

var record = flag.Bool("record", false, "rewrite testdata/golden from nix-instantiate (differential test)")

// nixCases are the attributes of testdata/cases.nix.
var nixCases = []string{
	"simple", "multi", "dependent",
	"fixedFlatSha256", "fixedRecSha256", "fixedFlatSha1", "fixedRecSha1", "fixedFlatSha512",
	"fixedRecMd5", "fixedFlatMd5", "usesFixed", "usesUsesFixed",
	"escapes", "control", "toFile", "pathSrc", "passAsFile", "structured", "noArgs",
	"floating", "floatingFlat", "impure", "deferred", "deferredDeep", "usesImpure",
}

// nixStore is a throwaway Nix store with a logical store dir, for nix-instantiate.
type nixStore struct {
	root string
	dir  storepath.StoreDir
}

func (s *nixStore) url() string {
	u := "local?root=" + s.root
	if s.dir != storepath.DefaultStoreDir {
		u += "&store=" + string(s.dir)
	}
	return u
}

func (s *nixStore) nix(t *testing.T, tool string, args ...string) []byte {
	t.Helper()
	full := append([]string{"--store", s.url(), "--option", "extra-experimental-features", "ca-derivations impure-derivations"}, args...)
	out, err := nixtest.Output(nil, tool, full...)
	if err != nil {
		t.Fatalf("%s %s: %v", tool, strings.Join(full, " "), err)
	}
	return out
}

// readFile reads a store path's file from the chroot store.
func (s *nixStore) readFile(p storepath.StorePath) ([]byte, error) {
	data, err := os.ReadFile(filepath.Join(s.root, p.String()))
	if os.IsNotExist(err) {
		data, err = os.ReadFile(filepath.Join(s.root, "nix/store", p.Base()))
	}
	return data, err
}

func (s *nixStore) resolver(t *testing.T) Resolver {
	return func(p storepath.StorePath) (*Derivation, error) {
		data, err := s.readFile(p)
		if err != nil {
			return nil, err
		}
		return Parse(s.dir, data, drvName(p))
	}
}

func drvName(p storepath.StorePath) string {
	return strings.TrimSuffix(p.Name(), storepath.DrvExtension)
}

// TestNixDifferential instantiates testdata/cases.nix with nix-instantiate 2.8 and
// checks, for each derivation: the .drv Nix wrote parses and prints back
// byte-identical, validates, has the .drv path Cairn computes, gets the same output
// paths and env from FillOutputs (hashDerivationModulo), and WriteJSON prints what
// `nix show-derivation` prints, byte for byte. It runs in the default store dir and
// in /cairn/store. With -record it rewrites testdata/golden.
func TestNixDifferential(t *testing.T) {
	nixtest.Require(t, "nix-instantiate", "nix")
	casesFile, err := filepath.Abs("testdata/cases.nix")
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []storepath.StoreDir{storepath.DefaultStoreDir, "/cairn/store"} {
		t.Run(strings.ReplaceAll(string(dir), "/", "_"), func(t *testing.T) {
			s := &nixStore{root: filepath.Join(t.TempDir(), "root"), dir: dir}
			cache := new(HashCache)
			for _, attr := range nixCases {
				t.Run(attr, func(t *testing.T) {
					out := strings.TrimSpace(string(s.nix(t, "nix-instantiate", casesFile, "-A", attr)))
					drvPath, err := dir.Parse(out)
					if err != nil {
						t.Fatal(err)
					}
					raw, err := s.readFile(drvPath)
					if err != nil {
						t.Fatal(err)
					}
					nixJSON := s.nix(t, "nix", "show-derivation", drvPath.String())
					checkNixDrv(t, dir, drvPath, raw, nixJSON, cache, s.resolver(t))
					if *record && dir == storepath.DefaultStoreDir {
						writeGolden(t, drvPath, raw, nixJSON)
					}
				})
			}
		})
	}
}

// checkNixDrv checks one derivation Nix wrote (raw) and showed (nixJSON).
func checkNixDrv(t *testing.T, dir storepath.StoreDir, drvPath storepath.StorePath, raw, nixJSON []byte, cache *HashCache, resolve Resolver) {
	t.Helper()
	d, err := Parse(dir, raw, drvName(drvPath))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if got := d.Bytes(); !bytes.Equal(got, raw) {
		t.Errorf("Bytes differ from the .drv Nix wrote:\n got %q\nwant %q", got, raw)
	}
	if err := d.Validate(dir); err != nil {
		t.Errorf("Validate: %v", err)
	}
	if p, err := d.StorePath(dir); err != nil || p != drvPath {
		t.Errorf("StorePath = %v, %v; want %v", p, err, drvPath)
	}

	// Forget the outputs, as the derivation primop starts, and compute them again.
	blank, err := Parse(dir, raw, d.Name)
	if err != nil {
		t.Fatal(err)
	}
	for name, o := range blank.Outputs {
		if o.Kind() == InputAddressed || o.Kind() == CAFixed {
			o.Path = storepath.StorePath{}
		}
		blank.Outputs[name] = o
		blank.Env[name] = "garbage"
	}
	if err := blank.FillOutputs(dir, cache, resolve); err != nil {
		t.Fatalf("FillOutputs: %v", err)
	}
	if got := blank.Bytes(); !bytes.Equal(got, raw) {
		t.Errorf("after FillOutputs:\n got %s\nwant %s", got, raw)
	}

	var buf bytes.Buffer
	if err := WriteJSON(&buf, map[storepath.StorePath]*Derivation{drvPath: d}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), nixJSON) {
		t.Errorf("WriteJSON differs from nix show-derivation:\n got %s\nwant %s", buf.Bytes(), nixJSON)
	}
	drvs, err := ParseShowJSON(dir, nixJSON)
	if err != nil {
		t.Fatalf("ParseShowJSON: %v", err)
	}
	if !reflect.DeepEqual(drvs[drvPath], d) {
		t.Errorf("ParseShowJSON:\n got %+v\nwant %+v", drvs[drvPath], d)
	}
}

func writeGolden(t *testing.T, drvPath storepath.StorePath, raw, nixJSON []byte) {
	t.Helper()
	dir := filepath.Join("testdata", "golden")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, drvPath.Base()), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, drvPath.Base()+".json"), nixJSON, 0o644); err != nil {
		t.Fatal(err)
	}
}
