package build

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cairn/internal/derivation"
	"cairn/internal/nar"
	"cairn/internal/nixhash"
	"cairn/internal/storepath"
)

// addFetchurl adds a derivation as <nix/fetchurl.nix> makes it.
func addFetchurl(t *testing.T, add func(*derivation.Derivation) storepath.StorePath, name, url string, h nixhash.Hash, unpack, executable bool, srcs ...storepath.StorePath) storepath.StorePath {
	t.Helper()
	b := func(v bool) string {
		if v {
			return "1"
		}
		return ""
	}
	method, mode := nixhash.Flat, "flat"
	if unpack || executable {
		method, mode = nixhash.Recursive, "recursive"
	}
	d := &derivation.Derivation{
		Name:      name,
		Outputs:   map[string]derivation.Output{"out": derivation.FixedOutput(storepath.StorePath{}, nixhash.ContentAddress{Method: method, Hash: h})},
		InputSrcs: srcs,
		Platform:  "builtin", Builder: "builtin:fetchurl",
		Env: map[string]string{
			"builder": "builtin:fetchurl", "name": name, "out": "", "url": url, "urls": url,
			"unpack": b(unpack), "executable": b(executable),
			"outputHash": h.Nix32(), "outputHashAlgo": "sha256", "outputHashMode": mode,
			"impureEnvVars": "http_proxy https_proxy ftp_proxy all_proxy no_proxy", "preferLocalBuild": "1", "system": "builtin",
		},
	}
	return add(d)
}

func TestBuiltinFetchurl(t *testing.T) {
	ctx := context.Background()
	st := testStore(t)
	b := newBuilder(t, st)
	add := func(d *derivation.Derivation) storepath.StorePath {
		p, err := AddDerivation(ctx, st, d)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}

	tree := filepath.Join(t.TempDir(), "tree")
	os.MkdirAll(filepath.Join(tree, "bin"), 0o755)
	os.WriteFile(filepath.Join(tree, "bin", "hi"), []byte("#!/bin/sh\necho hi\n"), 0o755)
	var narData bytes.Buffer
	if err := nar.Dump(&narData, tree, nar.DumpOptions{}); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/hello":
			fmt.Fprint(w, "hello\n")
		case "/tree.nar":
			w.Write(narData.Bytes())
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	src := filepath.Join(t.TempDir(), "src.txt")
	os.WriteFile(src, []byte("hello\n"), 0o644)
	infos, err := st.AddPaths(ctx, []string{src}, nixhash.Flat, nixhash.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	srcPath := infos[0].Path

	flat := nixhash.Sum(nixhash.SHA256, []byte("hello\n"))
	var exe bytes.Buffer
	w := nar.NewWriter(&exe)
	w.WriteHeader(&nar.Header{Type: nar.TypeRegular, Executable: true, Size: 6})
	w.Write([]byte("hello\n"))
	w.Close()
	tests := []struct {
		name   string
		drv    storepath.StorePath
		status Status
		err    string
		check  func(t *testing.T, out string)
	}{
		{name: "flat", drv: addFetchurl(t, add, "hello", srv.URL+"/hello", flat, false, false), status: Built},
		{name: "executable", drv: addFetchurl(t, add, "hello-exe", srv.URL+"/hello", nixhash.Sum(nixhash.SHA256, exe.Bytes()), false, true), status: Built,
			check: func(t *testing.T, out string) {
				if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o555 {
					t.Errorf("mode %v %v", fi.Mode(), err)
				}
			}},
		{name: "unpack", drv: addFetchurl(t, add, "tree", srv.URL+"/tree.nar", nixhash.Sum(nixhash.SHA256, narData.Bytes()), true, false), status: Built,
			check: func(t *testing.T, out string) {
				if b, err := os.ReadFile(filepath.Join(out, "bin", "hi")); err != nil || string(b) != "#!/bin/sh\necho hi\n" {
					t.Errorf("%q %v", b, err)
				}
			}},
		{name: "file input", drv: addFetchurl(t, add, "from-file", "file://"+srcPath.String(), flat, false, false, srcPath), status: Built},
		{name: "file not an input", drv: addFetchurl(t, add, "from-host", "file://"+src, flat, false, false), status: PermanentFailure,
			err: "Couldn't read a file:// file"},
		{name: "hash mismatch", drv: addFetchurl(t, add, "wrong", srv.URL+"/hello", nixhash.Sum(nixhash.SHA256, []byte("other\n")), false, false),
			status: OutputRejected, err: "hash mismatch in fixed-output derivation"},
		{name: "not found", drv: addFetchurl(t, add, "missing", srv.URL+"/missing", flat, false, false), status: PermanentFailure,
			err: "HTTP error 404"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log := &testLog{}
			// No sandbox-paths: a builtin needs no /bin/sh.
			res, err := b.Build(ctx, []Target{{Drv: tt.drv}}, Options{MaxJobs: 1, Sandbox: true}, log)
			if err != nil {
				t.Fatal(err)
			}
			if res[0].Status != tt.status {
				t.Fatalf("status %d, want %d: %v\n%s", res[0].Status, tt.status, res[0].Err, strings.Join(log.lines, "\n"))
			}
			if tt.err != "" {
				if res[0].Err == nil || !strings.Contains(res[0].Err.Error(), tt.err) {
					t.Errorf("error %v, want %q", res[0].Err, tt.err)
				}
				return
			}
			out := res[0].Outputs["out"]
			if tt.check != nil {
				tt.check(t, st.RealPath(out))
			}
			info, err := st.QueryPathInfo(ctx, out)
			if err != nil || info.CA.IsZero() || info.Deriver != tt.drv {
				t.Errorf("info %+v %v", info, err)
			}
		})
	}
}

func TestBuiltinBuildenv(t *testing.T) {
	ctx := context.Background()
	st := testStore(t)
	b := newBuilder(t, st)
	dir := t.TempDir()
	mk := func(name string, files map[string]string) storepath.StorePath {
		root := filepath.Join(dir, name)
		for p, c := range files {
			os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
			os.WriteFile(filepath.Join(root, p), []byte(c), 0o644)
		}
		infos, err := st.AddPaths(ctx, []string{root}, nixhash.Recursive, nixhash.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		return infos[0].Path
	}
	dep := mk("dep", map[string]string{"bin/dep": "dep"})
	a := mk("a", map[string]string{"bin/a": "a", "bin/common": "a", "nix-support/propagated-user-env-packages": dep.String()})
	c := mk("c", map[string]string{"bin/c": "c", "bin/common": "c"})
	manifest, err := st.AddText(ctx, "env-manifest.nix", "[ ]", []storepath.StorePath{a, c})
	if err != nil {
		t.Fatal(err)
	}
	d := &derivation.Derivation{
		Name:      "user-environment",
		Outputs:   map[string]derivation.Output{"out": derivation.DeferredOutput()},
		InputSrcs: []storepath.StorePath{manifest.Path, dep},
		Platform:  "builtin", Builder: "builtin:buildenv",
		Env: map[string]string{
			"builder": "builtin:buildenv", "name": "user-environment", "system": "builtin", "preferLocalBuild": "1", "allowSubstitutes": "",
			"derivations": fmt.Sprintf("true 5 1 %s true 4 1 %s", a, c), "manifest": manifest.Path.String(),
		},
	}
	drv, err := AddDerivation(ctx, st, d)
	if err != nil {
		t.Fatal(err)
	}
	res, err := b.Build(ctx, []Target{{Drv: drv}}, Options{MaxJobs: 1, Sandbox: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Status != Built {
		t.Fatalf("status %d: %v", res[0].Status, res[0].Err)
	}
	out := st.RealPath(res[0].Outputs["out"])
	for link, want := range map[string]string{
		"bin/a": a.String() + "/bin/a", "bin/c": c.String() + "/bin/c", "bin/common": c.String() + "/bin/common",
		"bin/dep": dep.String() + "/bin/dep", "manifest.nix": manifest.Path.String(),
	} {
		if got, err := os.Readlink(filepath.Join(out, link)); err != nil || got != want {
			t.Errorf("%s -> %q %v, want %q", link, got, err, want)
		}
	}
	info, err := st.QueryPathInfo(ctx, res[0].Outputs["out"])
	if err != nil || len(info.References) != 4 {
		t.Errorf("references %v %v", info.References, err)
	}
}
