package builtins

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"

	dbzip2 "github.com/dsnet/compress/bzip2"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// tarEntry is one entry of a test tarball.
type tarEntry struct {
	name   string
	typ    byte
	body   string
	mode   int64
	link   string
	format tar.Format // 0: what archive/tar picks
	pax    map[string]string
}

func dir(name string) tarEntry { return tarEntry{name: name, typ: tar.TypeDir, mode: 0o755} }
func file(name, body string, mode int64) tarEntry {
	return tarEntry{name: name, typ: tar.TypeReg, body: body, mode: mode}
}
func symlink(name, target string) tarEntry {
	return tarEntry{name: name, typ: tar.TypeSymlink, mode: 0o777, link: target}
}
func hardlink(name, target string) tarEntry {
	return tarEntry{name: name, typ: tar.TypeLink, mode: 0o644, link: target}
}

// makeTar writes ents as a tar (GNU or PAX as names need) compressed with
// comp: "", "gz", "bz2", "xz", "zst", or several joined by "+" (applied
// left to right).
func makeTar(t testing.TB, comp string, ents []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, Size: int64(len(e.body)),
			Uname: "root", Gname: "root", Format: e.format, PAXRecords: e.pax}
		if e.typ == tar.TypeXGlobalHeader {
			h = &tar.Header{Name: e.name, Typeflag: e.typ, PAXRecords: e.pax}
		}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			io.WriteString(tw, e.body)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return compress(t, comp, buf.Bytes())
}

func compress(t testing.TB, comp string, data []byte) []byte {
	t.Helper()
	if comp == "" {
		return data
	}
	for c := range strings.SplitSeq(comp, "+") {
		var buf bytes.Buffer
		var w io.WriteCloser
		var err error
		switch c {
		case "gz":
			w = gzip.NewWriter(&buf)
		case "bz2":
			w, err = dbzip2.NewWriter(&buf, &dbzip2.WriterConfig{Level: 9})
		case "xz":
			w, err = xz.NewWriter(&buf)
		case "zst":
			w, err = zstd.NewWriter(&buf, zstd.WithEncoderConcurrency(1))
		default:
			t.Fatalf("compression %q", c)
		}
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		data = buf.Bytes()
	}
	return data
}

// rawHeader is a ustar header block for an empty entry, which
// archive/tar's writer would refuse (a regular file named "dir/").
func rawHeader(name string, typ byte, mode int64) []byte {
	b := make([]byte, 512)
	copy(b, name)
	copy(b[100:], fmt.Sprintf("%07o", mode))
	copy(b[108:], "0000000")
	copy(b[116:], "0000000")
	copy(b[124:], "00000000000")
	copy(b[136:], "00000000000")
	b[156] = typ
	copy(b[257:], "ustar\x0000")
	copy(b[148:], "        ")
	sum := 0
	for _, c := range b {
		sum += int(c)
	}
	copy(b[148:], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

var goodEntries = []tarEntry{
	dir("chan/"), file("chan/a.txt", "hello\n", 0o644), file("chan/bin/x", "#!x\n", 0o744),
	symlink("chan/l", "a.txt"), hardlink("chan/h", "chan/a.txt"), file("chan/o", "odd\n", 0o011),
	symlink("chan/abs", "/etc/passwd"), hardlink("chan/h2", "chan/h"),
}

var goodTree = []string{
	"nixpkgs/ d", "nixpkgs/a.txt f hello\n", "nixpkgs/abs l /etc/passwd", "nixpkgs/bin d", "nixpkgs/bin/x x #!x\n",
	"nixpkgs/h f hello\n", "nixpkgs/h2 f hello\n", "nixpkgs/l l a.txt", "nixpkgs/o f odd\n",
}

// unpackCase is a tarball and what builtin:unpack-channel makes of it: a
// tree (see listTree) or an error. The same table drives the differential
// test against Nix 2.8; looseErr marks errors whose words differ (Nix
// fails later, on its output).
type unpackCase struct {
	name     string
	data     func(t testing.TB) []byte
	tree     []string
	err      string
	looseErr bool
}

func sparseCase(name string) unpackCase {
	return unpackCase{name: name, data: func(t testing.TB) []byte {
		data, err := os.ReadFile(filepath.Join("testdata", name+".tar.gz"))
		if err != nil {
			t.Fatal(err)
		}
		return data
	}, tree: []string{"nixpkgs/ d", "nixpkgs/hole-at-end f 8388608 bytes", "nixpkgs/sparse f 67108864 bytes"}}
}

func tarCase(name, comp string, ents []tarEntry, tree []string, err string) unpackCase {
	return unpackCase{name: name, data: func(t testing.TB) []byte { return makeTar(t, comp, ents) }, tree: tree, err: err}
}

func unpackCases() []unpackCase {
	long := strings.Repeat("d", 120) + "/" + strings.Repeat("f", 150)
	cases := []unpackCase{
		tarCase("plain", "", goodEntries, goodTree, ""),
		tarCase("gzip", "gz", goodEntries, goodTree, ""),
		tarCase("bzip2", "bz2", goodEntries, goodTree, ""),
		tarCase("xz", "xz", goodEntries, goodTree, ""),
		tarCase("zstd", "zst", goodEntries, goodTree, ""),
		tarCase("xz-then-gzip", "xz+gz", goodEntries, goodTree, ""),
		tarCase("nested", "gz", []tarEntry{file("top/a/b/c/d.txt", "d", 0o600), file("top/a/e", "e", 0o700)},
			[]string{"nixpkgs/ d", "nixpkgs/a d", "nixpkgs/a/b d", "nixpkgs/a/b/c d", "nixpkgs/a/b/c/d.txt f d", "nixpkgs/a/e x e"}, ""),
		tarCase("long-names", "", []tarEntry{file("top/"+long, "l", 0o644), symlink("top/s", long)},
			[]string{"nixpkgs/ d", "nixpkgs/" + long[:120] + " d", "nixpkgs/" + long + " f l", "nixpkgs/s l " + long}, ""),
		tarCase("gnu-long-names", "", []tarEntry{{name: "top/" + long, typ: tar.TypeReg, body: "g", mode: 0o755, format: tar.FormatGNU},
			{name: "top/s", typ: tar.TypeSymlink, link: long, format: tar.FormatGNU}, {name: "top/h", typ: tar.TypeLink, link: "top/" + long, format: tar.FormatGNU}},
			[]string{"nixpkgs/ d", "nixpkgs/" + long[:120] + " d", "nixpkgs/" + long + " x g", "nixpkgs/h x g", "nixpkgs/s l " + long}, ""),
		// git archive starts with a pax global header (the commit).
		tarCase("pax-global-header", "gz", []tarEntry{{name: "pax_global_header", typ: tar.TypeXGlobalHeader, pax: map[string]string{"comment": "0123abcd"}},
			dir("nixpkgs-0123abcd/"), file("nixpkgs-0123abcd/default.nix", "{ }", 0o644)},
			[]string{"nixpkgs/ d", "nixpkgs/default.nix f { }"}, ""),
		// GNU tar --sparse of a 64 MiB file holding "middle" at 32 MiB and
		// "end" at its end, and an 8 MiB file holding "start".
		sparseCase("sparse-gnu"),
		sparseCase("sparse-pax"),
		tarCase("dotdot", "", []tarEntry{dir("chan/"), file("chan/../evil", "x", 0o644)}, nil, "failed to extract archive (Path contains '..')"),
		tarCase("absolute", "", []tarEntry{file("/chan/a", "x", 0o644)}, []string{"nixpkgs/ d", "nixpkgs/a f x"}, ""),
		tarCase("dot-slash", "", []tarEntry{dir("./"), dir("./chan/"), file("./chan//x/./y", "y", 0o700)},
			[]string{"nixpkgs/ d", "nixpkgs/x d", "nixpkgs/x/y x y"}, ""),
		tarCase("write-through-symlink", "", []tarEntry{dir("chan/"), symlink("chan/l", "/tmp"), file("chan/l/evil", "x", 0o644)},
			nil, "failed to extract archive (Cannot extract through symlink OUT/chan/l/evil)"),
		tarCase("mkdir-through-symlink", "", []tarEntry{dir("chan/"), symlink("chan/l", ".."), dir("chan/l/sub/")},
			nil, "failed to extract archive (Cannot extract through symlink OUT/chan/l/sub)"),
		tarCase("symlink-replaced-by-dir", "", []tarEntry{dir("chan/"), symlink("chan/l", "/tmp"), dir("chan/l/"), file("chan/l/f", "f", 0o644)},
			[]string{"nixpkgs/ d", "nixpkgs/l d", "nixpkgs/l/f f f"}, ""),
		tarCase("two-top-level", "", []tarEntry{file("a", "x", 0o644), file("b", "x", 0o644)}, nil, "channel tarball 'SRC' contains more than one file"),
		{name: "empty-file", data: func(testing.TB) []byte { return nil }, err: "channel tarball 'SRC' contains more than one file"},
		tarCase("empty-tar", "", nil, nil, "channel tarball 'SRC' contains more than one file"),
		tarCase("empty-tar-xz", "xz", nil, nil, "channel tarball 'SRC' contains more than one file"),
		tarCase("only-dot", "", []tarEntry{dir("./")}, nil, "channel tarball 'SRC' contains more than one file"),
		{name: "not-a-tarball", data: func(testing.TB) []byte { return []byte("hello, this is not a tarball\n") },
			err: "failed to open archive: Unrecognized archive format"},
		{name: "fifo", data: func(t testing.TB) []byte {
			return makeTar(t, "", []tarEntry{dir("chan/"), {name: "chan/f", typ: tar.TypeFifo, mode: 0o644}})
		}, err: "file 'OUT/chan/f' has an unsupported type", looseErr: true},
		{name: "device", data: func(t testing.TB) []byte {
			return makeTar(t, "", []tarEntry{dir("chan/"), {name: "chan/d", typ: tar.TypeChar, mode: 0o644}})
		}, err: "failed to extract archive (Can't create 'OUT/chan/d')", looseErr: true},
		tarCase("hardlink-to-dir", "", []tarEntry{dir("chan/"), hardlink("chan/h", "chan")}, nil, "failed to extract archive (Can't create 'OUT/chan/h')"),
		tarCase("hardlink-missing", "", []tarEntry{dir("chan/"), hardlink("chan/h", "chan/nope")}, nil,
			"failed to extract archive (Hard-link target 'OUT/chan/nope' does not exist.)"),
		tarCase("hardlink-dotdot", "", []tarEntry{dir("chan/"), hardlink("chan/h", "../x")}, nil, "failed to extract archive (Path contains '..')"),
		tarCase("hardlink-through-symlink", "", []tarEntry{dir("chan/"), symlink("chan/l", "/etc"), hardlink("chan/h", "chan/l/passwd")}, nil,
			"failed to extract archive (Cannot extract through symlink OUT/chan/l/passwd)"),
		tarCase("hardlink-to-symlink", "", []tarEntry{dir("chan/"), symlink("chan/s", "/etc/passwd"), hardlink("chan/h", "chan/s")},
			[]string{"nixpkgs/ d", "nixpkgs/h l /etc/passwd", "nixpkgs/s l /etc/passwd"}, ""),
		tarCase("hardlink-to-itself", "", []tarEntry{file("chan/a", "one", 0o755), hardlink("chan/a", "chan/a")}, nil,
			"failed to extract archive (Skipping hardlink pointing to itself: OUT/chan/a)"),
		tarCase("duplicate", "", []tarEntry{file("chan/a", "one", 0o755), file("chan/a", "two", 0o644)}, []string{"nixpkgs/ d", "nixpkgs/a f two"}, ""),
		tarCase("symlink-replaced-by-file", "", []tarEntry{symlink("chan/a", "x"), file("chan/a", "two", 0o644)}, []string{"nixpkgs/ d", "nixpkgs/a f two"}, ""),
		tarCase("empty-dir-replaced-by-file", "", []tarEntry{dir("chan/a/"), file("chan/a", "two", 0o644)}, []string{"nixpkgs/ d", "nixpkgs/a f two"}, ""),
		tarCase("dir-replaced-by-file", "", []tarEntry{file("chan/a/b", "one", 0o755), file("chan/a", "two", 0o644)}, nil,
			"failed to extract archive (Can't replace existing directory with non-directory)"),
		tarCase("file-as-parent", "", []tarEntry{file("chan/a", "one", 0o755), file("chan/a/b", "two", 0o644)}, nil,
			"failed to extract archive (Could not stat OUT/chan/a/b)"),
		tarCase("empty-symlink-target", "", []tarEntry{dir("chan/"), symlink("chan/s", "")}, []string{"nixpkgs/ d", "nixpkgs/s x "}, ""),
		tarCase("single-file", "gz", []tarEntry{file("only", "x", 0o644)}, []string{"nixpkgs f x"}, ""),
		{name: "old-style-dir", data: func(t testing.TB) []byte {
			return append(rawHeader("chan/", '0', 0o755), makeTar(t, "", []tarEntry{file("chan/f", "f", 0o644)})...)
		}, tree: []string{"nixpkgs/ d", "nixpkgs/f f f"}},
	}
	return cases
}

// listTree lists the tree at root as "PATH KIND [CONTENT|TARGET]" lines,
// sorted: KIND is d (directory), f (file), x (executable file) or l.
func listTree(t testing.TB, root string) []string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case fi.IsDir():
			if rel == "nixpkgs" {
				rel += "/"
			}
			lines = append(lines, rel+" d")
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			lines = append(lines, rel+" l "+target)
		case fi.Mode().IsRegular():
			kind := "f"
			if fi.Mode()&0o100 != 0 {
				kind = "x"
			}
			if fi.Size() > 1<<20 {
				lines = append(lines, fmt.Sprintf("%s %s %d bytes", rel, kind, fi.Size()))
				break
			}
			data, _ := os.ReadFile(p)
			lines = append(lines, rel+" "+kind+" "+string(data))
		default:
			lines = append(lines, rel+" ?")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(lines)
	return lines
}

var ansi = regexp.MustCompile("\x1b\\[[0-9;]*m")

func plain(err error) string { return ansi.ReplaceAllString(err.Error(), "") }

// runUnpack runs builtin:unpack-channel on data with out shown as OUT and
// src as SRC in messages.
func runUnpack(t testing.TB, data []byte, channel string) (string, error) {
	t.Helper()
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src.tar")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(tmp, "out")
	j := &Job{Builder: "builtin:unpack-channel", Out: out, View: HostView(),
		Env: map[string]string{"out": "OUT", "src": src, "channelName": channel, "name": "ch"}}
	err := Run(context.Background(), j)
	if err != nil {
		err = fmt.Errorf("%s", strings.ReplaceAll(plain(err), src, "SRC"))
	}
	return out, err
}

func TestUnpackChannel(t *testing.T) {
	for _, tt := range unpackCases() {
		t.Run(tt.name, func(t *testing.T) {
			out, err := runUnpack(t, tt.data(t), "nixpkgs")
			if tt.err != "" {
				if err == nil || err.Error() != tt.err {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := listTree(t, out)
			if !slices.Equal(got, tt.tree) {
				t.Errorf("tree (-want +got):\n-%q\n+%q", tt.tree, got)
			}
		})
	}
}

// TestUnpackChannelNoEscape checks that nothing is written beside the
// output, whatever the tarball tries.
func TestUnpackChannelNoEscape(t *testing.T) {
	for _, tt := range unpackCases() {
		t.Run(tt.name, func(t *testing.T) {
			out, _ := runUnpack(t, tt.data(t), "nixpkgs")
			ents, err := os.ReadDir(filepath.Dir(out))
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				if e.Name() != "out" && e.Name() != "src.tar" {
					t.Errorf("%s written beside the output", e.Name())
				}
			}
		})
	}
}

func TestUnpackChannelAttrs(t *testing.T) {
	data := makeTar(t, "", goodEntries)
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"no-out", map[string]string{"channelName": "c", "src": "S"}, "attribute 'out' missing"},
		{"no-channelName", map[string]string{"out": "O", "src": "S"}, "attribute 'channelName' missing"},
		{"no-src", map[string]string{"out": "O", "channelName": "c"}, "attribute 'src' missing"},
		{"missing-src", map[string]string{"out": "O", "channelName": "c", "src": "/nonexistent/x.tar"},
			"failed to open archive: Failed to open '/nonexistent/x.tar'"},
		{"slash-in-name", map[string]string{"out": "O", "channelName": "a/b", "src": "SRC"}, "renaming channel directory: Invalid argument"},
		{"dotdot-name", map[string]string{"out": "O", "channelName": "..", "src": "SRC"}, "renaming channel directory: Invalid argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmp := t.TempDir()
			src := filepath.Join(tmp, "src.tar")
			os.WriteFile(src, data, 0o644)
			if tt.env["src"] == "SRC" {
				tt.env["src"] = src
			}
			err := Run(context.Background(), &Job{Builder: "builtin:unpack-channel", Out: filepath.Join(tmp, "out"), Env: tt.env})
			if err == nil || plain(err) != tt.want {
				t.Errorf("error %v, want %q", err, tt.want)
			}
		})
	}
}

// TestUnpackDeep checks directories deeper than the descriptors kept
// open, and going back up.
func TestUnpackDeep(t *testing.T) {
	deep := "top"
	var ents []tarEntry
	for i := range maxCachedDirs + 10 {
		deep += fmt.Sprintf("/%d", i%10)
		ents = append(ents, file(deep+"/f", "f", 0o644))
	}
	ents = append(ents, file("top/g", "g", 0o755))
	out, err := runUnpack(t, makeTar(t, "zst", ents), "c")
	if err != nil {
		t.Fatal(err)
	}
	if n := len(listTree(t, out)); n != 2*(maxCachedDirs+10)+2 {
		t.Errorf("%d entries", n)
	}
	if data, err := os.ReadFile(filepath.Join(out, "c", "g")); err != nil || string(data) != "g" {
		t.Errorf("g: %q %v", data, err)
	}
}

func TestXZFirstDict(t *testing.T) {
	for _, dict := range []int{1 << 16, 1 << 20, 3 << 20, 8 << 20, 64 << 20} {
		var buf bytes.Buffer
		w, err := xz.WriterConfig{DictCap: dict}.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte("data"))
		w.Close()
		got, ok := xzFirstDict(bufioReader(buf.Bytes()))
		if !ok || got < int64(dict) || got > 2*int64(dict) {
			t.Errorf("dict %d: %d %v", dict, got, ok)
		}
	}
}

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReaderSize(bytes.NewReader(b), peekSize) }

func FuzzUnpack(f *testing.F) {
	for _, tt := range unpackCases() {
		f.Add(tt.data(f))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		out, err := runUnpack(t, data, "c")
		ents, rerr := os.ReadDir(filepath.Dir(out))
		if rerr != nil {
			t.Fatal(rerr)
		}
		for _, e := range ents {
			if e.Name() != "out" && e.Name() != "src.tar" {
				t.Fatalf("%s written beside the output", e.Name())
			}
		}
		if err == nil {
			// Exactly the channel, and a second unpack makes the same tree.
			first := listTree(t, out)
			out2, err := runUnpack(t, data, "c")
			if err != nil {
				t.Fatalf("second unpack: %v", err)
			}
			if second := listTree(t, out2); !slices.Equal(first, second) {
				t.Fatalf("unpacks differ:\n%q\n%q", first, second)
			}
		}
	})
}

// BenchmarkUnpackChannel unpacks a channel-like .tar.xz: the file named by
// $CAIRN_UNPACK_TARBALL, else a synthetic one (2,000 files, 16 MiB). The
// throughput is of the compressed bytes; "MB/s-out" is of the unpacked ones.
func BenchmarkUnpackChannel(b *testing.B) {
	data, err := os.ReadFile(os.Getenv("CAIRN_UNPACK_TARBALL"))
	if err != nil {
		var ents []tarEntry
		for i := range 2000 {
			body := strings.Repeat(fmt.Sprintf("{ pkg%d = callPackage ./pkgs/%d { }; }\n", i, i*7919), 8<<10/40)
			ents = append(ents, file(fmt.Sprintf("nixexprs/pkgs/%d/%d/default.nix", i%50, i), body, 0o644))
		}
		data = makeTar(b, "xz", ents)
	}
	src := filepath.Join(b.TempDir(), "src.tar.xz")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		b.Fatal(err)
	}
	var unpacked int64
	if r, _, _, err := decompress(bytes.NewReader(data)); err == nil {
		unpacked, _ = io.Copy(io.Discard, r)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		out := filepath.Join(b.TempDir(), fmt.Sprint(i))
		b.StartTimer()
		err := Run(context.Background(), &Job{Builder: "builtin:unpack-channel", Out: out, View: HostView(),
			Env: map[string]string{"out": out, "src": src, "channelName": "nixpkgs"}})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		os.RemoveAll(out)
		b.StartTimer()
	}
	b.ReportMetric(float64(unpacked)*float64(b.N)/b.Elapsed().Seconds()/1e6, "MB/s-out")
}

// TestUnpackSparse checks that a sparse entry stays sparse on disk, with
// its bytes where they belong.
func TestUnpackSparse(t *testing.T) {
	for _, name := range []string{"sparse-gnu", "sparse-pax"} {
		t.Run(name, func(t *testing.T) {
			out, err := runUnpack(t, sparseCase(name).data(t), "c")
			if err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(filepath.Join(out, "c", "sparse"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var st syscall.Stat_t
			if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
				t.Fatal(err)
			}
			if st.Size != 64<<20 || st.Blocks*512 > 1<<20 {
				t.Errorf("size %d, %d bytes allocated", st.Size, st.Blocks*512)
			}
			for off, want := range map[int64]string{32 << 20: "middle", 64<<20 - 3: "end", 1 << 20: "\x00\x00"} {
				got := make([]byte, len(want))
				if _, err := f.ReadAt(got, off); err != nil || string(got) != want {
					t.Errorf("at %d: %q %v, want %q", off, got, err, want)
				}
			}
		})
	}
}
