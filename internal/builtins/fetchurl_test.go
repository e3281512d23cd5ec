package builtins

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ulikunitz/xz"

	"cairn/internal/nar"
	"cairn/internal/nixhash"
)

// testNAR is the NAR of a small tree: a file, an executable, a symlink.
func testNAR(t testing.TB) []byte {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tree")
	os.MkdirAll(filepath.Join(dir, "bin"), 0o755)
	os.WriteFile(filepath.Join(dir, "README"), []byte("read me\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "bin", "hello"), []byte("#!/bin/sh\necho hello\n"), 0o755)
	os.Symlink("bin/hello", filepath.Join(dir, "hello"))
	var buf bytes.Buffer
	if err := nar.Dump(&buf, dir, nar.DumpOptions{}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func xzOf(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	w, err := xz.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

// narHash dumps the tree at p and hashes it.
func narHash(t testing.TB, p string) string {
	t.Helper()
	h := nixhash.NewHasher(nixhash.SHA256)
	if err := nar.Dump(h, p, nar.DumpOptions{}); err != nil {
		t.Fatal(err)
	}
	return h.Sum().SRI()
}

// fetchEnv is the env <nix/fetchurl.nix> gives a derivation.
func fetchEnv(url string, unpack, executable bool) map[string]string {
	b := func(v bool) string {
		if v {
			return "1"
		}
		return ""
	}
	mode := "flat"
	if unpack || executable {
		mode = "recursive"
	}
	return map[string]string{
		"builder": "builtin:fetchurl", "name": "x", "out": "/nix/store/00000000000000000000000000000000-x",
		"url": url, "urls": url, "unpack": b(unpack), "executable": b(executable),
		"outputHash": "0000000000000000000000000000000000000000000000000000", "outputHashAlgo": "sha256", "outputHashMode": mode,
		"impureEnvVars": "http_proxy https_proxy ftp_proxy all_proxy no_proxy", "preferLocalBuild": "1", "system": "builtin",
	}
}

func runJob(t *testing.T, env map[string]string, s Settings, view *View) (string, string, error) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	var log bytes.Buffer
	if s.RetryDelay == 0 {
		s.RetryDelay = time.Millisecond
	}
	err := Run(context.Background(), &Job{Builder: env["builder"], Env: env, Out: out, View: view, Log: &log, Settings: s})
	return out, log.String(), err
}

func TestFetchurlHTTP(t *testing.T) {
	narData := testNAR(t)
	var flaky atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("/file", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hello\n") })
	mux.HandleFunc("/tree.nar", func(w http.ResponseWriter, r *http.Request) { w.Write(narData) })
	mux.HandleFunc("/tree.nar.xz", func(w http.ResponseWriter, r *http.Request) { w.Write(xzOf(t, narData)) })
	mux.HandleFunc("/gzipped", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Encoding", "gzip")
		gz := gzip.NewWriter(w)
		fmt.Fprint(gz, "hello\n")
		gz.Close()
	})
	mux.HandleFunc("/flaky", func(w http.ResponseWriter, r *http.Request) {
		if flaky.Add(1) < 3 {
			http.Error(w, "try again", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, "hello\n")
	})
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/file", http.StatusFound) })
	mux.HandleFunc("/private", func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "alice" || p != "secret" {
			http.Error(w, "who are you", http.StatusUnauthorized)
			return
		}
		fmt.Fprint(w, "hello\n")
	})
	mux.HandleFunc("/sha256/", func(w http.ResponseWriter, r *http.Request) {
		if strings.TrimPrefix(r.URL.Path, "/sha256/") == nixhash.Sum(nixhash.SHA256, []byte("mirrored\n")).Base16() {
			fmt.Fprint(w, "mirrored\n")
			return
		}
		http.NotFound(w, r)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	netrcFile := filepath.Join(t.TempDir(), "netrc")
	host := strings.Split(strings.TrimPrefix(srv.URL, "http://"), ":")[0]
	os.WriteFile(netrcFile, []byte("machine "+host+"\n  login alice\n  password secret\n"), 0o600)

	hello := "sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM="
	mirrored := fetchEnv(srv.URL+"/nonexistent", false, false)
	mirrored["outputHash"] = nixhash.Sum(nixhash.SHA256, []byte("mirrored\n")).Nix32()
	tests := []struct {
		name     string
		env      map[string]string
		settings Settings
		want     string // NAR hash of the output
		mode     os.FileMode
		err      string
	}{
		{name: "flat", env: fetchEnv(srv.URL+"/file", false, false), want: hello, mode: 0o644},
		{name: "executable", env: fetchEnv(srv.URL+"/file", false, true), want: "sha256-ZUNgOdP5PKGajb8cYLFXOe1Y9T8UuNNyrMGzUVMwEPo=", mode: 0o755},
		{name: "unpack", env: fetchEnv(srv.URL+"/tree.nar", true, false), want: nixhash.Sum(nixhash.SHA256, narData).SRI(), mode: os.ModeDir | 0o755},
		{name: "unpack xz", env: fetchEnv(srv.URL+"/tree.nar.xz", true, false), want: nixhash.Sum(nixhash.SHA256, narData).SRI(), mode: os.ModeDir | 0o755},
		{name: "content-encoding", env: fetchEnv(srv.URL+"/gzipped", false, false), want: hello, mode: 0o644},
		{name: "retried", env: fetchEnv(srv.URL+"/flaky", false, false), want: hello, mode: 0o644},
		{name: "redirect", env: fetchEnv(srv.URL+"/redirect", false, false), want: hello, mode: 0o644},
		{name: "netrc", env: fetchEnv(srv.URL+"/private", false, false), settings: Settings{NetrcFile: netrcFile}, want: hello, mode: 0o644},
		{name: "hashed mirror", env: mirrored, settings: Settings{HashedMirrors: []string{srv.URL}},
			want: "sha256-Nf+VJ874VbSP6rR65Gc/DlxqcGYuQ/hiG3nfgZ7oUAg=", mode: 0o644},
		{name: "not found", env: fetchEnv(srv.URL+"/nope", false, false),
			err: "unable to download '" + srv.URL + "/nope': HTTP error 404 ('Not Found')\n\nresponse body:\n\n404 page not found"},
		{name: "unauthorized", env: fetchEnv(srv.URL+"/private", false, false),
			err: "unable to download '" + srv.URL + "/private': HTTP error 401 ('Unauthorized')"},
		{name: "gave up", env: fetchEnv(srv.URL+"/flaky", false, false), settings: Settings{Attempts: 1},
			err: "HTTP error 503 ('Service Unavailable')"},
		{name: "bad nar", env: fetchEnv(srv.URL+"/file", true, false), err: "restore nar"},
		{name: "no url", env: map[string]string{"builder": "builtin:fetchurl", "out": "/x", "outputHashMode": "flat"}, err: "attribute '\x1b[35;1murl\x1b[0m' missing"},
		{name: "scheme", env: fetchEnv("ftp://localhost/x", false, false), err: "Unsupported protocol"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "retried" {
				flaky.Store(0)
			}
			if tt.name == "gave up" {
				flaky.Store(-100)
			}
			out, log, err := runJob(t, tt.env, tt.settings, nil)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("%v\n%s", err, log)
			}
			fi, err := os.Lstat(out)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode()&^0o022 != tt.mode&^0o022 {
				t.Errorf("mode %v, want %v", fi.Mode(), tt.mode)
			}
			if got := narHash(t, out); got != tt.want {
				t.Errorf("NAR hash %s, want %s", got, tt.want)
			}
			if !strings.Contains(log, `"action":"start"`) || !strings.Contains(log, `"type":101`) {
				t.Errorf("log lacks the download activity:\n%s", log)
			}
			if tt.name == "retried" && !strings.Contains(log, "retrying in") {
				t.Errorf("log lacks the retry warning:\n%s", log)
			}
		})
	}
}

// testCA makes a self-signed CA certificate unrelated to httptest's.
func testCA(t testing.TB) []byte {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "other CA"}, IsCA: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func TestFetchurlHTTPS(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hello\n") }))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the failed handshakes
	srv.StartTLS()
	defer srv.Close()
	dir := t.TempDir()
	good := filepath.Join(dir, "good.pem")
	os.WriteFile(good, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644)
	other := filepath.Join(dir, "other.pem")
	os.WriteFile(other, testCA(t), 0o644)
	empty := filepath.Join(dir, "empty.pem")
	os.WriteFile(empty, nil, 0o644)

	tests := []struct {
		name, caFile, err string
	}{
		{name: "trusted", caFile: good},
		{name: "untrusted", caFile: other, err: "certificate signed by unknown authority"},
		{name: "missing bundle", caFile: filepath.Join(dir, "nonexistent"), err: "problem with the SSL CA cert"},
		{name: "empty bundle", caFile: empty, err: "no certificates"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, log, err := runJob(t, fetchEnv(srv.URL+"/file", false, false), Settings{CAFile: tt.caFile, Attempts: 5}, nil)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				if strings.Contains(log, "retrying") {
					t.Errorf("a certificate failure was retried:\n%s", log)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(out); string(b) != "hello\n" {
				t.Errorf("got %q", b)
			}
		})
	}
}

func TestSettingsFrom(t *testing.T) {
	s := SettingsFrom(mapGetter{"download-attempts": "3", "hashed-mirrors": "http://a/ http://b", "connect-timeout": "7"},
		func(k string) string { return map[string]string{"NIX_SSL_CERT_FILE": "/x.pem"}[k] })
	if s.Attempts != 3 || len(s.HashedMirrors) != 2 || s.ConnectTimeout != 7*time.Second || s.CAFile != "/x.pem" || s.StalledTimeout != 300*time.Second {
		t.Errorf("%+v", s)
	}
	s = SettingsFrom(mapGetter{"ssl-cert-file": "/y.pem"}, func(string) string { return "/x.pem" })
	if s.CAFile != "/y.pem" || s.Attempts != 5 {
		t.Errorf("%+v", s)
	}
}

type mapGetter map[string]string

func (m mapGetter) Get(k string) string { return m[k] }

func TestFetchurlFile(t *testing.T) {
	// A fake store: one visible path, one invisible, and a host file.
	root := t.TempDir()
	real := filepath.Join(root, "real")
	os.MkdirAll(filepath.Join(real, "aaa-visible"), 0o755)
	os.WriteFile(filepath.Join(real, "aaa-visible", "data"), []byte("hello\n"), 0o644)
	os.Symlink("/nix/store/bbb-hidden/data", filepath.Join(real, "aaa-visible", "to-hidden"))
	os.Symlink("data", filepath.Join(real, "aaa-visible", "to-data"))
	os.MkdirAll(filepath.Join(real, "bbb-hidden"), 0o755)
	os.WriteFile(filepath.Join(real, "bbb-hidden", "data"), []byte("secret\n"), 0o644)
	hostFile := filepath.Join(root, "host.txt")
	os.WriteFile(hostFile, []byte("hello\n"), 0o644)
	view := &View{StoreDir: "/nix/store", RealStoreDir: real, Paths: map[string]bool{"aaa-visible": true}}

	tests := []struct {
		name, url string
		view      *View
		ok        bool
	}{
		{"visible", "file:///nix/store/aaa-visible/data", view, true},
		{"symlink inside", "file:///nix/store/aaa-visible/to-data", view, true},
		{"percent-encoded", "file:///nix/store/aaa-visible/%64ata", view, true},
		{"localhost", "file://localhost/nix/store/aaa-visible/data", view, true},
		{"hidden path", "file:///nix/store/bbb-hidden/data", view, false},
		{"symlink out", "file:///nix/store/aaa-visible/to-hidden", view, false},
		{"dotdot out", "file:///nix/store/aaa-visible/../bbb-hidden/data", view, false},
		{"host file in sandbox", "file://" + hostFile, view, false},
		{"host file without sandbox", "file://" + hostFile, HostView(), true},
		{"directory", "file:///nix/store/aaa-visible", view, false},
		{"other host", "file://example.com/nix/store/aaa-visible/data", view, false},
		{"device", "file:///dev/zero", HostView(), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _, err := runJob(t, fetchEnv(tt.url, false, false), Settings{}, tt.view)
			if !tt.ok {
				if err == nil {
					t.Fatal("fetched")
				}
				if _, serr := os.Lstat(out); serr == nil {
					b, _ := os.ReadFile(out)
					t.Errorf("failed (%v) but left an output: %q", err, b)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(out); string(b) != "hello\n" {
				t.Errorf("got %q", b)
			}
		})
	}
}

// TestFetchurlSymlinkRoot unpacks a NAR whose root is a symlink with
// executable=1: the link's target must keep its mode.
func TestFetchurlSymlinkRoot(t *testing.T) {
	victim := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(victim, []byte("secret"), 0o600)
	var buf bytes.Buffer
	w := nar.NewWriter(&buf)
	w.WriteHeader(&nar.Header{Type: nar.TypeSymlink, LinkTarget: victim})
	w.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(buf.Bytes()) }))
	defer srv.Close()
	out, _, err := runJob(t, fetchEnv(srv.URL+"/link.nar", true, true), Settings{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if target, err := os.Readlink(out); err != nil || target != victim {
		t.Errorf("output: %q %v", target, err)
	}
	if fi, err := os.Stat(victim); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the link's target became %v (%v)", fi.Mode(), err)
	}
}

func TestFetchurlStalled(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("partial"))
		w.(http.Flusher).Flush()
		<-release
	}))
	defer srv.Close()
	defer close(release)
	_, _, err := runJob(t, fetchEnv(srv.URL+"/slow", false, false), Settings{StalledTimeout: 200 * time.Millisecond, Attempts: 1}, nil)
	if err == nil || !strings.Contains(err.Error(), "stalled-download-timeout") {
		t.Fatalf("error %v", err)
	}
}

func TestRunUnknown(t *testing.T) {
	err := Run(context.Background(), &Job{Builder: "builtin:fetchtree", Env: map[string]string{}})
	if err == nil || !strings.Contains(err.Error(), "unsupported builtin builder") {
		t.Fatal(err)
	}
}

// BenchmarkFetchurl downloads 64 MiB from a loopback server: as a file, and
// as a NAR restored with unpack=1.
func BenchmarkFetchurl(b *testing.B) {
	const size = 64 << 20
	data := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	var narBuf bytes.Buffer
	w := nar.NewWriter(&narBuf)
	w.WriteHeader(&nar.Header{Type: nar.TypeRegular, Size: size})
	w.Write(data)
	w.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/f.nar" {
			w.Write(narBuf.Bytes())
			return
		}
		w.Write(data)
	}))
	defer srv.Close()
	for _, bc := range []struct {
		name   string
		unpack bool
	}{{"flat", false}, {"unpack", true}} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(size)
			b.ReportAllocs()
			dir := b.TempDir()
			for i := 0; b.Loop(); i++ {
				out := filepath.Join(dir, fmt.Sprint(i))
				url := srv.URL + "/f"
				if bc.unpack {
					url += ".nar"
				}
				env := fetchEnv(url, bc.unpack, false)
				if err := Run(context.Background(), &Job{Builder: "builtin:fetchurl", Env: env, Out: out, View: HostView()}); err != nil {
					b.Fatal(err)
				}
				os.Remove(out)
			}
		})
	}
}
