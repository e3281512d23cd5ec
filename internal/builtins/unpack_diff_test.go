package builtins

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"cairn/internal/nixhash"
	"cairn/internal/testutil/nixtest"
)

// nixError is the first "error: " line of Nix's stderr.
func nixError(stderr string) string {
	for line := range strings.SplitSeq(stderr, "\n") {
		if msg, ok := strings.CutPrefix(line, "error: "); ok {
			return msg
		}
	}
	return stderr
}

// TestUnpackChannelNix realises every table tarball with Nix 2.8's
// builtin:unpack-channel (`nix-store -r` of the derivation
// <nix/unpack-channel.nix> makes, on a chroot store) and runs Cairn's on the
// same derivation's env: the same output NAR hash, or both fail with the
// same message.
func TestUnpackChannelNix(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix-instantiate")
	s := nixtest.NewStore(t)
	tmp := t.TempDir()
	for _, tt := range unpackCases() {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(tmp, tt.name+".tar")
			if err := os.WriteFile(file, tt.data(t), 0o644); err != nil {
				t.Fatal(err)
			}
			expr := fmt.Sprintf(`derivation { name = "ch"; builder = "builtin:unpack-channel"; system = "builtin"; `+
				`channelName = "nixpkgs"; src = %s; preferLocalBuild = true; }`, file)
			drv := s.Run(t, nil, "nix-instantiate", "--expr", expr)
			out := s.Run(t, nil, "nix-store", "-q", "--outputs", drv)
			src := s.Run(t, nil, "nix-store", "-q", "--references", drv)
			// No build users (see build's TestBuiltinUnpackChannelNix).
			nixOut, nixErr := nixtest.Output(nil, "nix-store", "--store", s.URL(), "--option", "build-users-group", "", "-r", drv)

			j := &Job{Builder: "builtin:unpack-channel", Out: filepath.Join(t.TempDir(), "out"),
				View: &View{StoreDir: "/nix/store", RealStoreDir: filepath.Join(s.Root, "nix/store"), Paths: map[string]bool{path.Base(src): true}},
				Env:  map[string]string{"out": out, "src": src, "channelName": "nixpkgs", "name": "ch", "system": "builtin"}}
			err := Run(context.Background(), j)
			if nixErr != nil {
				if err == nil {
					t.Fatalf("Nix failed (%v), Cairn did not", nixErr)
				}
				want := nixError(nixErr.Error())
				if !tt.looseErr && plain(err) != want {
					t.Errorf("error\n%s\nNix:\n%s", plain(err), want)
				}
				return
			}
			if err != nil {
				t.Fatalf("Nix built %s, Cairn failed: %v", nixOut, err)
			}
			h, err := nixhash.Parse(s.Run(t, nil, "nix-store", "-q", "--hash", out))
			if err != nil {
				t.Fatal(err)
			}
			want := h.SRI()
			if got := narHash(t, j.Out); got != want {
				t.Errorf("NAR hash %s, Nix %s\n%q", got, want, listTree(t, j.Out))
			}
		})
	}
}
