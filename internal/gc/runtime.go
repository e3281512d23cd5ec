package gc

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"cairn/internal/gcroots"
	"cairn/internal/storepath"
)

// Limits on what is read from /proc.
const (
	// maxProcFile bounds one maps or environ file.
	maxProcFile = 16 << 20
	// maxProcLink bounds one symlink target.
	maxProcLink = 4096
)

// A RuntimeRoot is a file a running process uses (Target), and where that was
// seen (Link: /proc/PID/exe, /proc/PID/maps, …).
type RuntimeRoot struct{ Link, Target string }

// RuntimeRoots returns what running processes use (targets of /proc/PID/exe,
// cwd and fd/*, mapped files, store paths named in environments); the
// collector keeps the valid store paths among them.
type RuntimeRoots func(ctx context.Context, dir storepath.StoreDir) ([]RuntimeRoot, error)

// RuntimeRootsOf turns runtime roots into roots: the valid store paths among
// their targets.
func RuntimeRootsOf(rs []RuntimeRoot, dir storepath.StoreDir, valid func(storepath.StorePath) bool) []gcroots.Root {
	var out []gcroots.Root
	for _, r := range rs {
		if !strings.HasPrefix(r.Target, string(dir)+"/") {
			continue
		}
		if p, _, err := dir.ToStorePath(r.Target); err == nil && (valid == nil || valid(p)) {
			out = append(out, gcroots.Root{Link: r.Link, Path: p})
		}
	}
	return out
}

// SortRoots sorts roots by link, then path, as nix-store --print-roots
// prints them.
func SortRoots(rs []gcroots.Root) {
	slices.SortFunc(rs, func(a, b gcroots.Root) int {
		if c := strings.Compare(a.Link, b.Link); c != 0 {
			return c
		}
		return strings.Compare(a.Path.String(), b.Path.String())
	})
}

// ProcRoots reads the runtime roots from /proc as Nix 2.8 does on Linux,
// skipping whatever this process may not read (other users' processes when
// it is not root).
func ProcRoots(ctx context.Context, dir storepath.StoreDir) ([]RuntimeRoot, error) {
	return procRoots(ctx, "/proc", dir)
}

func procRoots(ctx context.Context, proc string, dir storepath.StoreDir) ([]RuntimeRoot, error) {
	var out []RuntimeRoot
	ents, err := os.ReadDir(proc)
	if err != nil {
		if skippable(err) {
			return nil, nil
		}
		return nil, err
	}
	prefix := string(dir) + "/"
	link := func(name string) {
		if t, ok := readLink(name); ok && strings.HasPrefix(t, "/") {
			out = append(out, RuntimeRoot{Link: name, Target: t})
		}
	}
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if !allDigits(e.Name()) {
			continue
		}
		pd := proc + "/" + e.Name()
		link(pd + "/exe")
		link(pd + "/cwd")
		fds, err := os.ReadDir(pd + "/fd")
		if err != nil {
			continue
		}
		for _, f := range fds {
			link(pd + "/fd/" + f.Name())
		}
		if data, ok := readSmall(pd + "/maps"); ok {
			for _, line := range strings.Split(string(data), "\n") {
				// address perms offset dev inode pathname
				fields := strings.Fields(line)
				if len(fields) == 6 && strings.HasPrefix(fields[5], "/") {
					out = append(out, RuntimeRoot{Link: pd + "/maps", Target: fields[5]})
				}
			}
		}
		if data, ok := readSmall(pd + "/environ"); ok {
			for _, p := range storePathsIn(string(data), prefix) {
				out = append(out, RuntimeRoot{Link: pd + "/environ", Target: p})
			}
		}
	}
	for _, f := range []string{"sys/kernel/modprobe", "sys/kernel/fbsplash", "sys/kernel/poweroff_cmd"} {
		if data, ok := readSmall(proc + "/" + f); ok {
			out = append(out, RuntimeRoot{Link: proc + "/" + f, Target: string(data)})
		}
	}
	return out, nil
}

func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// storePathsIn finds what Nix's regex STOREDIR/[0-9a-z]+[0-9a-zA-Z+\-._?=]*
// matches in s.
func storePathsIn(s, prefix string) []string {
	var out []string
	for {
		i := strings.Index(s, prefix)
		if i < 0 {
			return out
		}
		j := i + len(prefix)
		k := j
		for k < len(s) && (s[k] >= '0' && s[k] <= '9' || s[k] >= 'a' && s[k] <= 'z') {
			k++
		}
		if k > j {
			for k < len(s) && isPathChar(s[k]) {
				k++
			}
			out = append(out, s[i:k])
		}
		s = s[k:]
	}
}

func isPathChar(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || strings.IndexByte("+-._?=", c) >= 0
}

func skippable(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) || errors.Is(err, unix.ESRCH) ||
		errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTDIR)
}

func readLink(name string) (string, bool) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Readlink(name, buf)
		if err != nil {
			return "", false
		}
		if n < len(buf) {
			return string(buf[:n]), true
		}
		if len(buf) >= maxProcLink {
			return "", false
		}
		buf = make([]byte, 2*len(buf))
	}
}

// readSmall reads a /proc file of at most maxProcFile bytes; false when it
// cannot (gone, not permitted, too long).
func readSmall(name string) ([]byte, bool) {
	f, err := os.Open(name)
	if err != nil {
		return nil, false
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxProcFile+1))
	if err != nil || len(data) > maxProcFile {
		return nil, false
	}
	return data, true
}
