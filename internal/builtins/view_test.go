package builtins

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestViewResolve(t *testing.T) {
	root := t.TempDir()
	real := filepath.Join(root, "store")
	mk := func(p string) { os.MkdirAll(filepath.Join(real, p), 0o755) }
	mk("aaa-a/bin")
	mk("bbb-b/share")
	mk("ccc-hidden")
	os.WriteFile(filepath.Join(real, "aaa-a/bin/x"), nil, 0o755)
	os.Symlink("/nix/store/bbb-b/share", filepath.Join(real, "aaa-a/share"))
	os.Symlink("../bbb-b", filepath.Join(real, "aaa-a/b"))
	os.Symlink("/nix/store/ccc-hidden", filepath.Join(real, "aaa-a/hidden"))
	os.Symlink("loop", filepath.Join(real, "aaa-a/loop"))
	os.Symlink("/bin/tool", filepath.Join(real, "aaa-a/tool"))
	os.Symlink("/etc/passwd", filepath.Join(real, "aaa-a/passwd"))
	host := filepath.Join(root, "tool")
	os.WriteFile(host, nil, 0o755)
	v := &View{StoreDir: "/nix/store", RealStoreDir: real, Paths: map[string]bool{"aaa-a": true, "bbb-b": true},
		Binds: []Bind{{Target: "/bin/tool", Source: host}}}

	tests := []struct {
		path, logical, host string
		err                 error
	}{
		{"/nix/store/aaa-a/bin/x", "/nix/store/aaa-a/bin/x", real + "/aaa-a/bin/x", nil},
		{"/nix/store/aaa-a/share", "/nix/store/bbb-b/share", real + "/bbb-b/share", nil},
		{"/nix/store/aaa-a/b/share", "/nix/store/bbb-b/share", real + "/bbb-b/share", nil},
		{"/nix/store/aaa-a/bin/../bin/./x", "/nix/store/aaa-a/bin/x", real + "/aaa-a/bin/x", nil},
		{"/nix/store/aaa-a/tool", "/bin/tool", host, nil},
		{"/nix/store", "/nix/store", "", nil},
		{"/", "/", "", nil},
		{"/nix/store/aaa-a/hidden", "", "", syscall.ENOENT},
		{"/nix/store/ccc-hidden", "", "", syscall.ENOENT},
		{"/nix/store/aaa-a/passwd", "", "", syscall.ENOENT},
		{"/etc/passwd", "", "", syscall.ENOENT},
		{"/nix/store/aaa-a/loop", "", "", syscall.ELOOP},
		{"/nix/store/aaa-a/bin/x/y", "", "", syscall.ENOTDIR},
		{"relative", "", "", syscall.EINVAL},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			logical, h, err := v.Resolve(tt.path)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("error %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil || logical != tt.logical || h != tt.host {
				t.Errorf("(%q, %q, %v), want (%q, %q)", logical, h, err, tt.logical, tt.host)
			}
		})
	}
	if _, err := v.ReadDir("/nix/store"); !errors.Is(err, syscall.EACCES) {
		t.Errorf("listing the store: %v", err)
	}
	if fi, err := v.Stat("/nix"); err != nil || !fi.IsDir() {
		t.Errorf("stat /nix: %v", err)
	}
	ents, err := v.ReadDir("/nix/store/aaa-a")
	if err != nil || len(ents) != 7 {
		t.Errorf("ReadDir: %v %v", ents, err)
	}
}
