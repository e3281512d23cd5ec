package nar

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
)

// CaseHackSuffix marks a name renamed by the case hack; a counter follows it.
const CaseHackSuffix = "~nix~case~hack~"

// DumpOptions adjusts Dump.
type DumpOptions struct {
	// CaseHack undoes RestoreOptions.CaseHack: every name loses everything from
	// CaseHackSuffix onward, and two names that become equal are an error.
	CaseHack bool
}

// Dump writes the tree at path (a directory, regular file or symlink, which is
// not followed) as a NAR to w, byte for byte as `nix-store --dump` does. Every
// file below the root is opened relative to its directory's descriptor without
// following symlinks. Memory use does not depend on file sizes.
func Dump(w io.Writer, path string, opts DumpOptions) error {
	// The write buffer is reused: an export dumps thousands of small paths.
	bw := dumpBuffers.Get().(*bufio.Writer)
	bw.Reset(w)
	defer func() {
		bw.Reset(nil)
		dumpBuffers.Put(bw)
	}()
	nw := &Writer{w: bw, dst: w}
	d := &dumper{w: nw, opts: opts}
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		return &os.PathError{Op: "dump nar", Path: path, Err: err}
	}
	if err := d.dump(atFDCWD, path, path, "", st.Mode&syscall.S_IFMT); err != nil {
		return err
	}
	if err := nw.Close(); err != nil {
		return fmt.Errorf("dump nar %s: %w", path, err)
	}
	return nil
}

var dumpBuffers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, writeBufferSize) }}

type dumper struct {
	w    *Writer
	opts DumpOptions
	link [MaxTargetLen + 1]byte
}

// dump writes the node name in dirfd; disk is its path for messages, narPath its
// Header.Path, and format the S_IFMT bits seen in the directory listing.
func (d *dumper) dump(dirfd int, name, disk, narPath string, format uint32) error {
	switch format {
	case syscall.S_IFLNK:
		n, err := readlinkat(dirfd, name, d.link[:])
		if err != nil {
			return &os.PathError{Op: "dump nar: readlink", Path: disk, Err: err}
		}
		if n > MaxTargetLen {
			return fmt.Errorf("dump nar %s: symlink target longer than %d bytes", disk, MaxTargetLen)
		}
		return d.header(disk, &Header{Path: narPath, Type: TypeSymlink, LinkTarget: string(d.link[:n])})
	case syscall.S_IFREG:
		fd, err := openat(dirfd, name, syscall.O_RDONLY|syscall.O_NOFOLLOW, 0)
		if err != nil {
			return &os.PathError{Op: "dump nar: open", Path: disk, Err: err}
		}
		f := os.NewFile(uintptr(fd), disk)
		defer f.Close()
		var st syscall.Stat_t
		if err := syscall.Fstat(fd, &st); err != nil {
			return &os.PathError{Op: "dump nar: stat", Path: disk, Err: err}
		}
		if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
			return fmt.Errorf("dump nar %s: file changed type while reading", disk)
		}
		h := &Header{Path: narPath, Type: TypeRegular, Size: st.Size, Executable: st.Mode&syscall.S_IXUSR != 0}
		if err := d.header(disk, h); err != nil {
			return err
		}
		if _, err := d.w.readFrom(f, st.Size); err != nil {
			return fmt.Errorf("dump nar %s: %w", disk, err)
		}
		return nil
	case syscall.S_IFDIR:
		fd, err := openat(dirfd, name, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW, 0)
		if err != nil {
			return &os.PathError{Op: "dump nar: open", Path: disk, Err: err}
		}
		f := os.NewFile(uintptr(fd), disk)
		defer f.Close()
		ents, err := f.ReadDir(-1)
		if err != nil {
			return &os.PathError{Op: "dump nar: read directory", Path: disk, Err: err}
		}
		type entry struct {
			narName string // the name in the archive
			ent     os.DirEntry
		}
		list := make([]entry, len(ents))
		for i, e := range ents {
			list[i] = entry{e.Name(), e}
			if d.opts.CaseHack {
				if j := strings.Index(e.Name(), CaseHackSuffix); j >= 0 {
					list[i].narName = e.Name()[:j]
				}
			}
		}
		sort.Slice(list, func(i, j int) bool { return list[i].narName < list[j].narName })
		for i := 1; i < len(list); i++ {
			if list[i].narName == list[i-1].narName {
				return fmt.Errorf("dump nar %s: file name collision between %q and %q", disk, list[i-1].ent.Name(), list[i].ent.Name())
			}
		}
		if err := d.header(disk, &Header{Path: narPath, Type: TypeDirectory}); err != nil {
			return err
		}
		for _, e := range list {
			child := e.narName
			if narPath != "" {
				child = narPath + "/" + e.narName
			}
			var format uint32
			switch t := e.ent.Type(); {
			case t.IsRegular():
				format = syscall.S_IFREG
			case t.IsDir():
				format = syscall.S_IFDIR
			case t&os.ModeSymlink != 0:
				format = syscall.S_IFLNK
			}
			if err := d.dump(fd, e.ent.Name(), filepath.Join(disk, e.ent.Name()), child, format); err != nil {
				return err
			}
		}
		return nil
	default:
		return fmt.Errorf("dump nar %s: unsupported file type", disk)
	}
}

func (d *dumper) header(disk string, h *Header) error {
	if err := d.w.WriteHeader(h); err != nil {
		return fmt.Errorf("dump nar %s: %w", disk, err)
	}
	return nil
}
