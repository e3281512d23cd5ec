package build

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"cairn/internal/sandbox"
	"cairn/internal/storepath"
)

// Fixed-output builds differ from the rest in two ways: they get a network,
// and their outputs are taken out of the builder's reach before their hashes
// are checked.

// fixedOutputNetwork is the network of a fixed-output build: its own
// network namespace with a user-mode stack (opts.Network; never the host's
// namespace, whose abstract Unix sockets would be in reach), and the /etc
// files that go with it: nsswitch.conf as Nix 2.8 writes it, the host's
// services and hosts, and a resolv.conf naming the stack's DNS forwarder.
// With Network "none" the build has only its loopback interface.
func (b *Builder) fixedOutputNetwork(drvPath storepath.StorePath, opts Options, files []sandbox.File) (*sandbox.Net, []sandbox.File, error) {
	files = append(files, sandbox.File{Path: "/etc/nsswitch.conf", Content: []byte("hosts: files dns\nservices: files\n")})
	for _, name := range []string{"/etc/services", "/etc/hosts"} {
		if data, err := readHostFile(name); err == nil {
			files = append(files, sandbox.File{Path: name, Content: data})
		}
	}
	if opts.Network == "none" {
		return nil, files, nil
	}
	net, err := sandbox.LookNet(opts.Network, !opts.IsolateLoopback)
	if err != nil {
		return nil, nil, fmt.Errorf("fixed-output derivation '%s' needs network access (setting fixed-output-network): %w", drvPath, err)
	}
	net.Dir = b.buildsDir
	resolv, _ := readHostFile("/etc/resolv.conf")
	files = append(files, sandbox.File{Path: "/etc/resolv.conf", Content: sandbox.ResolvConf(resolv)})
	return net, files, nil
}

// readHostFile reads one of the host's /etc files, up to the size of a
// sandbox file.
func readHostFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, sandbox.MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > sandbox.MaxFileSize {
		return nil, fmt.Errorf("read %s: larger than %d bytes", name, sandbox.MaxFileSize)
	}
	return data, nil
}

// isolateFixedOutput copies the fixed output the builder left at src, as
// new inodes, into a new directory of the builds dir (0700, the daemon's),
// before its hash is checked: a process that kept a descriptor of the
// builder's files (one passed out of the sandbox, say) cannot change what
// is hashed and registered. It returns the copy's path and a function that
// removes the directory.
func (b *Builder) isolateFixedOutput(src string) (string, func(), error) {
	dir, err := os.MkdirTemp(b.buildsDir, "fixed-")
	if err != nil {
		return "", nil, err
	}
	cleanup := func() { removeAll(dir) }
	dst := filepath.Join(dir, filepath.Base(src))
	fi, err := os.Lstat(src)
	if err == nil && fi.Mode().IsRegular() {
		err = copyFile(src, dst, fi.Mode()&0o100 != 0)
	} else if err == nil {
		err = copyTree(src, dst)
	}
	if err != nil {
		cleanup()
		return "", nil, fmt.Errorf("copy fixed output %s: %w", src, err)
	}
	return dst, cleanup, nil
}

// copyFile copies a regular file (a flat output, the common case: one
// download) to the new file dst: io.Copy between files is copy_file_range,
// which shares the blocks where the file system can (a reflink is a copy
// too: a write through the old file does not change it).
func copyFile(src, dst string, executable bool) error {
	in, err := os.OpenFile(src, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	mode := os.FileMode(0o644)
	if executable {
		mode = 0o755
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return canonicalise(dst, nil)
}
