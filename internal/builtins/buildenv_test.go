package builtins

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
)

func TestParsePackages(t *testing.T) {
	tests := []struct {
		in   string
		want []Package
		err  bool
	}{
		{in: "", want: nil},
		{in: "true 5 1 /nix/store/a", want: []Package{{"/nix/store/a", true, 5}}},
		{in: "true 5 2 /a /b\nfalse -3 1 /c", want: []Package{{"/a", true, 5}, {"/b", true, 5}, {"/c", false, -3}}},
		{in: "1 +7x 0", want: nil},
		{in: " 0 10 1\t/d ", want: []Package{{"/d", true, 10}}},
		{in: "true five 1 /a", err: true},
		{in: "true 5 2 /a", err: true},
		{in: "true 5", err: true},
		{in: "true 5 -1", err: true},
		{in: "true 99999999999 1 /a", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParsePackages(tt.in)
			if tt.err {
				if err == nil {
					t.Fatalf("parsed: %v", got)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("%v %v, want %v", got, err, tt.want)
			}
		})
	}
}

func FuzzParsePackages(f *testing.F) {
	for _, s := range []string{"true 5 1 /nix/store/a", "true 5 2 /a /b false -3 1 /c", "x 1 9"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		pkgs, err := ParsePackages(s)
		if err != nil {
			return
		}
		if len(pkgs) > len(strings.Fields(s)) {
			t.Fatalf("%d packages from %q", len(pkgs), s)
		}
	})
}

// fakeStore lays out packages under a temp dir: each key of files is
// "pkg/rel/path", a value starting with "->" is a symlink.
func fakeStore(t *testing.T, files map[string]string) (*View, string) {
	t.Helper()
	real := filepath.Join(t.TempDir(), "store")
	v := &View{StoreDir: "/nix/store", RealStoreDir: real, Paths: map[string]bool{}}
	for name, content := range files {
		p := filepath.Join(real, name)
		v.Paths[strings.SplitN(name, "/", 2)[0]] = true
		os.MkdirAll(filepath.Dir(p), 0o755)
		if target, ok := strings.CutPrefix(content, "->"); ok {
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
		} else if content == "/" {
			os.MkdirAll(p, 0o755)
		} else if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return v, real
}

// tree lists a built profile: "path -> target" for links, "path/" for
// directories.
func tree(t *testing.T, dir string) []string {
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			out = append(out, rel+" -> "+target)
		case fi.IsDir():
			out = append(out, rel+"/")
		default:
			out = append(out, rel)
		}
		return nil
	})
	sort.Strings(out)
	return out
}

func TestBuildenv(t *testing.T) {
	const s = "/nix/store/"
	files := map[string]string{
		"aaa-a/bin/a":         "a",
		"aaa-a/bin/common":    "a",
		"aaa-a/share/man/a.1": "a",
		"aaa-a/nix-support/propagated-user-env-packages": s + "ddd-dep\n",
		"aaa-a/.hidden":                 "x",
		"aaa-a/lib/perl5/perllocal.pod": "x",
		"bbb-b/bin/b":                   "b",
		"bbb-b/bin/common":              "b",
		"bbb-b/bin/dangling":            "->/nonexistent",
		"bbb-b/share/man/b.1":           "b",
		"ddd-dep/bin/dep":               "dep",
		"ddd-dep/share/dep/x":           "x",
		"eee-man/share":                 "->" + s + "fff-real/share",
		"fff-real/share/doc/e":          "e",
		"ggg-file":                      "just a file",
		"hhh-manifest.nix":              "[]",
	}
	tests := []struct {
		name  string
		drvs  string
		want  []string
		err   string
		warns []string
	}{
		{
			name: "priorities and propagation",
			drvs: "true 5 1 " + s + "aaa-a true 4 1 " + s + "bbb-b",
			want: []string{
				"bin/", "bin/a -> " + s + "aaa-a/bin/a", "bin/b -> " + s + "bbb-b/bin/b", "bin/common -> " + s + "bbb-b/bin/common",
				"bin/dep -> " + s + "ddd-dep/bin/dep", "lib -> " + s + "aaa-a/lib",
				"manifest.nix -> " + s + "hhh-manifest.nix",
				"share/", "share/dep -> " + s + "ddd-dep/share/dep", "share/man/",
				"share/man/a.1 -> " + s + "aaa-a/share/man/a.1", "share/man/b.1 -> " + s + "bbb-b/share/man/b.1",
			},
			warns: []string{"skipping dangling symlink '/nix/store/zzz-env/bin/dangling'"},
		},
		{
			name: "same priority",
			drvs: "true 5 1 " + s + "aaa-a true 5 1 " + s + "bbb-b",
			err:  "have the same priority",
		},
		{
			name: "inactive",
			drvs: "false 5 1 " + s + "aaa-a true 5 1 " + s + "bbb-b",
			want: []string{
				"bin -> " + s + "bbb-b/bin",
				"manifest.nix -> " + s + "hhh-manifest.nix",
				"share -> " + s + "bbb-b/share",
			},
		},
		{
			name: "merged through a symlinked directory",
			drvs: "true 5 1 " + s + "eee-man true 6 1 " + s + "bbb-b",
			want: []string{
				"bin -> " + s + "bbb-b/bin",
				"manifest.nix -> " + s + "hhh-manifest.nix",
				"share/", "share/doc -> " + s + "fff-real/share/doc", "share/man -> " + s + "bbb-b/share/man",
			},
		},
		{
			name:  "not a directory",
			drvs:  "true 5 1 " + s + "ggg-file",
			want:  []string{"manifest.nix -> " + s + "hhh-manifest.nix"},
			warns: []string{"not including '/nix/store/ggg-file' in the user environment because it's not a directory"},
		},
		{
			name: "invisible package",
			drvs: "true 5 1 " + s + "zzz-missing",
			err:  "opening directory",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			view, _ := fakeStore(t, files)
			out := filepath.Join(t.TempDir(), "out")
			var log bytes.Buffer
			env := map[string]string{"out": s + "zzz-env", "derivations": tt.drvs, "manifest": s + "hhh-manifest.nix"}
			err := Run(t.Context(), &Job{Builder: "builtin:buildenv", Env: env, Out: out, View: view, Log: &log})
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := tree(t, out); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("tree:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			for _, w := range tt.warns {
				if !strings.Contains(log.String(), w) {
					t.Errorf("log lacks %q:\n%s", w, log.String())
				}
			}
		})
	}
}
