package build

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ulikunitz/xz"

	"cairn/internal/derivation"
	"cairn/internal/nixhash"
	"cairn/internal/testutil/nixtest"
)

// channelTarball is a channel-like .tar.xz: one top-level directory with
// nested expressions, executables, symlinks and hard links.
func channelTarball(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, body string) {
		h.Size = int64(len(body))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	add(&tar.Header{Name: "nixexprs-21.11/", Typeflag: tar.TypeDir, Mode: 0o755}, "")
	for i := range 200 {
		body := strings.Repeat(fmt.Sprintf("{ x%d = %d; }\n", i, i), i)
		mode := int64(0o644)
		if i%7 == 0 {
			mode = 0o755
		}
		add(&tar.Header{Name: fmt.Sprintf("nixexprs-21.11/pkgs/d%d/default.nix", i%13), Typeflag: tar.TypeReg, Mode: mode}, body)
		add(&tar.Header{Name: fmt.Sprintf("nixexprs-21.11/pkgs/d%d/f%d", i%13, i), Typeflag: tar.TypeReg, Mode: mode}, body)
	}
	add(&tar.Header{Name: "nixexprs-21.11/.version-suffix", Typeflag: tar.TypeReg, Mode: 0o644}, "pre123.abc")
	add(&tar.Header{Name: "nixexprs-21.11/default.nix", Typeflag: tar.TypeSymlink, Linkname: "pkgs/d0/default.nix"}, "")
	add(&tar.Header{Name: "nixexprs-21.11/svn-revision", Typeflag: tar.TypeLink, Linkname: "nixexprs-21.11/.version-suffix"}, "")
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var xzBuf bytes.Buffer
	w, err := xz.NewWriter(&xzBuf)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(buf.Bytes())
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return xzBuf.Bytes()
}

// TestBuiltinUnpackChannelNix builds the derivation nix-channel's
// unpack-channel.nix makes, with Nix 2.8 (`nix-store -r` on a chroot store)
// and with Cairn's builder (what `cairn build` runs) on another: the same
// .drv path, output path and NAR hash.
func TestBuiltinUnpackChannelNix(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix-instantiate")
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "nixexprs.tar.xz")
	if err := os.WriteFile(file, channelTarball(t), 0o644); err != nil {
		t.Fatal(err)
	}
	ns := nixtest.NewStore(t)
	expr := fmt.Sprintf(`derivation { name = "nixpkgs-21.11"; channelName = "nixpkgs"; src = %s; `+
		`builder = "builtin:unpack-channel"; system = "builtin"; preferLocalBuild = true; }`, file)
	nixDrv := ns.Run(t, nil, "nix-instantiate", "--expr", expr)
	// No build users: the daemon package's tests build as the nixbld users
	// meanwhile, and Nix kills every process of a build user it takes.
	nixOut := ns.Run(t, nil, "nix-store", "--option", "build-users-group", "", "-r", nixDrv)
	nixHash := ns.Run(t, nil, "nix-store", "-q", "--hash", nixOut)

	st := testStore(t)
	if _, err := st.AddPaths(ctx, []string{file}, nixhash.Recursive, nixhash.SHA256); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(ns.Root, nixDrv))
	if err != nil {
		t.Fatal(err)
	}
	d, err := derivation.Parse(st.StoreDir(), data, "nixpkgs-21.11")
	if err != nil {
		t.Fatal(err)
	}
	drv, err := AddDerivation(ctx, st, d)
	if err != nil {
		t.Fatal(err)
	}
	if drv.String() != nixDrv {
		t.Fatalf("derivation %s, Nix %s", drv, nixDrv)
	}
	b := newBuilder(t, st)
	res, err := b.Build(ctx, []Target{{Drv: drv}}, Options{MaxJobs: 1, Sandbox: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Status != Built {
		t.Fatalf("status %d: %v", res[0].Status, res[0].Err)
	}
	out := res[0].Outputs["out"]
	if out.String() != nixOut {
		t.Fatalf("output %s, Nix %s", out, nixOut)
	}
	info, err := st.QueryPathInfo(ctx, out)
	if err != nil {
		t.Fatal(err)
	}
	if got := info.NarHash.String(); got != nixHash {
		t.Errorf("NAR hash %s, Nix %s", got, nixHash)
	}
	if target, err := os.Readlink(filepath.Join(st.RealPath(out), "nixpkgs", "default.nix")); err != nil || target != "pkgs/d0/default.nix" {
		t.Errorf("default.nix -> %q %v", target, err)
	}
}
