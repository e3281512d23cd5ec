package nar

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"flag"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"cairn/internal/testutil/nixtest"
)

var update = flag.Bool("update", false, "rewrite testdata from the reference Nix")

// tokens builds raw NAR bytes token by token, so tests can say things the Writer refuses.
type tokens struct{ bytes.Buffer }

func (b *tokens) s(ss ...string) *tokens {
	for _, s := range ss {
		b.u64(uint64(len(s)))
		b.WriteString(s)
		b.Write(make([]byte, pad(uint64(len(s)))))
	}
	return b
}

func (b *tokens) u64(n uint64) *tokens {
	var x [8]byte
	binary.LittleEndian.PutUint64(x[:], n)
	b.Write(x[:])
	return b
}

func (b *tokens) raw(p []byte) *tokens { b.Write(p); return b }

// entryNAR returns a root directory holding the given entries, each a regular file "x".
func entryNAR(names ...string) []byte {
	var b tokens
	b.s(Magic, "(", "type", "directory")
	for _, n := range names {
		b.s("entry", "(", "name", n, "node", "(", "type", "regular", "contents", "x", ")", ")")
	}
	b.s(")")
	return b.Bytes()
}

// node is one node for building NARs with the Writer.
type node struct {
	Header
	data string
}

func file(p, data string) node {
	return node{Header{Path: p, Type: TypeRegular, Size: int64(len(data))}, data}
}
func exe(p, data string) node {
	return node{Header{Path: p, Type: TypeRegular, Size: int64(len(data)), Executable: true}, data}
}
func dir(p string) node { return node{Header: Header{Path: p, Type: TypeDirectory}} }
func symlink(p, t string) node {
	return node{Header: Header{Path: p, Type: TypeSymlink, LinkTarget: t}}
}

func writeNAR(t testing.TB, nodes ...node) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := NewWriter(&buf)
	for _, n := range nodes {
		h := n.Header
		if err := w.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(w, n.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// sample is a small NAR using every construct.
func sample(t testing.TB) []byte {
	return writeNAR(t,
		dir(""),
		file("a", "hello"),
		dir("d"),
		exe("d/run", "#!/bin/sh\necho hi\n"),
		file("d/z", ""),
		dir("e"),
		symlink("l", "d/run"),
		file("m", "12345678"),
	)
}

// readAll parses data to the end and re-encodes it through the Writer.
func readAll(data []byte) (rewritten []byte, consumed int64, err error) {
	var out bytes.Buffer
	r := NewReader(bytes.NewReader(data))
	w := NewWriter(&out)
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, r.Offset(), err
		}
		if err := w.WriteHeader(h); err != nil {
			return nil, r.Offset(), err
		}
		if h.Type == TypeRegular {
			if _, err := io.Copy(w, r); err != nil {
				return nil, r.Offset(), err
			}
		}
	}
	if err := w.Close(); err != nil {
		return nil, r.Offset(), err
	}
	return out.Bytes(), r.Offset(), nil
}

// nixCmd runs a reference Nix tool against a throwaway store.
func nixCmd(t testing.TB, name string, args ...string) *exec.Cmd {
	t.Helper()
	nixtest.Require(t, name)
	root := filepath.Join(t.TempDir(), "store")
	cmd := exec.Command(name, append([]string{"--store", "local?root=" + root}, args...)...)
	cmd.Env = nixtest.Env()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	t.Cleanup(func() {
		if t.Failed() && stderr.Len() > 0 {
			t.Logf("%s stderr: %s", name, stderr.String())
		}
	})
	return cmd
}

// nixDump returns `nix-store --dump path`.
func nixDump(t testing.TB, path string, extra ...string) []byte {
	t.Helper()
	cmd := nixCmd(t, "nix-store", append(extra, "--dump", path)...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix-store --dump %s: %v", path, err)
	}
	return out
}

// nixRestore runs `nix-store --restore dir` with nar on stdin.
func nixRestore(t testing.TB, nar []byte, dir string, extra ...string) {
	t.Helper()
	cmd := nixCmd(t, "nix-store", append(extra, "--restore", dir)...)
	cmd.Stdin = bytes.NewReader(nar)
	if err := cmd.Run(); err != nil {
		t.Fatalf("nix-store --restore %s: %v", dir, err)
	}
}

func dump(t testing.TB, path string, opts DumpOptions) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Dump(&buf, path, opts); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// firstDiff describes where two byte strings first differ.
func firstDiff(a, b []byte) string {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			lo := max(0, i-32)
			return "at byte " + itoa(i) + ":\n got  " + quoteBytes(a[lo:min(len(a), i+32)]) + "\n want " + quoteBytes(b[lo:min(len(b), i+32)])
		}
	}
	return "lengths " + itoa(len(a)) + " and " + itoa(len(b))
}

func itoa(i int) string { return strconv.Itoa(i) }

func quoteBytes(b []byte) string {
	return strings.ReplaceAll(string(bytes.ToValidUTF8(b, []byte("?"))), "\x00", ".")
}

func sum(b []byte) [32]byte { return sha256.Sum256(b) }

// makeTree builds a tree exercising what a NAR can hold, deterministically.
// hostile adds names that are not valid UTF-8 or hold control characters; big
// adds a file of a few megabytes.
func makeTree(t testing.TB, root string, hostile, big bool) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	write := func(p, data string, mode os.FileMode) {
		t.Helper()
		full := filepath.Join(root, p)
		must(os.MkdirAll(filepath.Dir(full), 0o755))
		must(os.WriteFile(full, []byte(data), mode))
		must(os.Chmod(full, mode)) // despite the umask
	}
	must(os.MkdirAll(root, 0o755))
	write("hello.txt", "hello, world\n", 0o644)
	write("empty", "", 0o644)
	write("eight", "12345678", 0o644)
	write("bin/tool", "#!/bin/sh\necho tool\n", 0o755)
	write("bin/user-exec-only", "x", 0o700)
	write("bin/group-exec-only", "x", 0o654) // not executable for Nix: only S_IXUSR counts
	write("bin/empty-exec", "", 0o755)
	must(os.MkdirAll(filepath.Join(root, "empty-dir"), 0o755))
	must(os.MkdirAll(filepath.Join(root, "nested/empty/inner"), 0o755))
	must(os.Symlink("hello.txt", filepath.Join(root, "link")))
	must(os.Symlink("/nonexistent/target", filepath.Join(root, "dangling")))
	must(os.Symlink("bin", filepath.Join(root, "dir-link")))
	must(os.Symlink("../../../../etc/passwd", filepath.Join(root, "bin/escape")))
	// Names whose byte order differs from a locale's collation.
	for _, n := range []string{"B", "a", "_under", "Zeta", "zeta", "ä", "é", "e", "E", "-dash", ".hidden", "~tilde", "10", "9", "a b", "日本語"} {
		write("sort/"+n, n, 0o644)
	}
	write("names/quote\"back\\slash", "q", 0o644)
	write("names/"+strings.Repeat("n", 255), "long name", 0o644)
	write("names/tab\tand space", "t", 0o644)
	write("names/newline\nname", "n", 0o644)
	if hostile {
		write("names/ctrl\x01\x1f\x7f", "c", 0o644)
		write("names/latin1-\xe9", "l", 0o644)
		write("names/bad-\xff\xfe", "b", 0o644)
		must(os.Symlink("target\nwith \"odd\" \x01bytes\xff", filepath.Join(root, "names/odd-link")))
	}
	deep := root
	for i := 0; i < 40; i++ {
		deep = filepath.Join(deep, "d")
	}
	must(os.MkdirAll(deep, 0o755))
	write(strings.Repeat("d/", 40)+"bottom", "deep", 0o644)
	if big {
		// Larger than every buffer involved, and not a multiple of 8.
		data := make([]byte, 3<<20+5)
		for i := range data {
			data[i] = byte(i*7 + i>>11)
		}
		write("big.bin", string(data), 0o644)
	}
}
