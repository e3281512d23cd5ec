package local

import (
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"cairn/internal/derivation"
	"cairn/internal/storepath"
)

// readDrvOutputs parses the derivation a temporary holds and returns its
// statically known outputs (input-addressed and fixed), which registration puts
// into DerivationOutputs. Floating and deferred outputs have no path yet.
func (s *Store) readDrvOutputs(t *slot, p storepath.StorePath) (map[string]storepath.StorePath, error) {
	if t.fd >= 0 {
		// Unnamed (tmpfile.go): read from the start through a copy of its
		// descriptor (nothing else reads or writes through it).
		fd, err := unix.FcntlInt(uintptr(t.fd), unix.F_DUPFD_CLOEXEC, 0)
		if err == nil {
			_, err = unix.Seek(fd, 0, io.SeekStart)
		}
		if err != nil {
			return nil, &os.PathError{Op: "read derivation", Path: t.contentPath(), Err: err}
		}
		return s.parseDrvOutputs(os.NewFile(uintptr(fd), t.contentPath()), p)
	}
	fd, err := openat(t.dirfd, t.name, unix.O_RDONLY|unix.O_NOFOLLOW)
	if err != nil {
		return nil, &os.PathError{Op: "open derivation", Path: t.contentPath(), Err: err}
	}
	return s.parseDrvOutputs(os.NewFile(uintptr(fd), t.contentPath()), p)
}

// readDrvFile is readDrvOutputs for a derivation already at its real path.
func (s *Store) readDrvFile(real string, p storepath.StorePath) (map[string]storepath.StorePath, error) {
	fd, err := openat(unix.AT_FDCWD, real, unix.O_RDONLY|unix.O_NOFOLLOW)
	if err != nil {
		return nil, &os.PathError{Op: "open derivation", Path: real, Err: err}
	}
	return s.parseDrvOutputs(os.NewFile(uintptr(fd), real), p)
}

func (s *Store) parseDrvOutputs(f *os.File, p storepath.StorePath) (map[string]storepath.StorePath, error) {
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxTextSize+1))
	if err != nil {
		return nil, fmt.Errorf("read derivation %s: %w", p, err)
	}
	if len(data) > MaxTextSize {
		return nil, fmt.Errorf("read derivation %s: longer than %d bytes", p, MaxTextSize)
	}
	drv, err := derivation.Parse(s.dir, data, strings.TrimSuffix(p.Name(), storepath.DrvExtension))
	if err != nil {
		return nil, fmt.Errorf("register %s: %w", p, err)
	}
	outs := map[string]storepath.StorePath{}
	for name, o := range drv.Outputs {
		if !o.Path.IsZero() {
			outs[name] = o.Path
		}
	}
	return outs, nil
}
