package build

import (
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"cairn/internal/narinfo"
	"cairn/internal/store"
	"cairn/internal/storepath"
	"cairn/internal/testutil/nixtest"
)

// TestSecretKeyFiles: with secret-key-files, what a build outputs is
// registered signed by each key, and Nix's own verifier accepts the
// signature; a key file that cannot be read fails the build.
func TestSecretKeyFiles(t *testing.T) {
	requireSandbox(t)
	ctx := context.Background()
	st := testStore(t)
	b := newBuilder(t, st)
	sk, pk, err := narinfo.GenerateKey("cairn-test-1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "key")
	os.WriteFile(keyFile, []byte(sk.String()+"\n"), 0o600)
	dep := addDrv(t, st, "dep", "echo dep > $out", nil, nil)
	top := addDrv(t, st, "top", "echo $dep > $out", map[storepath.StorePath][]string{dep: {"out"}},
		map[string]string{"dep": outPath(t, st, dep, "out").String()})
	opts := testOptions()
	opts.SecretKeyFiles = []string{keyFile}
	res, err := b.Build(ctx, []Target{{Drv: top}}, opts, &testLog{})
	if err != nil || res[0].Err != nil {
		t.Fatal(err, res[0].Err)
	}
	for _, drv := range []storepath.StorePath{dep, top} {
		info, err := st.QueryPathInfo(ctx, outPath(t, st, drv, "out"))
		if err != nil {
			t.Fatal(err)
		}
		checkSigned(t, info, pk)
		if _, err := exec.LookPath("nix"); err == nil {
			// Nix 2.8 checks the signature against the key it is given.
			_, err := nixtest.Output(nil, "nix", "store", "verify", "--store", "local?root="+st.Config().Root,
				"--no-contents", "--sigs-needed", "1", "--option", "trusted-public-keys", pk.String(), info.Path.String())
			if err != nil {
				t.Errorf("nix store verify --sigs-needed 1 %s: %v", info.Path, err)
			}
		}
	}
	bad := addDrv(t, st, "bad", "echo bad > $out", nil, nil)
	opts.SecretKeyFiles = []string{filepath.Join(t.TempDir(), "missing")}
	res, err = b.Build(ctx, []Target{{Drv: bad}}, opts, &testLog{})
	if err == nil && (res[0].Err == nil || !strings.Contains(res[0].Err.Error(), "missing")) {
		t.Errorf("a missing key file: %v", res[0].Err)
	}
	if ok, _ := st.IsValidPath(ctx, outPath(t, st, bad, "out")); ok {
		t.Errorf("an output registered unsigned although its key was missing")
	}
}

func checkSigned(t *testing.T, info *store.PathInfo, pk narinfo.PublicKey) {
	t.Helper()
	fp, err := narinfo.Fingerprint(info.Path, info.NarHash, info.NarSize, info.References)
	if err != nil {
		t.Fatal(err)
	}
	var sigs []narinfo.Signature
	for _, s := range info.Signatures {
		sig, err := narinfo.ParseSignature(s)
		if err != nil {
			t.Fatal(err)
		}
		sigs = append(sigs, sig)
	}
	if !narinfo.VerifyAny(fp, sigs, []narinfo.PublicKey{pk}) {
		t.Errorf("%s: signatures %q do not verify with %s", info.Path, info.Signatures, pk)
	}
}
