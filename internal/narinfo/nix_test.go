package narinfo

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cairn/internal/nixhash"
	"cairn/internal/storepath"
	"cairn/internal/testutil/nixtest"
)

type pathInfoJSON struct {
	Path       string   `json:"path"`
	NarHash    string   `json:"narHash"`
	NarSize    uint64   `json:"narSize"`
	References []string `json:"references"`
	Signatures []string `json:"signatures"`
}

// testKey is a key pair and the files holding it.
type testKey struct {
	sk               SecretKey
	pk               PublicKey
	secFile, pubFile string
}

// nixKey has Nix generate a key pair, which Cairn then parses.
func nixKey(t *testing.T, dir, name string) testKey {
	k := testKey{secFile: filepath.Join(dir, name+".sec"), pubFile: filepath.Join(dir, name+".pub")}
	nixtest.Run(t, nil, "nix-store", "--generate-binary-cache-key", name, k.secFile, k.pubFile)
	var err error
	if k.sk, err = ParseSecretKey(readFile(t, k.secFile)); err != nil {
		t.Fatal(err)
	}
	if k.pk, err = ParsePublicKey(readFile(t, k.pubFile)); err != nil {
		t.Fatal(err)
	}
	return k
}

// cairnKey generates a key pair in Cairn and writes it as Nix would.
func cairnKey(t *testing.T, dir, name string) testKey {
	sk, pk, err := GenerateKey(name, nil)
	if err != nil {
		t.Fatal(err)
	}
	k := testKey{sk: sk, pk: pk, secFile: filepath.Join(dir, name+".sec"), pubFile: filepath.Join(dir, name+".pub")}
	if err := os.WriteFile(k.secFile, []byte(sk.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(k.pubFile, []byte(pk.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return k
}

// TestNixSigning checks signatures both ways against Nix 2.8, with keys made by
// Nix and by Cairn: Nix signs a path in a throwaway store and Cairn verifies the
// signature over its own fingerprint (and makes the identical signature); Cairn
// signs the path's narinfo in a file:// cache and `nix store verify` accepts it.
func TestNixSigning(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix")
	dir := t.TempDir()
	st := nixtest.NewStore(t)

	// A content-addressed path to refer to, and an input-addressed path that
	// refers to it and to itself. Input-addressed, so that Nix really checks
	// signatures (content-addressed paths are trusted without them).
	dep := filepath.Join(dir, "dep.txt")
	if err := os.WriteFile(dep, []byte("dependency\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	depPath := st.Run(t, nil, "nix-store", "--add", dep)
	outPath := "/nix/store/3k4x8vq2w0c7hz1mfgrwg3k2dh9ld6s1-signed"
	content := filepath.Join(dir, "out")
	if err := os.WriteFile(content, []byte("#!/bin/sh\necho "+outPath+" "+depPath+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	nar, err := nixtest.Output(nil, "nix-store", "--dump", content)
	if err != nil {
		t.Fatal(err)
	}
	st.Run(t, nixtest.ExportStream(nar, outPath, []string{depPath, outPath}, "/nix/store/9sywk8y9zb6m4ps5vgj7ajqpk7mwli6l-t.drv"),
		"nix-store", "--import")

	for _, src := range []struct {
		name string
		make func(*testing.T, string, string) testKey
	}{{"nix key", nixKey}, {"cairn key", cairnKey}} {
		t.Run(src.name, func(t *testing.T) {
			kdir := t.TempDir()
			key := src.make(t, kdir, strings.ReplaceAll(src.name, " ", "-")+"-1")
			decoy := cairnKey(t, kdir, "decoy-1")

			// Cairn signs, Nix verifies.
			cache := filepath.Join(t.TempDir(), "cache")
			st.Run(t, nil, "nix", "copy", "--to", "file://"+cache+"?compression=none", outPath)
			niFile := filepath.Join(cache, strings.TrimPrefix(outPath, "/nix/store/")[:storepath.HashPartLen]+".narinfo")
			ni, err := ParseString(store, readFile(t, niFile))
			if err != nil {
				t.Fatal(err)
			}
			if ni.Verify([]PublicKey{key.pk}) {
				t.Fatal("narinfo verifies before Cairn signed it")
			}
			if err := ni.Sign(key.sk); err != nil {
				t.Fatal(err)
			}
			text, err := ni.MarshalText()
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(niFile, text, 0o644); err != nil {
				t.Fatal(err)
			}
			verify := func(pub string) error {
				_, err := nixtest.Output(nil, "nix", "store", "verify", "--store", "file://"+cache,
					"--trusted-public-keys", pub, "--sigs-needed", "1", outPath)
				return err
			}
			if err := verify(key.pk.String()); err != nil {
				t.Errorf("nix store verify rejects Cairn's signature: %v", err)
			}
			// Control: the same name with other key bytes must fail, or the
			// check above proves nothing.
			impostor := key.pk.Name() + ":" + strings.SplitN(decoy.pk.String(), ":", 2)[1]
			if err := verify(impostor); err == nil {
				t.Error("nix store verify accepts the signature under the wrong key")
			}

			// Nix signs, Cairn verifies.
			st.Run(t, nil, "nix", "store", "sign", "-k", key.secFile, outPath)
			var infos []pathInfoJSON
			if err := json.Unmarshal([]byte(st.Run(t, nil, "nix", "path-info", "--json", outPath)), &infos); err != nil || len(infos) != 1 {
				t.Fatalf("path-info JSON: %v", err)
			}
			info := infos[0]
			narHash, err := nixhash.Parse(info.NarHash)
			if err != nil {
				t.Fatal(err)
			}
			var refs []storepath.StorePath
			for _, r := range info.References {
				refs = append(refs, mustPath(t, r))
			}
			fp, err := Fingerprint(mustPath(t, info.Path), narHash, info.NarSize, refs)
			if err != nil {
				t.Fatal(err)
			}
			if want, _ := ni.Fingerprint(); fp != want {
				t.Errorf("fingerprint from path-info %q differs from the narinfo's %q", fp, want)
			}
			var nixSig Signature
			for _, s := range info.Signatures {
				if sig, err := ParseSignature(s); err == nil && sig.Name() == key.pk.Name() {
					nixSig = sig
				}
			}
			if nixSig.IsZero() {
				t.Fatalf("no signature by %s in %q", key.pk.Name(), info.Signatures)
			}
			if !VerifyAny(fp, []Signature{nixSig}, []PublicKey{decoy.pk, key.pk}) {
				t.Error("Cairn rejects Nix's signature")
			}
			if got := key.sk.Sign(fp); got != nixSig {
				t.Errorf("Cairn's signature %s differs from Nix's %s", got, nixSig)
			}
		})
	}
}
