package daemon

import (
	"bytes"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/ulikunitz/xz"

	"cairn/internal/nar"
	"cairn/internal/nixhash"
	"cairn/internal/testutil/nixtest"
)

// fetchNix fetches with <nix/fetchurl.nix>, as nixpkgs' bootstrap does.
const fetchNix = `{ base, https, wrongName, hello, exe, nar }:
let fetchurl = import <nix/fetchurl.nix>; in {
  flat = fetchurl { url = "${base}/hello"; sha256 = hello; };
  exe = fetchurl { url = "${base}/hello"; sha256 = exe; executable = true; name = "hello-exe"; };
  unpack = fetchurl { url = "${base}/tree.nar"; sha256 = nar; unpack = true; };
  unpackXZ = fetchurl { url = "${base}/tree.nar.xz"; sha256 = nar; unpack = true; };
  file = fetchurl { url = "file://${./hello.txt}"; name = "hello-file"; sha256 = hello; };
  https = fetchurl { url = "${https}/hello"; name = "hello-https"; sha256 = hello; };
  wrongName = fetchurl { url = "${wrongName}/hello"; name = "hello-wrong-name"; sha256 = hello; };
  bad = fetchurl { url = "${base}/hello"; name = "bad"; sha256 = "0000000000000000000000000000000000000000000000000000"; };
  missing = fetchurl { url = "${base}/missing"; name = "missing"; sha256 = hello; };
}
`

// TestNixFetchurl builds <nix/fetchurl.nix> derivations with Nix 2.8's
// nix-build through cairn daemon and with Nix 2.8 itself, and compares the
// output paths and NAR hashes.
func TestNixFetchurl(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix-build", "nix-hash")
	// The download: a file, and a NAR of a small tree (plain and xz).
	tree := filepath.Join(t.TempDir(), "tree")
	os.MkdirAll(filepath.Join(tree, "bin"), 0o755)
	os.WriteFile(filepath.Join(tree, "bin", "hi"), []byte("#!/bin/sh\necho hi\n"), 0o755)
	os.Symlink("bin/hi", filepath.Join(tree, "hi"))
	var narData, narXZ bytes.Buffer
	if err := nar.Dump(&narData, tree, nar.DumpOptions{}); err != nil {
		t.Fatal(err)
	}
	xw, _ := xz.NewWriter(&narXZ)
	xw.Write(narData.Bytes())
	xw.Close()
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hello\n") })
	mux.HandleFunc("/tree.nar", func(w http.ResponseWriter, r *http.Request) { w.Write(narData.Bytes()) })
	mux.HandleFunc("/tree.nar.xz", func(w http.ResponseWriter, r *http.Request) { w.Write(narXZ.Bytes()) })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	tlsSrv := httptest.NewUnstartedServer(mux)
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0)
	tlsSrv.StartTLS()
	defer tlsSrv.Close()

	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw}), 0o644)
	file := filepath.Join(dir, "fetch.nix")
	os.WriteFile(file, []byte(fetchNix), 0o644)
	os.WriteFile(filepath.Join(dir, "hello.txt"), []byte("hello\n"), 0o644)
	exeFile := filepath.Join(dir, "exe")
	os.WriteFile(exeFile, []byte("hello\n"), 0o755)
	exeHash := nixtest.Run(t, nil, "nix-hash", "--type", "sha256", "--base32", exeFile)
	args := []string{
		"--argstr", "base", srv.URL, "--argstr", "https", tlsSrv.URL,
		// httptest's certificate names 127.0.0.1 and example.com, not localhost.
		"--argstr", "wrongName", strings.Replace(tlsSrv.URL, "127.0.0.1", "localhost", 1),
		"--argstr", "hello", nixhash.Sum(nixhash.SHA256, []byte("hello\n")).Nix32(),
		"--argstr", "exe", exeHash,
		"--argstr", "nar", nixhash.Sum(nixhash.SHA256, narData.Bytes()).Nix32(),
	}

	td := newTestDaemon(t, [2]string{"ssl-cert-file", ca})
	ref := nixtest.NewStore(t)
	for _, attr := range []string{"flat", "exe", "unpack", "unpackXZ", "file", "https"} {
		t.Run(attr, func(t *testing.T) {
			out, stderr, err := td.nixOut("nix-build", append([]string{"--no-out-link", file, "-A", attr}, args...)...)
			if err != nil {
				t.Fatalf("nix-build: %v\n%s", err, stderr)
			}
			want := ref.Run(t, nil, "nix-build", append([]string{"--option", "build-users-group", "", "--no-out-link", file, "-A", attr}, args...)...)
			if out != want {
				t.Fatalf("output path %s, Nix built %s", out, want)
			}
			got, _, err := td.nixOut("nix-store", "-q", "--hash", out)
			if err != nil {
				t.Fatal(err)
			}
			if wantHash := ref.Run(t, nil, "nix-store", "-q", "--hash", want); got != wantHash {
				t.Errorf("NAR hash %s, Nix: %s", got, wantHash)
			}
		})
	}

	// A hash mismatch: Nix 2.8's words.
	t.Run("bad", func(t *testing.T) {
		_, stderr, err := td.nixOut("nix-build", append([]string{"--no-out-link", file, "-A", "bad"}, args...)...)
		refCmd := exec.Command("nix-build", append([]string{"--store", ref.URL(), "--option", "build-users-group", "", "--no-out-link", file, "-A", "bad"}, args...)...)
		refCmd.Env = nixtest.Env()
		refErr, _ := refCmd.CombinedOutput()
		mismatch := regexp.MustCompile(`hash mismatch in fixed-output derivation.*\n.*specified: +\S+\n.*got: +\S+`)
		gotMsg, wantMsg := mismatch.FindString(stripANSI(stderr)), mismatch.FindString(stripANSI(string(refErr)))
		if err == nil || gotMsg == "" || gotMsg != wantMsg {
			t.Errorf("fixed-output mismatch: %v\n%q\nNix 2.8 says:\n%q", err, gotMsg, wantMsg)
		}
	})
	// Failures reach the client with the builtin's error in the log.
	for attr, want := range map[string]string{
		"missing":   "HTTP error 404 ('Not Found')",
		"wrongName": "certificate is valid for",
	} {
		t.Run(attr, func(t *testing.T) {
			_, stderr, err := td.nixOut("nix-build", append([]string{"--no-out-link", file, "-A", attr}, args...)...)
			if err == nil || !strings.Contains(stderr, want) || !strings.Contains(stderr, "failed with exit code 1") {
				t.Errorf("%v\n%s", err, stderr)
			}
		})
	}
}

// pkgsNix are packages for a profile: priorities, a collision, a
// propagated package, a dangling symlink, a directory merged from two
// packages.
const pkgsNix = `
let mk = name: prio: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ];
  } // { meta = { priority = prio; }; };
  dep = mk "dep-1.0" 5 "mkdir -p $out/bin $out/share/dep; echo dep > $out/bin/dep; echo x > $out/share/dep/x";
in {
  a = mk "a-1.0" 5 "mkdir -p $out/bin $out/share/man $out/nix-support $out/lib/perl5; echo a > $out/bin/a; echo same > $out/bin/common; echo ${dep} > $out/nix-support/propagated-user-env-packages; echo m > $out/share/man/a.1; echo > $out/lib/perl5/perllocal.pod";
  b = mk "b-1.0" 4 "mkdir -p $out/bin $out/share/man $out/lib/perl5; echo b > $out/bin/b; echo b > $out/bin/common; echo m > $out/share/man/b.1; ln -s /nonexistent $out/bin/dangling; echo x > $out/lib/perl5/B.pm";
  c = mk "c-1.0" 4 "mkdir -p $out/bin; echo c > $out/bin/common";
}
`

// TestNixEnvBuildenv installs packages into a profile with Nix 2.8's
// nix-env through cairn daemon (builtin:buildenv) and with Nix 2.8 itself,
// and compares the user environments.
func TestNixEnvBuildenv(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix-env")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	file := filepath.Join(dir, "pkgs.nix")
	os.WriteFile(file, []byte(pkgsNix), 0o644)
	td := newTestDaemon(t, [2]string{"sandbox-paths", "/bin/sh=/bin/busybox"})
	ref := nixtest.NewStore(t)
	os.MkdirAll(filepath.Join(dir, "profiles"), 0o755)
	profile := filepath.Join(dir, "profiles", "cairn")
	refProfile := filepath.Join(dir, "profiles", "nix")

	_, stderr, err := td.nixOut("nix-env", "-p", profile, "-f", file, "-iA", "a", "b")
	if err != nil {
		if strings.Contains(stderr, "setting up the build environment") {
			t.Skipf("the kernel refuses the sandbox: %s", stderr)
		}
		t.Fatalf("nix-env: %v\n%s", err, stderr)
	}
	if !strings.Contains(stderr, "skipping dangling symlink") {
		t.Errorf("nix-env's stderr lacks the warning:\n%s", stderr)
	}
	ref.Run(t, nil, "nix-env", "--option", "build-users-group", "", "--option", "sandbox-paths", "/bin/sh=/bin/busybox",
		"-p", refProfile, "-f", file, "-iA", "a", "b")
	env, refEnv := profileTarget(t, profile), profileTarget(t, refProfile)
	if env != refEnv || !strings.HasSuffix(env, "-user-environment") {
		t.Fatalf("user environment %s, Nix: %s", env, refEnv)
	}
	got, _, err := td.nixOut("nix-store", "-q", "--hash", env)
	if err != nil {
		t.Fatal(err)
	}
	if want := ref.Run(t, nil, "nix-store", "-q", "--hash", refEnv); got != want {
		gotLs, _, _ := td.nixOut("nix-store", "--dump", env)
		t.Errorf("NAR hash %s, Nix: %s\n%q", got, want, gotLs)
	}

	// c's bin/common collides with b's at the same priority.
	// (One command: a chroot store's profile cannot be read back.)
	_, stderr, err = td.nixOut("nix-env", "-p", profile+"2", "-f", file, "-iA", "b", "c")
	refCmd := exec.Command("nix-env", "--store", ref.URL(), "--option", "build-users-group", "", "--option", "sandbox-paths", "/bin/sh=/bin/busybox",
		"-p", refProfile+"2", "-f", file, "-iA", "b", "c")
	refCmd.Env = nixtest.Env()
	refOut, refErr := refCmd.CombinedOutput()
	collision := regexp.MustCompile(`packages '\S+' and '\S+' have the same priority \d+`)
	if err == nil || refErr == nil || collision.FindString(stripANSI(stderr)) != collision.FindString(stripANSI(string(refOut))) ||
		collision.FindString(stripANSI(stderr)) == "" {
		t.Errorf("collision: %v %v\n%s\nNix 2.8:\n%s", err, refErr, stderr, refOut)
	}
}

// profileTarget follows a profile's links (profile → profile-N-link → the
// store path) without entering the store, which lives in a chroot.
func profileTarget(t *testing.T, p string) string {
	t.Helper()
	for range 2 {
		target, err := os.Readlink(p)
		if err != nil {
			t.Fatal(err)
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(p), target)
		}
		p = target
	}
	return p
}
