package cli

import (
	"archive/tar"
	"bytes"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ulikunitz/xz"

	"cairn/internal/store/storetest"
	"cairn/internal/testutil/nixtest"
)

// TestNixChannelUpdate runs Nix 2.8's `nix-channel --update` of a file://
// channel through `cairn daemon` and through nix-daemon 2.8, each on a
// chroot store: builtin:unpack-channel unpacks nixexprs.tar.xz, then
// nix-env makes the channels profile with builtin:buildenv. The profile's
// closure (paths and NAR hashes) is the same.
func TestNixChannelUpdate(t *testing.T) {
	nixtest.Require(t, "nix-channel", "nix-daemon", "nix-build", "nix-env", "nix-store")
	u, err := user.Current()
	if err != nil {
		t.Skip(err)
	}
	chanDir := filepath.Join(t.TempDir(), "chan")
	os.Mkdir(chanDir, 0o755)
	if err := os.WriteFile(filepath.Join(chanDir, "nixexprs.tar.xz"), channelTarXZ(t), 0o644); err != nil {
		t.Fatal(err)
	}
	cairn := storetest.StartDaemon(t, storetest.BuildCairn(t), "daemon")
	nix := storetest.StartDaemon(t, "nix-daemon")

	closure := func(d *storetest.Daemon) string {
		t.Helper()
		state := filepath.Join(t.TempDir(), "state")
		perUser := filepath.Join(state, "profiles", "per-user", u.Username)
		if err := os.MkdirAll(perUser, 0o755); err != nil {
			t.Fatal(err)
		}
		env := []string{"NIX_REMOTE=unix://" + d.Socket, "HOME=" + t.TempDir(), "NIX_STATE_DIR=" + state}
		for _, args := range [][]string{{"--add", "file://" + chanDir, "mychan"}, {"--update"}} {
			if out, err := nixtest.OutputEnv(env, "nix-channel", args...); err != nil {
				t.Fatalf("nix-channel %s through %s: %v\n%s", args[0], d.Cmd.Path, err, out)
			}
		}
		profile, err := os.Readlink(filepath.Join(perUser, "channels-1-link"))
		if err != nil {
			t.Fatal(err)
		}
		paths, err := nixtest.OutputEnv(env, "nix-store", "-qR", profile)
		if err != nil {
			t.Fatal(err)
		}
		var lines []string
		for p := range strings.FieldsSeq(string(paths)) {
			h, err := nixtest.OutputEnv(env, "nix-store", "-q", "--hash", p)
			if err != nil {
				t.Fatal(err)
			}
			lines = append(lines, p+" "+strings.TrimSpace(string(h)))
		}
		return strings.Join(lines, "\n")
	}
	got, want := closure(cairn), closure(nix)
	if got != want || !strings.Contains(got, "-mychan ") {
		t.Errorf("channels profile through cairn daemon:\n%s\nthrough nix-daemon 2.8:\n%s", got, want)
	}
}

// channelTarXZ is a small channel tarball: nixexprs/ with an expression,
// an executable and a symlink.
func channelTarXZ(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range []struct {
		name, body, link string
		typ              byte
		mode             int64
	}{
		{name: "nixexprs/", typ: tar.TypeDir, mode: 0o755},
		{name: "nixexprs/default.nix", body: "{ ... }: { hello = \"world\"; }\n", typ: tar.TypeReg, mode: 0o644},
		{name: "nixexprs/bin/tool", body: "#!/bin/sh\n", typ: tar.TypeReg, mode: 0o744},
		{name: "nixexprs/.version", typ: tar.TypeSymlink, link: "default.nix"},
	} {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, Size: int64(len(e.body))}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	w, err := xz.NewWriter(&out)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(buf.Bytes())
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}
