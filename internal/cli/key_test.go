package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cairn/internal/narinfo"
	"cairn/internal/nixhash"
	"cairn/internal/storepath"
	"cairn/internal/testutil/nixtest"
)

// runKeyCmd runs cairn with args and stdin, returning stdout.
func runKeyCmd(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	root := NewRoot()
	var out bytes.Buffer
	root.SetArgs(args)
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&out)
	err := root.Execute()
	return out.String(), err
}

func readKeyFile(t *testing.T, name string) (string, os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), fi.Mode().Perm()
}

func TestKeyGenerate(t *testing.T) {
	dir := t.TempDir()
	sec, pub := filepath.Join(dir, "sk"), filepath.Join(dir, "pk")
	// A stale, world-readable secret key file is replaced, mode and all.
	if err := os.WriteFile(sec, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := runKeyCmd(t, "", "key", "generate", "cache.example.org-1", sec, pub); err != nil {
		t.Fatal(err)
	}
	secText, secMode := readKeyFile(t, sec)
	pubText, pubMode := readKeyFile(t, pub)
	if secMode != 0o600 || pubMode != 0o644 {
		t.Errorf("modes %v, %v; want 0600, 0644 as Nix makes them", secMode, pubMode)
	}
	if strings.HasSuffix(secText, "\n") || strings.HasSuffix(pubText, "\n") {
		t.Error("key files end in a newline; Nix writes none")
	}
	sk, err := narinfo.ParseSecretKey(secText)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := narinfo.ParsePublicKey(pubText)
	if err != nil {
		t.Fatal(err)
	}
	if sk.Name() != "cache.example.org-1" || sk.Public() != pk {
		t.Errorf("secret key %s does not match public key %s", sk.Name(), pk)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("directory holds %d entries, want 2 (a temporary file left behind?)", len(entries))
	}

	out, err := runKeyCmd(t, "", "key", "public", sec)
	if err != nil || out != pubText+"\n" {
		t.Errorf("key public FILE = %q, %v; want %q", out, err, pubText+"\n")
	}
	out, err = runKeyCmd(t, secText+"\n", "key", "public")
	if err != nil || out != pubText+"\n" {
		t.Errorf("key public <stdin = %q, %v; want %q", out, err, pubText+"\n")
	}
}

func TestKeyErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name  string
		stdin string
		args  []string
	}{
		{"generate: empty name", "", []string{"key", "generate", "", filepath.Join(dir, "a"), filepath.Join(dir, "b")}},
		{"generate: name with colon", "", []string{"key", "generate", "a:b", filepath.Join(dir, "a"), filepath.Join(dir, "b")}},
		{"generate: missing dir", "", []string{"key", "generate", "k", filepath.Join(dir, "no", "a"), filepath.Join(dir, "b")}},
		{"generate: too few args", "", []string{"key", "generate", "k", filepath.Join(dir, "a")}},
		{"public: garbage", "not a key", []string{"key", "public"}},
		{"public: public key", "k:" + strings.Repeat("A", 43) + "=", []string{"key", "public"}},
		{"public: huge input", strings.Repeat("A", maxKeyFileSize+1), []string{"key", "public"}},
		{"public: missing file", "", []string{"key", "public", filepath.Join(dir, "nope")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := runKeyCmd(t, tt.stdin, tt.args...); err == nil {
				t.Error("succeeded")
			}
		})
	}
}

// TestKeyNix checks Cairn's key files against Nix 2.8: Nix signs with Cairn's
// secret key file and the signature is the one Cairn makes (ed25519 is
// deterministic) and verifies under Cairn's public key file; and cairn key public
// turns Nix's secret key file into Nix's public key file.
func TestKeyNix(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix")
	dir := t.TempDir()
	sec, pub := filepath.Join(dir, "cairn.sec"), filepath.Join(dir, "cairn.pub")
	if _, err := runKeyCmd(t, "", "key", "generate", "cairn-test-1", sec, pub); err != nil {
		t.Fatal(err)
	}
	secText, _ := readKeyFile(t, sec)
	pubText, _ := readKeyFile(t, pub)
	sk, err := narinfo.ParseSecretKey(secText)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := narinfo.ParsePublicKey(pubText)
	if err != nil {
		t.Fatal(err)
	}

	st := nixtest.NewStore(t)
	file := filepath.Join(dir, "hello.txt")
	if err := os.WriteFile(file, []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	path := st.Run(t, nil, "nix-store", "--add", file)
	st.Run(t, nil, "nix", "store", "sign", "-k", sec, path)
	var infos []struct {
		Path       string   `json:"path"`
		NarHash    string   `json:"narHash"`
		NarSize    uint64   `json:"narSize"`
		References []string `json:"references"`
		Signatures []string `json:"signatures"`
	}
	if err := json.Unmarshal([]byte(st.Run(t, nil, "nix", "path-info", "--json", path)), &infos); err != nil || len(infos) != 1 {
		t.Fatalf("path-info JSON: %v", err)
	}
	info := infos[0]
	if len(info.Signatures) != 1 {
		t.Fatalf("Nix made signatures %q, want one", info.Signatures)
	}
	sig, err := narinfo.ParseSignature(info.Signatures[0])
	if err != nil {
		t.Fatal(err)
	}
	sp, err := storepath.Parse(info.Path)
	if err != nil {
		t.Fatal(err)
	}
	narHash, err := nixhash.Parse(info.NarHash)
	if err != nil {
		t.Fatal(err)
	}
	fp, err := narinfo.Fingerprint(sp, narHash, info.NarSize, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !pk.Verify(fp, sig) {
		t.Errorf("Nix's signature %s with Cairn's key does not verify under Cairn's public key", sig)
	}
	if got := sk.Sign(fp); got != sig {
		t.Errorf("Cairn signs %s, Nix signed %s with the same key file", got, sig)
	}

	nixSec, nixPub := filepath.Join(dir, "nix.sec"), filepath.Join(dir, "nix.pub")
	nixtest.Run(t, nil, "nix-store", "--generate-binary-cache-key", "nix-test-1", nixSec, nixPub)
	want, _ := readKeyFile(t, nixPub)
	if out, err := runKeyCmd(t, "", "key", "public", nixSec); err != nil || out != want+"\n" {
		t.Errorf("key public of Nix's secret key = %q, %v; want %q", out, err, want+"\n")
	}
}
