package derivation

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"cairn/internal/nixhash"
	"cairn/internal/storepath"
)

const goldenDir = "testdata/golden"

// golden loads the recorded .drv files, keyed by path, with their JSON.
func golden(t testing.TB) (map[storepath.StorePath][]byte, map[storepath.StorePath][]byte) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(goldenDir, "*.drv"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	drvs := make(map[storepath.StorePath][]byte)
	jsons := make(map[storepath.StorePath][]byte)
	for _, f := range files {
		p, err := storepath.DefaultStoreDir.FromBase(filepath.Base(f))
		if err != nil {
			t.Fatal(err)
		}
		if drvs[p], err = os.ReadFile(f); err != nil {
			t.Fatal(err)
		}
		if jsons[p], err = os.ReadFile(f + ".json"); err != nil {
			t.Fatal(err)
		}
	}
	return drvs, jsons
}

func goldenResolver(drvs map[storepath.StorePath][]byte) Resolver {
	return func(p storepath.StorePath) (*Derivation, error) {
		data, ok := drvs[p]
		if !ok {
			return nil, fmt.Errorf("%s: not in testdata", p)
		}
		return Parse(storepath.DefaultStoreDir, data, drvName(p))
	}
}

// TestGolden runs the checks of the differential test on the recorded files, so
// they hold without Nix installed.
func TestGolden(t *testing.T) {
	drvs, jsons := golden(t)
	cache := new(HashCache)
	for p, raw := range drvs {
		t.Run(p.Name(), func(t *testing.T) {
			checkNixDrv(t, storepath.DefaultStoreDir, p, raw, jsons[p], cache, goldenResolver(drvs))
		})
	}
}

func TestOutputKinds(t *testing.T) {
	drvs, _ := golden(t)
	want := map[string]OutputKind{
		"simple": InputAddressed, "fixed-rec-sha256": CAFixed, "floating": CAFloating,
		"deferred": Deferred, "impure": Impure,
	}
	seen := 0
	for p, raw := range drvs {
		d, err := Parse(storepath.DefaultStoreDir, raw, drvName(p))
		if err != nil {
			t.Fatal(err)
		}
		k, ok := want[d.Name]
		if !ok {
			continue
		}
		seen++
		if got, err := d.Type(); got != k || err != nil {
			t.Errorf("%s: Type() = %v, %v; want %v", d.Name, got, err, k)
		}
		if k == CAFixed && d.Outputs["out"].ContentAddress().String() != "fixed:r:sha256:0sg9f58l1jj88w6pdrfdpj5x9b1zrwszk84j81zvby36q9whhhqa" {
			t.Errorf("ContentAddress = %v", d.Outputs["out"].ContentAddress())
		}
	}
	if seen != len(want) {
		t.Errorf("saw %d of %d kinds", seen, len(want))
	}
}

func TestPlaceholder(t *testing.T) {
	if got, want := Placeholder("out"), "/1rz4g4znpzjwh1xymhjpm42vipw92pr73vdgl6xs1hycac8kf2n9"; got != want {
		t.Errorf("Placeholder(out) = %s, want %s", got, want)
	}
}

// TestHashModuloFixed checks the fixed-output fingerprint against one computed by
// hand from the golden fixed-flat-sha256 derivation.
func TestHashModuloFixed(t *testing.T) {
	drvs, _ := golden(t)
	for p, raw := range drvs {
		if drvName(p) != "fixed-flat-sha256" {
			continue
		}
		d, err := Parse(storepath.DefaultStoreDir, raw, drvName(p))
		if err != nil {
			t.Fatal(err)
		}
		h, err := HashModulo(d, true, nil)
		if err != nil {
			t.Fatal(err)
		}
		o := d.Outputs["out"]
		want := nixhash.Sum(nixhash.SHA256, []byte("fixed:out:sha256:"+o.Hash.Base16()+":"+o.Path.String()))
		if h.Outputs["out"] != want || h.Deferred {
			t.Errorf("HashModulo = %+v, want %v", h, want)
		}
		return
	}
	t.Fatal("fixed-flat-sha256 not in testdata")
}

func TestHashModuloErrors(t *testing.T) {
	drvs, _ := golden(t)
	var dependent *Derivation
	var inputs []storepath.StorePath
	for p, raw := range drvs {
		if drvName(p) == "dependent" {
			d, err := Parse(storepath.DefaultStoreDir, raw, "dependent")
			if err != nil {
				t.Fatal(err)
			}
			dependent = d
			inputs = d.inputDrvPaths()
		}
	}
	boom := errors.New("boom")
	tests := []struct {
		name    string
		resolve Resolver
		want    string
	}{
		{"no resolver", nil, "no resolver"},
		{"resolver fails", func(storepath.StorePath) (*Derivation, error) { return nil, boom }, "boom"},
		{"cycle", func(p storepath.StorePath) (*Derivation, error) { return dependent, nil }, "cycle"},
		{"missing output", func(p storepath.StorePath) (*Derivation, error) {
			d := *dependent
			d.InputDrvs = nil
			d.Outputs = map[string]Output{"other": dependent.Outputs["out"]}
			return &d, nil
		}, "has no output"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := HashModulo(dependent, true, tt.resolve)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("HashModulo error = %v, want %q", err, tt.want)
			}
		})
	}
	if len(inputs) != 2 {
		t.Errorf("dependent has %d inputs", len(inputs))
	}
}

func TestValidate(t *testing.T) {
	drvs, _ := golden(t)
	var base *Derivation
	for p, raw := range drvs {
		if drvName(p) == "dependent" {
			base, _ = Parse(storepath.DefaultStoreDir, raw, "dependent")
		}
	}
	clone := func() *Derivation {
		d, err := Parse(storepath.DefaultStoreDir, base.Bytes(), base.Name)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	other := func(d *Derivation) storepath.StorePath {
		p, _ := storepath.Parse("/other/store/" + d.Outputs["out"].Path.Base())
		return p
	}
	src, _ := storepath.DefaultStoreDir.FromBase("00000000000000000000000000000000-src")
	tests := []struct {
		name   string
		mutate func(d *Derivation)
		want   string
	}{
		{"ok", func(d *Derivation) {}, ""},
		{"bad output name", func(d *Derivation) { d.Outputs["a b"] = d.Outputs["out"] }, "output name"},
		{"output drv", func(d *Derivation) { d.Outputs["drv"] = d.Outputs["out"] }, "output name"},
		{"no outputs", func(d *Derivation) { d.Outputs = map[string]Output{} }, "no outputs"},
		{"mixed kinds", func(d *Derivation) { d.Outputs["dev"] = DeferredOutput() }, "cannot mix"},
		{"wrong output name", func(d *Derivation) { d.Name = "renamed" }, "should be named"},
		{"other store", func(d *Derivation) { d.Outputs["out"] = InputAddressedOutput(other(d)) }, "not in store"},
		{"bad name", func(d *Derivation) { d.Name = "" }, "name"},
		{"input not drv", func(d *Derivation) { d.InputDrvs[src] = []string{"out"} }, "not a .drv"},
		{"input no outputs", func(d *Derivation) {
			for p := range d.InputDrvs {
				d.InputDrvs[p] = nil
			}
		}, "no outputs"},
		{"unsorted srcs", func(d *Derivation) { d.InputSrcs = []storepath.StorePath{src, src} }, "sorted"},
		{"raw platform", func(d *Derivation) { d.Platform = `x"y` }, "platform"},
		{"fixed two outputs", func(d *Derivation) {
			h := nixhash.Sum(nixhash.SHA256, nil)
			d.Outputs = map[string]Output{
				"out": FixedOutput(storepath.StorePath{}, nixhash.ContentAddress{Method: nixhash.Flat, Hash: h}),
				"dev": FixedOutput(storepath.StorePath{}, nixhash.ContentAddress{Method: nixhash.Flat, Hash: h}),
			}
		}, "only one fixed output"},
		{"fixed wrong path", func(d *Derivation) {
			h := nixhash.Sum(nixhash.SHA256, nil)
			d.Outputs = map[string]Output{"out": FixedOutput(d.Outputs["out"].Path, nixhash.ContentAddress{Method: nixhash.Flat, Hash: h})}
		}, "its hash gives"},
		{"floating mixed algos", func(d *Derivation) {
			d.Outputs = map[string]Output{
				"out": FloatingOutput(nixhash.Recursive, nixhash.SHA256),
				"dev": FloatingOutput(nixhash.Recursive, nixhash.SHA1),
			}
		}, "same hash"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := clone()
			tt.mutate(d)
			err := d.Validate(storepath.DefaultStoreDir)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Validate error = %v, want %q", err, tt.want)
			case tt.want != "" && !errors.Is(err, ErrInvalid) && !errors.Is(err, storepath.ErrInvalid):
				t.Errorf("Validate error %v does not wrap ErrInvalid", err)
			}
		})
	}
}

// simpleDrv is a small valid ATerm for the bad-input table.
const simpleDrv = `Derive([("out","/nix/store/3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple","","")],` +
	`[("/nix/store/1l7wpl8f34g1vybjkjn4w5sm110mqcli-multi.drv",["dev","out"])],` +
	`["/nix/store/6nl4qigvdbfkgqr6zrfcl7w325ll5079-s.txt"],"x86_64-linux","/bin/sh",["-c","a\"b\\c\nd"],` +
	`[("name","simple"),("out","/nix/store/3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple")])`

func TestParseTruncated(t *testing.T) {
	if _, err := Parse(storepath.DefaultStoreDir, []byte(simpleDrv), ""); err != nil {
		t.Fatalf("Parse(simpleDrv): %v", err)
	}
	for n := 0; n < len(simpleDrv); n++ {
		_, err := Parse(storepath.DefaultStoreDir, []byte(simpleDrv[:n]), "")
		var se *SyntaxError
		if !errors.As(err, &se) {
			t.Fatalf("truncated at %d: error %v is not a SyntaxError", n, err)
		}
		if se.Offset > n {
			t.Errorf("truncated at %d: offset %d past the end", n, se.Offset)
		}
	}
}

func TestParseErrors(t *testing.T) {
	const out = `("out","/nix/store/3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple","","")`
	wrap := func(outputs, rest string) string {
		return `Derive([` + outputs + `],[],[],"x86_64-linux","/bin/sh",[],[` + rest + `])`
	}
	tests := []struct {
		name, in, want string
		offset         int // -1: not checked
	}{
		{"empty", "", `expected "Derive("`, 0},
		{"wrong keyword", "Derivation(", `expected "e("`, 5},
		{"no outputs", wrap("", ""), "no outputs", -1},
		{"missing comma", `Derive([` + out + `][],[],"","",[],[])`, `expected ","`, -1},
		{"list separator", wrap(out+";", ""), `expected "," or "]"`, -1},
		{"unterminated string", `Derive([("out`, "unterminated string", 9},
		{"backslash at end", `Derive([("out\`, "backslash at end", 13},
		{"trailing data", wrap(out, "") + " ", "trailing data", -1},
		{"bad path", wrap(`("out","/nix/store/x","","")`, ""), "bad store path", -1},
		{"other store dir", wrap(`("out","/gnu/store/3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple","","")`, ""), "not in store dir", -1},
		{"relative path", wrap(`("out","nix/store/3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple","","")`, ""), "bad store path", -1},
		{"bad hash algo", wrap(`("out","/nix/store/3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple","sha3","00")`, ""), "bad hash algorithm", -1},
		{"text method", wrap(`("out","","text:sha256","")`, ""), "bad hash algorithm", -1},
		{"bad hash", wrap(`("out","/nix/store/3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple","sha256","00")`, ""), "length", -1},
		{"prefixed hash", wrap(`("out","/nix/store/3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple","sha1","sha1:a9993e364706816aba3e25717850c26c9cd0d89d")`, ""), "prefix", -1},
		{"hash without algo", wrap(`("out","","","00")`, ""), "without hash algorithm", -1},
		{"fixed without path", wrap(`("out","","sha1","a9993e364706816aba3e25717850c26c9cd0d89d")`, ""), "no path", -1},
		{"floating with path", wrap(`("out","/nix/store/3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple","sha1","")`, ""), "has a path", -1},
		{"impure with path", wrap(`("out","/nix/store/3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple","sha1","impure")`, ""), "has a path", -1},
		{"duplicate output", wrap(out+","+out, ""), "duplicate output", -1},
		{"duplicate env", wrap(out, `("a","1"),("a","2")`), "duplicate env key", -1},
		{"duplicate src", `Derive([` + out + `],[],["/nix/store/6nl4qigvdbfkgqr6zrfcl7w325ll5079-s.txt","/nix/store/6nl4qigvdbfkgqr6zrfcl7w325ll5079-s.txt"],"","",[],[])`, "duplicate input source", -1},
		{"duplicate input drv", `Derive([` + out + `],[("/nix/store/1l7wpl8f34g1vybjkjn4w5sm110mqcli-multi.drv",["out"]),("/nix/store/1l7wpl8f34g1vybjkjn4w5sm110mqcli-multi.drv",["dev"])],[],"","",[],[])`, "duplicate input derivation", -1},
		{"duplicate input output", `Derive([` + out + `],[("/nix/store/1l7wpl8f34g1vybjkjn4w5sm110mqcli-multi.drv",["out","out"])],[],"","",[],[])`, "duplicate output name", -1},
		{"env not a pair", wrap(out, `("a")`), `expected ","`, -1},
		{"nul bytes", "\x00\x00\x00", `expected "Derive("`, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(storepath.DefaultStoreDir, []byte(tt.in), "x")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Parse error = %v, want %q", err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "parse derivation x: ") {
				t.Errorf("error %q lacks the op prefix", err)
			}
			var se *SyntaxError
			if tt.offset >= 0 && (!errors.As(err, &se) || se.Offset != tt.offset) {
				t.Errorf("error %v: want offset %d", err, tt.offset)
			}
		})
	}
}

func TestParseLimits(t *testing.T) {
	lim := limits{size: 1 << 10, stringLen: 64, outputs: 2, list: 3}
	const out = `("out","/nix/store/3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple","","")`
	tests := []struct{ name, in, want string }{
		{"size", strings.Repeat("x", 1<<10+1), "more than the limit"},
		{"long string", `Derive([("` + strings.Repeat("o", 65) + `"`, "longer than 64"},
		{"long escaped string", `Derive([("` + strings.Repeat(`\o`, 65) + `"`, "longer than 64"},
		{"outputs", `Derive([("a","","",""),("b","","",""),("c","","","")],`, "outputs: more than 2"},
		{"args", `Derive([` + out + `],[],[],"","",["1","2","3","4"],[])`, "args: more than 3"},
		{"env", `Derive([` + out + `],[],[],"","",[],[("a",""),("b",""),("c",""),("d","")])`, "env: more than 3"},
		{"srcs", `Derive([` + out + `],[],["/nix/store/00000000000000000000000000000000-a","/nix/store/00000000000000000000000000000000-b","/nix/store/00000000000000000000000000000000-c","/nix/store/00000000000000000000000000000000-d"]`, "input sources: more than 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseLimits(storepath.DefaultStoreDir, []byte(tt.in), "", lim)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestEscapes(t *testing.T) {
	in := `Derive([("out","","","")],[],[],"x","\a\"\\\n\r\t\q",["\u00e9"],[("k\"","v\\")])`
	d, err := Parse(storepath.DefaultStoreDir, []byte(in), "x")
	if err != nil {
		t.Fatal(err)
	}
	if want := "a\"\\\n\r\tq"; d.Builder != want {
		t.Errorf("Builder = %q, want %q", d.Builder, want)
	}
	if d.Args[0] != "u00e9" || d.Env[`k"`] != `v\` {
		t.Errorf("Args = %q, Env = %q", d.Args, d.Env)
	}
	want := `Derive([("out","","","")],[],[],"x","a\"\\\n\r\tq",["u00e9"],[("k\"","v\\")])`
	if got := string(d.Bytes()); got != want {
		t.Errorf("Bytes =\n%s\nwant\n%s", got, want)
	}
}

func TestJSONErrors(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"not json", `Derive(`, "invalid character"},
		{"unknown field", `{"outputs":{},"platform":"x"}`, "unknown field"},
		{"no outputs", `{"outputs":{},"system":"x","builder":"b"}`, "no outputs"},
		{"no system", `{"outputs":{"out":{}},"builder":"b"}`, "required"},
		{"trailing", `{"outputs":{"out":{}},"system":"x","builder":"b"} {}`, "trailing"},
		{"bad path", `{"outputs":{"out":{"path":"/nix/store/x"}},"system":"x","builder":"b"}`, "invalid store path"},
		{"hash no algo", `{"outputs":{"out":{"hash":"00"}},"system":"x","builder":"b"}`, "without hashAlgo"},
		{"bad algo", `{"outputs":{"out":{"hashAlgo":"r:sha3"}},"system":"x","builder":"b"}`, "method"},
		{"floating path", `{"outputs":{"out":{"path":"/nix/store/3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple","hashAlgo":"sha256"}},"system":"x","builder":"b"}`, "with a path"},
		{"dup outputs", `{"outputs":{"out":{}},"inputDrvs":{"/nix/store/1l7wpl8f34g1vybjkjn4w5sm110mqcli-multi.drv":["out","out"]},"system":"x","builder":"b"}`, "duplicate output"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseJSON(storepath.DefaultStoreDir, []byte(tt.in), "x")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ParseJSON error = %v, want %q", err, tt.want)
			}
		})
	}
}

// TestJSONFill parses a hand-written JSON derivation without output paths, as
// `cairn derivation add` will, and computes its outputs: it must come out as the
// golden "dependent" derivation that Nix wrote.
func TestJSONFill(t *testing.T) {
	drvs, jsons := golden(t)
	for p := range drvs {
		if drvName(p) != "dependent" {
			continue
		}
		all, err := ParseShowJSON(storepath.DefaultStoreDir, jsons[p])
		if err != nil {
			t.Fatal(err)
		}
		inner, err := all[p].MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		path := all[p].Outputs["out"].Path.String()
		inner = bytes.ReplaceAll(inner, []byte(`"path":"`+path+`"`), nil)
		inner = bytes.ReplaceAll(inner, []byte(path), nil)
		d, err := ParseJSON(storepath.DefaultStoreDir, inner, "")
		if err != nil {
			t.Fatalf("ParseJSON(%s): %v", inner, err)
		}
		if d.Outputs["out"].Kind() != Deferred {
			t.Fatalf("output kind %v", d.Outputs["out"].Kind())
		}
		if err := d.FillOutputs(storepath.DefaultStoreDir, nil, goldenResolver(drvs)); err != nil {
			t.Fatal(err)
		}
		if got, err := d.StorePath(storepath.DefaultStoreDir); got != p || err != nil {
			t.Errorf("StorePath = %v, %v; want %v", got, err, p)
		}
		if !bytes.Equal(d.Bytes(), drvs[p]) {
			t.Errorf("Bytes:\n got %s\nwant %s", d.Bytes(), drvs[p])
		}
		return
	}
	t.Fatal("dependent not in testdata")
}

// FuzzParse checks that whatever parses prints to an ATerm that parses to the same
// derivation and prints to the same bytes, and that JSON round-trips too.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(goldenDir, "*.drv"))
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(simpleDrv))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := Parse(storepath.DefaultStoreDir, data, "fuzz")
		if err != nil {
			return
		}
		if rawStringsUnsafe(d) {
			return // Nix writes these unescaped too: printing cannot round-trip
		}
		out := d.Bytes()
		d2, err := Parse(storepath.DefaultStoreDir, out, "fuzz")
		if err != nil {
			t.Fatalf("printed derivation does not parse: %v\n%q", err, out)
		}
		if !reflect.DeepEqual(d, d2) {
			t.Fatalf("round trip changed the derivation:\n%+v\n%+v", d, d2)
		}
		if out2 := d2.Bytes(); !bytes.Equal(out, out2) {
			t.Fatalf("second print differs:\n%q\n%q", out, out2)
		}
		js, err := d.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		if !utf8Clean(d) {
			return // encoding/json replaces invalid UTF-8
		}
		d3, err := ParseJSON(storepath.DefaultStoreDir, js, "fuzz")
		if err != nil {
			t.Fatalf("ParseJSON(MarshalJSON): %v\n%s", err, js)
		}
		if !reflect.DeepEqual(d, d3) {
			t.Fatalf("JSON round trip changed the derivation:\n%+v\n%+v", d, d3)
		}
	})
}

// rawStringsUnsafe reports whether a string Nix writes raw holds a quote or backslash.
func rawStringsUnsafe(d *Derivation) bool {
	if rawUnsafe(d.Platform) {
		return true
	}
	for name := range d.Outputs {
		if rawUnsafe(name) {
			return true
		}
	}
	for _, outs := range d.InputDrvs {
		for _, o := range outs {
			if rawUnsafe(o) {
				return true
			}
		}
	}
	return false
}

func utf8Clean(d *Derivation) bool {
	var b strings.Builder
	b.WriteString(d.Platform + d.Builder)
	for name := range d.Outputs {
		b.WriteString(name)
	}
	for _, outs := range d.InputDrvs {
		b.WriteString(strings.Join(outs, ""))
	}
	b.WriteString(strings.Join(d.Args, ""))
	for k, v := range d.Env {
		b.WriteString(k + v)
	}
	return strings.ToValidUTF8(b.String(), "\uFFFD") == b.String() && !strings.ContainsRune(b.String(), '\uFFFD')
}

// realisticDrv is the biggest golden derivation with inputs: "dependent", grown
// with a long script and many env entries to the size of a typical nixpkgs .drv.
func realisticDrv(b *testing.B) (*Derivation, []byte, Resolver) {
	drvs, _ := golden(b)
	for p, raw := range drvs {
		if drvName(p) != "dependent" {
			continue
		}
		d, err := Parse(storepath.DefaultStoreDir, raw, "dependent")
		if err != nil {
			b.Fatal(err)
		}
		d.Args = append(d.Args, strings.Repeat("echo \"building\" \\\n\tstep\n", 200))
		for i := range 60 {
			d.Env[fmt.Sprintf("var%02d", i)] = strings.Repeat("some value with a \"quote\"\n", 4)
		}
		return d, d.Bytes(), goldenResolver(drvs)
	}
	b.Fatal("dependent not in testdata")
	return nil, nil, nil
}

func BenchmarkParse(b *testing.B) {
	_, data, _ := realisticDrv(b)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(storepath.DefaultStoreDir, data, "dependent"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBytes(b *testing.B) {
	d, data, _ := realisticDrv(b)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		d.Bytes()
	}
}

func BenchmarkHashModulo(b *testing.B) {
	d, data, resolve := realisticDrv(b)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	cache := new(HashCache)
	for b.Loop() {
		if _, err := cache.HashModulo(d, true, resolve); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWriteJSON(b *testing.B) {
	d, data, _ := realisticDrv(b)
	p, _ := d.StorePath(storepath.DefaultStoreDir)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	var buf bytes.Buffer
	for b.Loop() {
		buf.Reset()
		if err := WriteJSON(&buf, map[storepath.StorePath]*Derivation{p: d}); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzParseJSON checks that whatever ParseJSON accepts marshals back to JSON that
// parses to the same derivation, and that ParseJSON never panics.
func FuzzParseJSON(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(goldenDir, "*.drv"))
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		d, err := Parse(storepath.DefaultStoreDir, data, "seed")
		if err != nil {
			f.Fatal(err)
		}
		js, _ := d.MarshalJSON()
		f.Add(js)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := ParseJSON(storepath.DefaultStoreDir, data, "fuzz")
		if err != nil {
			return
		}
		js, err := d.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		d2, err := ParseJSON(storepath.DefaultStoreDir, js, "fuzz")
		if err != nil {
			t.Fatalf("ParseJSON(MarshalJSON): %v\n%s", err, js)
		}
		if !reflect.DeepEqual(d, d2) {
			t.Fatalf("JSON round trip changed the derivation:\n%+v\n%+v", d, d2)
		}
	})
}
