package local

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cairn/internal/storepath"
	"cairn/internal/testutil/nixtest"
)

// pathInfoJSON is nix path-info --json of every valid path, without the
// registration time (which differs between any two stores).
func pathInfoJSON(t *testing.T, url string, paths []storepath.StorePath) string {
	t.Helper()
	args := []string{"--store", url, "path-info", "--json"}
	for _, p := range paths {
		args = append(args, p.String())
	}
	out := nixtest.Run(t, nil, "nix", args...)
	var list []map[string]any
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatal(err)
	}
	for _, e := range list {
		delete(e, "registrationTime")
	}
	b, _ := json.MarshalIndent(list, "", " ")
	return string(b)
}

// TestExportImportMatchesNix: Cairn's export is byte-identical to Nix's; Nix's
// export imports into Cairn and Cairn's into Nix, with the same path info.
func TestExportImportMatchesNix(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix")
	ctx := context.Background()
	s, root := newStore(t)
	f := addFixture(t, s)
	all, err := s.QueryAllValidPaths(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, set := range [][]storepath.StorePath{all, {f.tree, f.file}, {f.twinB}} {
		var got bytes.Buffer
		if err := s.Export(ctx, &got, set); err != nil {
			t.Fatal(err)
		}
		args := []string{"--store", storeURL(root), "--export"}
		for _, p := range set {
			args = append(args, p.String())
		}
		want, err := nixtest.Output(nil, "nix-store", args...)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Errorf("export of %v differs from nix-store --export (%d vs %d bytes)", set, got.Len(), len(want))
		}
	}

	var exp bytes.Buffer
	if err := s.Export(ctx, &exp, all); err != nil {
		t.Fatal(err)
	}
	// Cairn → Nix.
	ns := nixtest.NewStore(t)
	nixPrinted := ns.Run(t, exp.Bytes(), "nix-store", "--import")
	// Nix → Cairn.
	nixExp, err := nixtest.Output(nil, "nix-store", append([]string{"--store", ns.URL(), "--export"}, strings.Fields(nixPrinted)...)...)
	if err != nil {
		t.Fatal(err)
	}
	s2, root2 := newStore(t)
	imported, err := s2.Import(ctx, bytes.NewReader(nixExp))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(pathStrings(imported), "\n"); got != nixPrinted {
		t.Errorf("imported:\n%s\nnix-store --import printed:\n%s", got, nixPrinted)
	}
	if a, b := pathInfoJSON(t, ns.URL(), all), pathInfoJSON(t, storeURL(root2), all); a != b {
		t.Errorf("path info after import differs:\nNix:\n%s\nCairn:\n%s", a, b)
	}
	nixVerify(t, root2)
	// Importing again changes nothing and lists the paths again.
	again, err := s2.Import(ctx, bytes.NewReader(nixExp))
	if err != nil || len(again) != len(imported) {
		t.Errorf("second import: %v, %v", again, err)
	}
}

// TestExportRefusesModified: a path whose files changed is not exported.
func TestExportRefusesModified(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	f := addFixture(t, s)
	p := filepath.Join(s.RealPath(f.twinA), "onlyA")
	makeWritable(t, s.RealPath(f.twinA))
	os.WriteFile(p, []byte("B\n"), 0o444)
	var out bytes.Buffer
	err := s.Export(ctx, &out, []storepath.StorePath{f.twinA})
	if err == nil || !strings.Contains(err.Error(), "hash of path '"+f.twinA.String()+"' has changed from") {
		t.Errorf("Export of a modified path: %v", err)
	}
}

// TestImportRejectsBadStreams: a malformed stream registers nothing and leaves
// no temporaries.
func TestImportRejectsBadStreams(t *testing.T) {
	ctx := context.Background()
	src, _ := newStore(t)
	f := addFixture(t, src)
	var good bytes.Buffer
	if err := src.Export(ctx, &good, []storepath.StorePath{f.file, f.tree}); err != nil {
		t.Fatal(err)
	}
	g := good.Bytes()
	// Only the tree's record: its reference to the file is not valid.
	var onlyTree bytes.Buffer
	if err := src.Export(ctx, &onlyTree, []storepath.StorePath{f.tree}); err != nil {
		t.Fatal(err)
	}
	// Offsets: the first record starts at 8; its NAR's length is known from the fixture.
	fileNar := narOf(t, src.RealPath(f.file))
	trailer := 8 + len(fileNar) // the magic of the first record
	u64 := func(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name string
		in   []byte
		err  string
	}{
		{"empty", nil, "unexpected EOF"},
		{"not an export", u64(2), "doesn't look like something created by 'nix-store --export'"},
		{"truncated NAR", g[:100], "EOF"},
		{"wrong magic", cat(g[:trailer], u64(0x12345678), g[trailer+8:]), "wrong format"},
		{"truncated trailer", g[:trailer+12], "EOF"},
		{"no end marker", g[:len(g)-8], "unexpected EOF"},
		{"dangling reference", onlyTree.Bytes(), "is not valid"},
		{"bad nar", cat(u64(1), u64(13), []byte("nix-archive-2\x00\x00\x00")), "nar"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newStore(t)
			_, err := s.Import(ctx, bytes.NewReader(tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("Import: %v, want %q", err, tt.err)
			}
			if all, _ := s.QueryAllValidPaths(ctx); len(all) != 0 {
				t.Errorf("registered %v", all)
			}
			if ents := leftoverTemps(t, s.RealStoreDir()); len(ents) != 0 {
				t.Errorf("%d temporaries left", len(ents))
			}
			ents, _ := os.ReadDir(s.RealStoreDir())
			for _, e := range ents {
				// A failed commit leaves its lock files, as Nix does.
				if !strings.HasPrefix(e.Name(), ".") && e.Name() != TempDirName && !strings.HasSuffix(e.Name(), ".lock") {
					t.Errorf("left in the store dir: %s", e.Name())
				}
			}
		})
	}
}
