package cli

import (
	"bytes"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cairn/internal/nixhash"
)

// fetchurlJSON is a derivation as <nix/fetchurl.nix> makes it, in the
// single-derivation JSON form cairn build takes.
func fetchurlJSON(name, url string, h nixhash.Hash) string {
	return fmt.Sprintf(`{"name":%q,"outputs":{"out":{"hashAlgo":"sha256","hash":%q}},"inputSrcs":[],"inputDrvs":{},
"system":"builtin","builder":"builtin:fetchurl","args":[],
"env":{"builder":"builtin:fetchurl","executable":"","impureEnvVars":"http_proxy https_proxy ftp_proxy all_proxy no_proxy",
"name":%q,"out":"","outputHash":%q,"outputHashAlgo":"sha256","outputHashMode":"flat","preferLocalBuild":"1",
"system":"builtin","unpack":"","url":%q,"urls":%q}}`, name, h.Base16(), name, h.Nix32(), url, url)
}

// TestBuildBuiltinFetchurl runs cairn build on builtin:fetchurl derivations:
// http, https checked against the CA given as ssl-cert-file, and a failed
// certificate check.
func TestBuildBuiltinFetchurl(t *testing.T) {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hello\n") })
	plain := httptest.NewServer(handler)
	defer plain.Close()
	tlsSrv := httptest.NewUnstartedServer(handler)
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0)
	tlsSrv.StartTLS()
	defer tlsSrv.Close()

	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw}), 0o644)
	h := nixhash.Sum(nixhash.SHA256, []byte("hello\n"))
	storeRoot := filepath.Join(dir, "store")
	// httptest's certificate names 127.0.0.1 and example.com, not localhost.
	wrongName := strings.Replace(tlsSrv.URL, "127.0.0.1", "localhost", 1)

	tests := []struct {
		name, url, err string
	}{
		{name: "http", url: plain.URL + "/hello"},
		{name: "https", url: tlsSrv.URL + "/hello"},
		{name: "https-wrong-name", url: wrongName + "/hello", err: "certificate is valid for"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(dir, tt.name+".json")
			os.WriteFile(file, []byte(fetchurlJSON(tt.name, tt.url, h)), 0o644)
			root := NewRoot()
			var out, errb bytes.Buffer
			root.SetOut(&out)
			root.SetErr(&errb)
			// No sandbox-paths: builtins need no /bin/sh.
			root.SetArgs([]string{"build", "--store", "local?root=" + storeRoot, "--option", "ssl-cert-file", ca, file})
			err := root.Execute()
			if tt.err != "" {
				// The reason is in the log, printed as it came.
				if err == nil || !strings.Contains(errb.String(), tt.err) {
					t.Fatalf("error %v, want %q\n%s", err, tt.err, errb.String())
				}
				return
			}
			if err != nil {
				t.Fatalf("%v\n%s", err, errb.String())
			}
			p := strings.TrimSpace(out.String())
			if b, err := os.ReadFile(filepath.Join(storeRoot, p)); err != nil || string(b) != "hello\n" {
				t.Errorf("%s: %q %v", p, b, err)
			}
		})
	}
}
