package cli

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"cairn/internal/testutil/nixtest"
)

// runHash runs "cairn hash ARGS" in-process and returns trimmed stdout.
func runHash(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := NewRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&bytes.Buffer{})
	root.SetArgs(append([]string{"hash"}, args...))
	err := root.Execute()
	return strings.TrimSpace(out.String()), err
}

func hashTestTree(t *testing.T) (tree, file string) {
	t.Helper()
	dir := t.TempDir()
	tree = filepath.Join(dir, "tree")
	for name, data := range map[string]string{"a/x": "x\n", "b": "bee", "c/empty": ""} {
		p := filepath.Join(tree, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("b", filepath.Join(tree, "l")); err != nil {
		t.Fatal(err)
	}
	file = filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("some file contents\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return tree, file
}

// TestHashAgainstNix compares cairn hash path/file with nix-hash and nix hash in
// every algorithm and base.
func TestHashAgainstNix(t *testing.T) {
	nixtest.Require(t, "nix-hash", "nix")
	tree, file := hashTestTree(t)
	for _, algo := range []string{"md5", "sha1", "sha256", "sha512"} {
		for _, target := range []struct{ verb, path string }{{"path", tree}, {"path", file}, {"file", file}} {
			for _, base := range []string{"--base16", "--base32", "--base64", "--sri", ""} {
				name := fmt.Sprintf("%s %s %s %s", target.verb, filepath.Base(target.path), algo, base)
				t.Run(name, func(t *testing.T) {
					args := []string{target.verb, "--type", algo}
					if base != "" {
						args = append(args, base)
					}
					got, err := runHash(t, append(args, target.path)...)
					if err != nil {
						t.Fatal(err)
					}
					want := nixtest.Run(t, nil, "nix", append([]string{"--extra-experimental-features", "nix-command", "hash"}, append(args, target.path)...)...)
					if got != want {
						t.Errorf("cairn %q, nix hash %q", got, want)
					}
					if base == "--base16" || base == "--base32" {
						nixArgs := []string{"--type", algo}
						if base == "--base32" {
							nixArgs = append(nixArgs, "--base32")
						}
						if target.verb == "file" {
							nixArgs = append(nixArgs, "--flat")
						}
						if w := nixtest.Run(t, nil, "nix-hash", append(nixArgs, target.path)...); got != w {
							t.Errorf("cairn %q, nix-hash %q", got, w)
						}
					}
				})
			}
		}
	}
}

func TestHashConvert(t *testing.T) {
	const (
		b16 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
		n32 = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
		b64 = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
		sri = "sha256-" + b64
	)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"convert", "--hash-algo", "sha256", "--to", "nix32", b16}, n32},
		{[]string{"convert", "--to", "base16", sri}, b16},
		{[]string{"convert", "sha256:" + n32}, sri},
		{[]string{"convert", "--to", "base64", "sha256:" + b16}, b64},
		{[]string{"to-base32", sri}, n32},
		{[]string{"to-sri", "--type", "sha256", n32}, sri},
		{[]string{"to-base16", "--type", "sha256", b64}, b16},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			got, err := runHash(t, tt.args...)
			if err != nil || got != tt.want {
				t.Errorf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	for _, bad := range [][]string{
		{"convert", n32},                    // no algorithm
		{"convert", "--to", "base58", sri},  // no such encoding
		{"to-base32", "sha256:" + b16[:60]}, // wrong length
		{"path", "--type", "sha3", "."},     // no such algorithm
		{"path", "/nonexistent/path"},       // no such file
	} {
		if _, err := runHash(t, bad...); err == nil {
			t.Errorf("cairn hash %v succeeded", bad)
		}
	}
}

func TestHashPathGoSourceAgainstNixHash(t *testing.T) {
	if testing.Short() {
		t.Skip("hashes the whole Go source tree")
	}
	nixtest.Require(t, "nix-hash")
	src := filepath.Join(runtime.GOROOT(), "src")
	got, err := runHash(t, "path", "--base16", src)
	if err != nil {
		t.Fatal(err)
	}
	if want := nixtest.Run(t, nil, "nix-hash", "--type", "sha256", src); got != want {
		t.Errorf("cairn hash path %s = %s, nix-hash %s", src, got, want)
	}
}
