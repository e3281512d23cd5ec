package protocol

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"cairn/internal/storepath"
	"cairn/internal/testutil/nixtest"
	"cairn/internal/wire"
)

// TestServeAgainstNix speaks the serve protocol with `nix-store --serve` 2.8
// on a throwaway store: handshake, QueryValidPaths, QueryPathInfos,
// DumpStorePath, and ExportPaths decoded with ExportReader.
func TestServeAgainstNix(t *testing.T) {
	nixtest.Require(t, "nix-store")
	st := nixtest.NewStore(t)
	file := filepath.Join(t.TempDir(), "served.txt")
	os.WriteFile(file, []byte("served\n"), 0o644)
	added := mustPath(t, st.Run(t, nil, "nix-store", "--add", file))

	cmd := exec.Command("nix-store", "--store", st.URL(), "--serve", "--write")
	cmd.Env = nixtest.Env()
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("nix-store --serve: %v\n%s", err, stderr.String())
		}
	}()
	r, w := wire.NewReader(stdout), wire.NewWriter(stdin)
	sv, err := ServeClientHandshake(r, w, ServeVersion)
	if err != nil {
		t.Fatal(err)
	}
	if sv != 0x207 {
		t.Errorf("server version %v", sv)
	}
	v := min(sv, ServeVersion)
	bogus := mustPath(t, "/nix/store/00000000000000000000000000000000-bogus")

	w.Uint64(uint64(ServeQueryValidPaths))
	(&ServeQueryValidPathsArgs{Paths: []storepath.StorePath{added, bogus}}).Write(w)
	w.Flush()
	if got := r.StorePaths(); len(got) != 1 || got[0] != added {
		t.Fatalf("QueryValidPaths = %v, %v", got, r.Err())
	}

	w.Uint64(uint64(ServeQueryPathInfos))
	w.StorePaths([]storepath.StorePath{added, bogus})
	w.Flush()
	infos := ReadServePathInfos(r, v)
	if r.Err() != nil || len(infos) != 1 || infos[0].Path != added || infos[0].NarSize != 120 || infos[0].CA.IsZero() {
		t.Fatalf("QueryPathInfos = %+v, %v", infos, r.Err())
	}
	if infos[0].NarHash.IsZero() {
		t.Fatal("no nar hash")
	}

	w.Uint64(uint64(ServeDumpStorePath))
	w.StorePath(added)
	w.Flush()
	var dump bytes.Buffer
	if err := CopyNAR(&dump, r); err != nil || dump.Len() != 120 {
		t.Fatalf("DumpStorePath: %d bytes, %v", dump.Len(), err)
	}

	w.Uint64(uint64(ServeExportPaths))
	w.Uint64(0)
	w.StorePaths([]storepath.StorePath{added})
	w.Flush()
	er := NewExportReader(r)
	var narBuf bytes.Buffer
	ent, err := er.Next(&narBuf)
	if err != nil || ent.Path != added || !bytes.Equal(narBuf.Bytes(), dump.Bytes()) {
		t.Fatalf("export: %+v %v", ent, err)
	}
	if _, err := er.Next(io.Discard); err != io.EOF {
		t.Fatalf("export end: %v", err)
	}
}

// TestExportRoundTrip decodes `nix-store --export` output and re-encodes it
// byte for byte.
func TestExportRoundTrip(t *testing.T) {
	nixtest.Require(t, "nix-store")
	st := nixtest.NewStore(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a"), []byte("a\n"), 0o644)
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	os.WriteFile(filepath.Join(dir, "d", "x"), []byte("#!/bin/sh\n"), 0o755)
	p1 := st.Run(t, nil, "nix-store", "--add", filepath.Join(dir, "a"))
	p2 := st.Run(t, nil, "nix-store", "--add", filepath.Join(dir, "d"))
	out, err := nixtest.Output(nil, "nix-store", "--store", st.URL(), "--export", p1, p2)
	if err != nil {
		t.Fatal(err)
	}
	er := NewExportReader(wire.NewReader(bytes.NewReader(out)))
	var re bytes.Buffer
	w := wire.NewWriter(&re)
	ew := NewExportWriter(w)
	n := 0
	for {
		var narBuf bytes.Buffer
		ent, err := er.Next(&narBuf)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
		if err := ew.Add(ent, &narBuf); err != nil {
			t.Fatal(err)
		}
	}
	ew.Close()
	w.Flush()
	if n != 2 || !bytes.Equal(re.Bytes(), out) {
		t.Fatalf("%d paths; re-encoding equal: %v", n, bytes.Equal(re.Bytes(), out))
	}
	// Truncated at every offset: an error, never a panic or a clean end.
	for i := 0; i < len(out)-8; i++ {
		er := NewExportReader(wire.NewReader(bytes.NewReader(out[:i])))
		var err error
		for err == nil {
			_, err = er.Next(io.Discard)
		}
		if err == io.EOF {
			t.Fatalf("cut at %d: clean end", i)
		}
	}
}
