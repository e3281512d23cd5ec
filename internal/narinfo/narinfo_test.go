package narinfo

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"cairn/internal/nixhash"
	"cairn/internal/storepath"
)

const store = storepath.DefaultStoreDir

func goldenFiles(t testing.TB) []string {
	t.Helper()
	files, err := filepath.Glob("testdata/*.narinfo")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden narinfo files: %v", err)
	}
	return files
}

func readFile(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func trustedKeys(t testing.TB) []PublicKey {
	t.Helper()
	var keys []PublicKey
	for _, f := range []string{"testdata/cache-1.pub", "testdata/other-2.pub"} {
		k, err := ParsePublicKey(readFile(t, f))
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	return keys
}

func secretKeys(t testing.TB) map[string]SecretKey {
	t.Helper()
	keys := make(map[string]SecretKey)
	for _, f := range []string{"testdata/cache-1.sec", "testdata/other-2.sec"} {
		k, err := ParseSecretKey(readFile(t, f))
		if err != nil {
			t.Fatal(err)
		}
		keys[k.Name()] = k
	}
	return keys
}

// TestGolden parses every narinfo Nix wrote, prints it back byte for byte, checks
// its signatures and re-makes them: ed25519 is deterministic, so signing our
// fingerprint with Nix's key must give Nix's signature exactly.
func TestGolden(t *testing.T) {
	trusted := trustedKeys(t)
	secrets := secretKeys(t)
	for _, file := range goldenFiles(t) {
		t.Run(filepath.Base(file), func(t *testing.T) {
			text := readFile(t, file)
			ni, err := ParseString(store, text)
			if err != nil {
				t.Fatal(err)
			}
			if got := ni.String(); got != text {
				t.Errorf("String() differs from the file:\n got %q\nwant %q", got, text)
			}
			var buf bytes.Buffer
			n, err := ni.WriteTo(&buf)
			if err != nil || n != int64(len(text)) || buf.String() != text {
				t.Errorf("WriteTo = %d, %v; text %q", n, err, buf.String())
			}
			if len(ni.Sigs) == 0 {
				return
			}
			if !ni.Verify(trusted) {
				t.Error("Verify(trusted keys) = false")
			}
			fp, err := ni.Fingerprint()
			if err != nil {
				t.Fatal(err)
			}
			for _, sig := range ni.Sigs {
				k, ok := secrets[sig.Name()]
				if !ok {
					t.Fatalf("no secret key %q in testdata", sig.Name())
				}
				if got := k.Sign(fp); got != sig {
					t.Errorf("re-signed %s:\n got %s\nwant %s", k.Name(), got, sig)
				}
			}
			if ni.Verify(trusted[:0]) {
				t.Error("Verify(no keys) = true")
			}
		})
	}
}

func mustPath(t testing.TB, s string) storepath.StorePath {
	t.Helper()
	p, err := store.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func mustHash(t testing.TB, s string) nixhash.Hash {
	t.Helper()
	h, err := nixhash.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestParseFields(t *testing.T) {
	ni, err := ParseString(store, readFile(t, "testdata/edited-system.narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	sigs := []Signature{}
	for _, s := range []string{
		"cache-1:+hdPiLS1+hhLch5c8TvoJSXTOIhR5eYhjBxcF2aLk/e1jQUEW2/BbwAlz1bTjJILsHHMSa+W44i+R2vjsK1vCA==",
		"other-2:4Uqp1ix3TIv8Pa1ZwdRhgUKoxI6KP5ATD9LbRHBFwtOL3ncM4U18cQaRxgNQn6gjHFnXSoLoNoElahwdAHcMDQ==",
	} {
		sig, err := ParseSignature(s)
		if err != nil {
			t.Fatal(err)
		}
		sigs = append(sigs, sig)
	}
	want := &NarInfo{
		StorePath:   mustPath(t, "/nix/store/3k4x8vq2w0c7hz1mfgrwg3k2dh9ld6s1-t"),
		URL:         "nar/1mgy3xqn9i9ixdj9dzp8rafapcg3v7m6f9fxj33h35zw5c2fh920.nar.zst",
		Compression: "zstd",
		FileHash:    mustHash(t, "sha256:1mgy3xqn9i9ixdj9dzp8rafapcg3v7m6f9fxj33h35zw5c2fh920"),
		FileSize:    189,
		NarHash:     mustHash(t, "sha256-UI6cyZgRF4W/DMmzUgrBU0yIE2S+jHbppKpZpd+RBfc="),
		NarSize:     264,
		References: []storepath.StorePath{
			mustPath(t, "/nix/store/3k4x8vq2w0c7hz1mfgrwg3k2dh9ld6s1-t"),
			mustPath(t, "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt"),
		},
		Deriver: mustPath(t, "/nix/store/9sywk8y9zb6m4ps5vgj7ajqpk7mwli6l-t.drv"),
		System:  "x86_64-linux",
		Sigs:    sigs,
	}
	if !reflect.DeepEqual(ni, want) {
		t.Errorf("Parse:\n got %#v\nwant %#v", ni, want)
	}
	fp, err := ni.Fingerprint()
	if err != nil {
		t.Fatal(err)
	}
	wantFP := "1;/nix/store/3k4x8vq2w0c7hz1mfgrwg3k2dh9ld6s1-t;sha256:1xq5j7gsandalklpd35ych9qhk2kq4555cy91jzqa5qik34rr3jh;264;" +
		"/nix/store/3k4x8vq2w0c7hz1mfgrwg3k2dh9ld6s1-t,/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt"
	if fp != wantFP {
		t.Errorf("Fingerprint:\n got %q\nwant %q", fp, wantFP)
	}
}

const (
	okPath = "StorePath: /nix/store/3k4x8vq2w0c7hz1mfgrwg3k2dh9ld6s1-t\n"
	okURL  = "URL: nar/x.nar\n"
	okHash = "NarHash: sha256:1xq5j7gsandalklpd35ych9qhk2kq4555cy91jzqa5qik34rr3jh\n"
	okSize = "NarSize: 264\n"
	okMin  = okPath + okURL + okHash + okSize
	refA   = "3k4x8vq2w0c7hz1mfgrwg3k2dh9ld6s1-t"
	refB   = "i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt"
	sigA   = "cache-1:+hdPiLS1+hhLch5c8TvoJSXTOIhR5eYhjBxcF2aLk/e1jQUEW2/BbwAlz1bTjJILsHHMSa+W44i+R2vjsK1vCA=="
)

// TestParseLenient covers input Nix accepts that is not in Nix's canonical form,
// and what it prints back as.
func TestParseLenient(t *testing.T) {
	canonical := okPath + okURL + "Compression: bzip2\n" + okHash + okSize + "References: \n"
	tests := []struct {
		name, in, want string
	}{
		{"minimal, compression defaults to bzip2", okMin, canonical},
		{"unknown keys skipped", "Foo: bar\n" + okMin + "Provenance: {}\nX-Y: \n", canonical},
		{"fields in any order", okSize + okHash + okURL + okPath, canonical},
		{"unknown-deriver", okMin + "Deriver: unknown-deriver\n", canonical},
		{"empty CA", okMin + "CA: \n", canonical},
		{"base16 nar hash", okPath + okURL + okSize +
			"NarHash: sha256:508e9cc998111785bf0cc9b3520ac1534c881364be8c76e9a4aa59a5df9105f7\n", canonical},
		{"SRI nar hash", okPath + okURL + okSize +
			"NarHash: sha256-UI6cyZgRF4W/DMmzUgrBU0yIE2S+jHbppKpZpd+RBfc=\n", canonical},
		{"references unsorted, doubled spaces, duplicate", okMin + "References:  " + refB + "  " + refA + " " + refB + " \n",
			okPath + okURL + "Compression: bzip2\n" + okHash + okSize + "References: " + refA + " " + refB + "\n"},
		{"duplicate signatures", okMin + "Sig: " + sigA + "\nSig: " + sigA + "\n",
			canonical + "Sig: " + sigA + "\n"},
		{"value with colons and spaces", okPath + "URL: a: b \n" + okHash + okSize,
			okPath + "URL: a: b \nCompression: bzip2\n" + okHash + okSize + "References: \n"},
		{"file size without file hash", okMin + "FileSize: 12\n",
			okPath + okURL + "Compression: bzip2\nFileSize: 12\n" + okHash + okSize + "References: \n"},
		{"leading zeros", okPath + okURL + okHash + "NarSize: 0264\n", canonical},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ni, err := ParseString(store, tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if got := ni.String(); got != tt.want {
				t.Errorf("String():\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	long := strings.Repeat("x", MaxLineLen)
	manyRefs := "References:" + strings.Repeat(" "+refA, MaxReferences+1) + "\n"
	tests := []struct {
		name, in string
		line     int    // 0: whole-text error
		want     string // substring of the message
	}{
		{"empty", "", 0, "StorePath missing"},
		{"no StorePath", okURL + okHash + okSize, 0, "StorePath missing"},
		{"no NarHash", okPath + okURL + okSize, 0, "NarHash missing"},
		{"no URL", okPath + okHash + okSize, 0, "URL missing"},
		{"empty URL", okPath + "URL: \n" + okHash + okSize, 0, "URL missing"},
		{"no NarSize", okPath + okURL + okHash, 0, "NarSize missing or zero"},
		{"zero NarSize", okPath + okURL + okHash + "NarSize: 0\n", 0, "NarSize missing or zero"},
		{"negative NarSize", okPath + okURL + okHash + "NarSize: -1\n", 4, "NarSize: invalid number"},
		{"plus NarSize", okPath + okURL + okHash + "NarSize: +1\n", 4, "NarSize: invalid number"},
		{"huge NarSize", okPath + okURL + okHash + "NarSize: 18446744073709551616\n", 4, "NarSize: invalid number"},
		{"bad FileSize", okMin + "FileSize: 1x\n", 5, "FileSize: invalid number"},
		{"bare NarHash", okPath + okURL + okSize + "NarHash: 1xq5j7gsandalklpd35ych9qhk2kq4555cy91jzqa5qik34rr3jh\n", 4, "NarHash:"},
		{"short NarHash", okPath + okURL + okSize + "NarHash: sha256:1xq5j7gsandalklpd35ych9qhk2kq4555cy91jzqa5qik34rr3j\n", 4, "NarHash:"},
		{"bad FileHash", okMin + "FileHash: sha256:eeee\n", 5, "FileHash:"},
		{"StorePath in other store", "StorePath: /gnu/store/3k4x8vq2w0c7hz1mfgrwg3k2dh9ld6s1-t\n" + okURL + okHash + okSize, 1, "StorePath:"},
		{"StorePath base name only", "StorePath: " + refA + "\n", 1, "StorePath:"},
		{"bad reference", okMin + "References: " + refA + " not-a-path\n", 5, "References:"},
		{"full path reference", okMin + "References: /nix/store/" + refA + "\n", 5, "References:"},
		{"too many references", okMin + manyRefs, 5, "more than"},
		{"bad deriver", okMin + "Deriver: x.drv\n", 5, "Deriver:"},
		{"bad CA", okMin + "CA: fixed:sha256:zz\n", 5, "CA:"},
		{"sig without name", okMin + "Sig: " + sigA[len("cache-1"):] + "\n", 5, "Sig:"},
		{"sig without colon", okMin + "Sig: garbage\n", 5, "Sig:"},
		{"sig short", okMin + "Sig: cache-1:AAAA\n", 5, "Sig:"},
		{"sig bad base64", okMin + "Sig: cache-1:" + strings.Repeat("!", 88) + "\n", 5, "Sig:"},
		{"sig non-canonical base64", okMin + "Sig: " + sigA[:len(sigA)-3] + "B==\n", 5, "Sig:"},
		{"repeated StorePath", okMin + okPath, 5, "repeated StorePath"},
		{"repeated References", okMin + "References: \nReferences: " + refA + "\n", 6, "repeated References"},
		{"repeated CA", okMin + "CA: \nCA: \n", 6, "repeated CA"},
		{"no colon", okMin + "garbage\n", 5, "expecting"},
		{"no space after colon", okMin + "System:x\n", 5, "expecting"},
		{"blank line", okMin + "\n", 5, "expecting"},
		{"CRLF", strings.ReplaceAll(okMin, "\n", "\r\n"), 1, "StorePath:"},
		{"missing final newline", strings.TrimSuffix(okMin, "\n"), 4, "missing newline"},
		{"over-long line", okMin + "Foo: " + long + "\n", 5, "longer than"},
		{"too many lines", okMin + strings.Repeat("Foo: bar\n", MaxLines), MaxLines + 1, "more than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ni, err := ParseString(store, tt.in)
			if err == nil {
				t.Fatalf("Parse succeeded: %q", ni)
			}
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not a *ParseError", err)
			}
			if pe.Line != tt.line || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q (line %d), want line %d and %q", err, pe.Line, tt.line, tt.want)
			}
		})
	}
}

// failReader returns data, then an error.
type failReader struct{ data string }

var errRead = errors.New("disk on fire")

func (r *failReader) Read(p []byte) (int, error) {
	if r.data == "" {
		return 0, errRead
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestParseReadError(t *testing.T) {
	_, err := Parse(store, &failReader{okMin})
	if !errors.Is(err, errRead) {
		t.Errorf("Parse error %v does not wrap the read error", err)
	}
}

func TestValidate(t *testing.T) {
	base := func() *NarInfo {
		ni, err := ParseString(store, readFile(t, "testdata/out-zstd-deriver-2sigs.narinfo"))
		if err != nil {
			t.Fatal(err)
		}
		return ni
	}
	otherDir := func(base string) storepath.StorePath {
		p, err := storepath.StoreDir("/gnu/store").FromBase(base)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name   string
		mutate func(*NarInfo)
	}{
		{"no path", func(ni *NarInfo) { ni.StorePath = storepath.StorePath{} }},
		{"no URL", func(ni *NarInfo) { ni.URL = "" }},
		{"no compression", func(ni *NarInfo) { ni.Compression = "" }},
		{"no nar hash", func(ni *NarInfo) { ni.NarHash = nixhash.Hash{} }},
		{"zero nar size", func(ni *NarInfo) { ni.NarSize = 0 }},
		{"newline in URL", func(ni *NarInfo) { ni.URL = "a\nStorePath: x" }},
		{"newline in System", func(ni *NarInfo) { ni.System = "x\n" }},
		{"reference in other store", func(ni *NarInfo) { ni.References = append(ni.References, otherDir(refB)) }},
		{"deriver in other store", func(ni *NarInfo) { ni.Deriver = otherDir("9sywk8y9zb6m4ps5vgj7ajqpk7mwli6l-t.drv") }},
		{"zero signature", func(ni *NarInfo) { ni.Sigs = append(ni.Sigs, Signature{}) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ni := base()
			tt.mutate(ni)
			if err := ni.Validate(); err == nil {
				t.Error("Validate succeeded")
			}
			if _, err := ni.WriteTo(&bytes.Buffer{}); err == nil {
				t.Error("WriteTo succeeded")
			}
		})
	}
	if err := base().Validate(); err != nil {
		t.Errorf("Validate(golden) = %v", err)
	}
}

func TestFingerprint(t *testing.T) {
	p := mustPath(t, "/nix/store/3k4x8vq2w0c7hz1mfgrwg3k2dh9ld6s1-t")
	h := mustHash(t, "sha256:1xq5j7gsandalklpd35ych9qhk2kq4555cy91jzqa5qik34rr3jh")
	refs := []storepath.StorePath{mustPath(t, "/nix/store/"+refB), p, p}
	got, err := Fingerprint(p, h, 264, refs)
	if err != nil {
		t.Fatal(err)
	}
	want := "1;/nix/store/" + refA + ";sha256:1xq5j7gsandalklpd35ych9qhk2kq4555cy91jzqa5qik34rr3jh;264;/nix/store/" + refA + ",/nix/store/" + refB
	if got != want {
		t.Errorf("Fingerprint:\n got %q\nwant %q", got, want)
	}
	if refs[0] != mustPath(t, "/nix/store/"+refB) {
		t.Error("Fingerprint reordered the caller's slice")
	}
	if got, _ := Fingerprint(p, h, 1, nil); got != "1;/nix/store/"+refA+";sha256:1xq5j7gsandalklpd35ych9qhk2kq4555cy91jzqa5qik34rr3jh;1;" {
		t.Errorf("Fingerprint without references = %q", got)
	}
	if _, err := Fingerprint(p, h, 0, nil); err == nil {
		t.Error("Fingerprint with zero size succeeded")
	}
	if _, err := Fingerprint(p, nixhash.Hash{}, 1, nil); err == nil {
		t.Error("Fingerprint with zero hash succeeded")
	}
	if _, err := Fingerprint(storepath.StorePath{}, h, 1, nil); err == nil {
		t.Error("Fingerprint with no path succeeded")
	}
}

func TestSignNarInfo(t *testing.T) {
	ni, err := ParseString(store, readFile(t, "testdata/hello-none.narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	trusted := trustedKeys(t)
	if ni.Verify(trusted) {
		t.Fatal("unsigned narinfo verifies")
	}
	for _, k := range secretKeys(t) {
		if err := ni.Sign(k); err != nil {
			t.Fatal(err)
		}
		if err := ni.Sign(k); err != nil { // idempotent: same signature
			t.Fatal(err)
		}
	}
	if len(ni.Sigs) != 2 || !ni.Verify(trusted) {
		t.Fatalf("after signing: %d sigs, Verify = %v", len(ni.Sigs), ni.Verify(trusted))
	}
	fp, _ := ni.Fingerprint()
	if n := CountValid(fp, ni.Sigs, trusted); n != 2 {
		t.Errorf("CountValid = %d, want 2", n)
	}
	if n := CountValid(fp, ni.Sigs, trusted[1:]); n != 1 {
		t.Errorf("CountValid(one key) = %d, want 1", n)
	}
	// The text round-trips with the new signatures.
	again, err := ParseString(store, ni.String())
	if err != nil || !reflect.DeepEqual(again, ni) {
		t.Errorf("reparse: %v\n got %#v\nwant %#v", err, again, ni)
	}
	ni.NarSize++
	if ni.Verify(trusted) {
		t.Error("signature still verifies after NarSize changed")
	}
}

func FuzzParse(f *testing.F) {
	for _, file := range goldenFiles(f) {
		f.Add(readFile(f, file))
	}
	f.Add(okMin + "Foo: bar\nReferences:  " + refB + "  " + refA + "\nDeriver: unknown-deriver\nCA: \n")
	f.Fuzz(func(t *testing.T, text string) {
		ni, err := ParseString(store, text)
		if err != nil {
			return
		}
		if err := ni.Validate(); err != nil {
			t.Fatalf("parsed narinfo does not validate: %v", err)
		}
		printed := ni.String()
		again, err := ParseString(store, printed)
		if err != nil {
			t.Fatalf("reparse of %q: %v", printed, err)
		}
		if !reflect.DeepEqual(again, ni) {
			t.Fatalf("round trip changed the value:\n got %#v\nwant %#v", again, ni)
		}
		if again.String() != printed {
			t.Fatalf("second print differs:\n%q\n%q", again.String(), printed)
		}
	})
}

func BenchmarkParse(b *testing.B) {
	text := readFile(b, "testdata/out-zstd-deriver-2sigs.narinfo")
	b.SetBytes(int64(len(text)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseString(store, text); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkString(b *testing.B) {
	ni, err := ParseString(store, readFile(b, "testdata/out-zstd-deriver-2sigs.narinfo"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = ni.String()
	}
}
