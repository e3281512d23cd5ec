package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The durability marker. An add is acknowledged once its rows are committed,
// before its files are on disk; the store's syncer (durable.go) makes them
// durable shortly after and then records how far it got in
// STATE/db/cairn-durable:
//
//	marker  := slot slot                  two slots of markerSlot bytes, at 0 and markerSlot
//	slot    := "cairn-durable 1 " seq " " boot " " synced " " crc "\n" { "\n" }
//	seq     := decimal                    which write this is: the valid slot with the higher seq counts
//	boot    := word                       the boot id (/proc/sys/kernel/random/boot_id) of the
//	                                      system that synced; "unknown" if it could not be read,
//	                                      "sync-failed" after a failed sync, "new" in a fresh marker
//	synced  := decimal                    every ValidPaths row with id <= synced had its files
//	                                      (data, inodes, names) and its row on disk
//	crc     := 8 hex digits               CRC-32C of the slot's text before " " crc
//
// ValidPaths.id is autoincrement in Nix's schema: every commit's ids exceed
// every id committed before it and are never reused. So after a crash, only
// rows above synced can name files that did not reach the disk, and only if
// the system went down meanwhile (a process dying loses nothing the kernel
// has): when the boot id read at open is not the marker's, those rows are
// suspects, rehashed and invalidated if their contents do not match
// (recoverSuspects). A marker is "fresh" (seq 0) when it was just created: the
// first opener adopts the store's rows as they are.
//
// A slot is rewritten in place (a pwrite into a file whose size never
// changes: no inode made or freed) and is not synced by itself. It need not
// be: it only ever claims what a finished syncfs made durable, so losing it
// costs the next open after a crash some rehashing, never a wrong answer.
// Writers hold the file's flock from before their syncfs (of the database's
// file system too) to after their write, so every write is preceded by a
// syncfs that flushed the one before it: at most one slot is waiting to be
// written at any time. The slots are in separate 4 KiB blocks, so a write torn
// by a power loss spoils only that slot, and the other holds the previous,
// smaller, still true synced (and is on disk). Within a boot synced only grows.
const (
	markerName  = "cairn-durable"
	markerSlot  = 4096
	markerMagic = "cairn-durable 1"
	// markerFailed is the boot id written when a sync failed: the rows
	// above synced stay suspects until an open rehashes them.
	markerFailed = "sync-failed"
	// markerNew is the boot id of a fresh marker (seq 0).
	markerNew = "new"
	// bootUnknown stands for a boot id that could not be read; it matches
	// no marker, so every open checks the rows above synced.
	bootUnknown = "unknown"
	// maxBootID bounds the boot id read from /proc.
	maxBootID = 64
)

// markerRecord is one slot's contents.
type markerRecord struct {
	seq    uint64
	boot   string
	synced int64
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// encode returns the slot's bytes, padded with newlines.
func (r markerRecord) encode() []byte {
	b := fmt.Appendf(nil, "%s %d %s %d", markerMagic, r.seq, r.boot, r.synced)
	b = fmt.Appendf(b, " %08x\n", crc32.Checksum(b, castagnoli))
	// The fields are bounded (a boot id of at most maxBootID), so the line
	// always fits.
	return append(b, bytes.Repeat([]byte{'\n'}, max(0, markerSlot-len(b)))...)
}

// parseMarkerSlot reads one slot; ok is false for a torn or empty one.
func parseMarkerSlot(b []byte) (r markerRecord, ok bool) {
	line, _, found := bytes.Cut(b, []byte{'\n'})
	if !found {
		return r, false
	}
	i := bytes.LastIndexByte(line, ' ')
	if i < 0 {
		return r, false
	}
	sum, err := strconv.ParseUint(string(line[i+1:]), 16, 32)
	if err != nil || len(line)-i-1 != 8 || uint32(sum) != crc32.Checksum(line[:i], castagnoli) {
		return r, false
	}
	rest, found := bytes.CutPrefix(line[:i], []byte(markerMagic+" "))
	if !found {
		return r, false
	}
	f := strings.Fields(string(rest))
	if len(f) != 3 || len(f[1]) > maxBootID {
		return r, false
	}
	if r.seq, err = strconv.ParseUint(f[0], 10, 64); err != nil {
		return r, false
	}
	if r.synced, err = strconv.ParseInt(f[2], 10, 64); err != nil || r.synced < 0 {
		return r, false
	}
	r.boot = f[1]
	return r, true
}

// markerFile is the open marker.
type markerFile struct {
	fd   int
	path string
}

// openMarker opens the marker in dbDir, creating one holding first (in both
// slots) if there is none: written in full under a temporary name, made
// durable and renamed into place without replacing one another process made
// meanwhile.
func openMarker(dbDir string, first markerRecord) (*markerFile, error) {
	for {
		m, err := openExistingMarker(dbDir)
		if m != nil || err != nil {
			return m, err
		}
		if err := createMarker(dbDir, filepath.Join(dbDir, markerName), first); err != nil {
			return nil, err
		}
	}
}

// openExistingMarker opens the marker in dbDir; nil, and no error, if there
// is none.
func openExistingMarker(dbDir string) (*markerFile, error) {
	path := filepath.Join(dbDir, markerName)
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return &markerFile{fd: fd, path: path}, nil
}

func createMarker(dbDir, path string, first markerRecord) error {
	tmp, err := os.CreateTemp(dbDir, ".tmp-"+markerName+"-")
	if err != nil {
		return err
	}
	placed := false
	defer func() {
		if !placed {
			os.Remove(tmp.Name())
		}
	}()
	rec := first.encode()
	_, err = tmp.Write(append(rec, rec...))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	err = unix.Renameat2(unix.AT_FDCWD, tmp.Name(), unix.AT_FDCWD, path, unix.RENAME_NOREPLACE)
	placed = err == nil
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// No renameat2 here: a link does not replace either.
		err = unix.Linkat(unix.AT_FDCWD, tmp.Name(), unix.AT_FDCWD, path, 0)
	}
	if errors.Is(err, unix.EEXIST) {
		return nil // another process made it
	}
	if err != nil {
		return &os.PathError{Op: "create", Path: path, Err: err}
	}
	return fsyncPath(dbDir)
}

// fsyncPath fsyncs the directory or file at path.
func fsyncPath(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	if err := unix.Fsync(fd); err != nil {
		return &os.PathError{Op: "fsync", Path: path, Err: err}
	}
	return nil
}

// lock takes the marker's flock, exclusive.
func (m *markerFile) lock(ctx context.Context) error {
	if err := flock(ctx, m.fd, unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", m.path, err)
	}
	return nil
}

func (m *markerFile) unlock() { unix.Flock(m.fd, unix.LOCK_UN) }

// read returns the current record, and which slot holds it. ok is false when
// neither slot is valid (then nothing can be trusted).
func (m *markerFile) read() (r markerRecord, slot int, ok bool, err error) {
	buf := make([]byte, 2*markerSlot)
	n, err := unix.Pread(m.fd, buf, 0)
	if err != nil {
		return r, 0, false, &os.PathError{Op: "read", Path: m.path, Err: err}
	}
	buf = buf[:n]
	for i := range 2 {
		if len(buf) < (i+1)*markerSlot {
			break
		}
		got, valid := parseMarkerSlot(buf[i*markerSlot : (i+1)*markerSlot])
		if valid && (!ok || got.seq > r.seq) {
			r, slot, ok = got, i, true
		}
	}
	return r, slot, ok, nil
}

// write records r (whose seq must exceed the current one) in the slot that
// does not hold the current record. It does not wait for the disk: see the
// package's note on the marker above.
func (m *markerFile) write(r markerRecord, cur int) error {
	off := int64((1 - cur) * markerSlot)
	if _, err := unix.Pwrite(m.fd, r.encode(), off); err != nil {
		return &os.PathError{Op: "write", Path: m.path, Err: err}
	}
	return nil
}

func (m *markerFile) close() {
	if m != nil && m.fd >= 0 {
		unix.Close(m.fd)
		m.fd = -1
	}
}

// bootID returns this boot's id, or bootUnknown when it cannot be read.
func bootID() string {
	f, err := os.Open("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return bootUnknown
	}
	defer f.Close()
	buf := make([]byte, maxBootID+1)
	n, _ := f.Read(buf)
	id := strings.TrimSpace(string(buf[:n]))
	if id == "" || len(id) > maxBootID || strings.ContainsAny(id, " \t\n") || id == markerFailed || id == markerNew {
		return bootUnknown
	}
	return id
}
