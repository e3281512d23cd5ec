package substitute

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"cairn/internal/store"
	"cairn/internal/storepath"
	"cairn/internal/testutil/nixtest"
)

// fakeS3 serves a directory as the bucket "cache" by path (an S3 endpoint
// such as MinIO's), answering S3's XML errors, and checks every request's
// signature with secret when one is set.
type fakeS3 struct {
	t      *testing.T
	dir    string
	secret string
	gzip   map[string]bool // keys served with Content-Encoding: gzip

	mu       sync.Mutex
	requests []string // "GET /cache/key signed|anonymous"
	types    []string // "key content-type" of each upload
}

var credentialRE = regexp.MustCompile(`^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/s3/aws4_request, SignedHeaders=([^,]+), Signature=([0-9a-f]+)$`)

func (f *fakeS3) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	auth := r.Header.Get("Authorization")
	kind := "anonymous"
	if auth != "" {
		kind = "signed"
		if !f.verify(r, auth) {
			s3Error(w, http.StatusForbidden, "SignatureDoesNotMatch")
			return
		}
	}
	f.mu.Lock()
	f.requests = append(f.requests, r.Method+" "+r.URL.Path+" "+kind)
	f.mu.Unlock()
	key, ok := strings.CutPrefix(r.URL.Path, "/cache/")
	switch {
	case !ok:
		s3Error(w, http.StatusNotFound, "NoSuchBucket")
	case r.Method == http.MethodPut:
		// An upload: kept with its content type.
		data, err := io.ReadAll(r.Body)
		if err == nil {
			name := filepath.Join(f.dir, filepath.FromSlash(key))
			os.MkdirAll(filepath.Dir(name), 0o755)
			err = os.WriteFile(name, data, 0o644)
		}
		if err != nil {
			s3Error(w, http.StatusInternalServerError, "InternalError")
			return
		}
		f.mu.Lock()
		f.types = append(f.types, key+" "+r.Header.Get("Content-Type"))
		f.mu.Unlock()
	case r.Method == http.MethodHead:
		if _, err := os.Stat(filepath.Join(f.dir, filepath.FromSlash(key))); err != nil {
			w.WriteHeader(http.StatusNotFound)
		}
	case strings.HasPrefix(key, "forbidden"):
		s3Error(w, http.StatusForbidden, "AccessDenied")
	default:
		data, err := os.ReadFile(filepath.Join(f.dir, filepath.FromSlash(key)))
		if err != nil {
			s3Error(w, http.StatusNotFound, "NoSuchKey")
			return
		}
		if f.gzip[key] {
			var b bytes.Buffer
			zw := gzip.NewWriter(&b)
			zw.Write(data)
			zw.Close()
			data = b.Bytes()
			w.Header().Set("Content-Encoding", "gzip")
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(data)))
		w.Write(data)
	}
}

// verify signs a copy of r with the secret and compares the signatures.
func (f *fakeS3) verify(r *http.Request, auth string) bool {
	m := credentialRE.FindStringSubmatch(auth)
	if m == nil || f.secret == "" {
		f.t.Errorf("authorization %q", auth)
		return false
	}
	when, err := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
	if err != nil {
		f.t.Errorf("X-Amz-Date %q", r.Header.Get("X-Amz-Date"))
		return false
	}
	c, _ := http.NewRequest(r.Method, "http://"+r.Host+r.URL.RequestURI(), nil)
	for _, h := range strings.Split(m[4], ";") {
		switch h {
		case "host":
		case "content-length": // Go keeps it out of the header map
			c.ContentLength = r.ContentLength
			c.Header.Set(h, fmt.Sprint(r.ContentLength))
		default:
			c.Header.Set(h, r.Header.Get(h))
		}
	}
	c.Header.Del("Authorization")
	err = v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: m[1], SecretAccessKey: f.secret},
		c, r.Header.Get("X-Amz-Content-Sha256"), "s3", m[3], when)
	if err != nil {
		f.t.Error(err)
		return false
	}
	want := credentialRE.FindStringSubmatch(c.Header.Get("Authorization"))
	return want != nil && want[5] == m[5]
}

func s3Error(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>%s</Message></Error>`, code, code)
}

// TestS3Cache substitutes a closure from a cache Nix 2.8 wrote, served as an
// S3 bucket at an endpoint: signed with the credentials in the environment
// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the region of the URL),
// unsigned without any; a missing key or one the bucket will not show is
// no substitute; a narinfo stored with Content-Encoding gzip reads.
func TestS3Cache(t *testing.T) {
	f := newFixture(t)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	for _, signed := range []bool{true, false} {
		t.Run(map[bool]string{true: "signed", false: "anonymous"}[signed], func(t *testing.T) {
			fake := &fakeS3{t: t, dir: f.caches["xz"], gzip: map[string]bool{}}
			if signed {
				fake.secret = "cairn-test-secret"
				t.Setenv("AWS_ACCESS_KEY_ID", "AKIDCAIRNTEST")
				t.Setenv("AWS_SECRET_ACCESS_KEY", fake.secret)
			} else {
				t.Setenv("AWS_ACCESS_KEY_ID", "")
				t.Setenv("AWS_SECRET_ACCESS_KEY", "")
			}
			top := parsePath(t, f.top)
			fake.gzip[top.HashPart()+".narinfo"] = true
			srv := httptest.NewServer(fake)
			defer srv.Close()
			url := "s3://cache?region=eu-west-3&scheme=http&endpoint=" + strings.TrimPrefix(srv.URL, "http://")
			st, root := newStore(t)
			log := &testLogger{}
			if err := New(st, 2).Realise(context.Background(), cacheConfig(t, f, url, true), []storepath.StorePath{top}, log); err != nil {
				t.Fatalf("%v\nrequests: %q\nwarnings: %q", err, fake.requests, log.warnings)
			}
			nixtest.Run(t, nil, "nix-store", "--store", "local?root="+root, "--verify", "--check-contents")
			// As Nix substitutes the same cache (Debian's Nix 2.8 has no S3).
			pubText, _ := os.ReadFile(f.pubFile)
			ref := filepath.Join(t.TempDir(), "ref")
			nixtest.Run(t, nil, "nix-store", "--store", "local?root="+ref, "--option", "substituters", "file://"+f.caches["xz"],
				"--option", "trusted-public-keys", strings.TrimSpace(string(pubText)), "-r", f.top)
			if got, want := nixPathInfo(t, root, f.top), nixPathInfo(t, ref, f.top); got != want {
				t.Errorf("nix path-info --json differs:\ncairn: %s\nnix from file://: %s", got, want)
			}
			kind := map[bool]string{true: " signed", false: " anonymous"}[signed]
			fake.mu.Lock()
			reqs := strings.Join(fake.requests, "\n")
			fake.mu.Unlock()
			if !strings.Contains(reqs, "GET /cache/nix-cache-info"+kind) || !strings.Contains(reqs, "GET /cache/"+top.HashPart()+".narinfo"+kind) ||
				strings.Count(reqs, "GET /cache/nar/") != 3 || strings.Count(reqs, kind) != len(fake.requests) {
				t.Errorf("requests:\n%s", reqs)
			}
			if len(log.started) != 3 || !strings.HasSuffix(log.started[0], " s3://cache") {
				t.Errorf("substitutions reported: %q", log.started)
			}
			c, err := NewCache(url, Options{})
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range []string{"0000000000000000000000000000000a.narinfo", "forbidden.narinfo"} {
				if _, err := c.backend.Get(context.Background(), name); !errors.Is(err, ErrNotFound) {
					t.Errorf("%s: %v, want ErrNotFound", name, err)
				}
			}
		})
	}
}

// TestS3CacheWrite: a closure written into an S3 bucket (signed requests,
// compression none) gives the files Nix 2.8 wrote for the same closure,
// byte for byte, uploaded with Nix's content types; and substitutes back.
func TestS3CacheWrite(t *testing.T) {
	f := newFixture(t)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDCAIRNTEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "cairn-test-secret")
	fake := &fakeS3{t: t, dir: t.TempDir(), secret: "cairn-test-secret", gzip: map[string]bool{}}
	srv := httptest.NewServer(fake)
	defer srv.Close()
	url := "s3://cache?region=eu-west-3&scheme=http&endpoint=" + strings.TrimPrefix(srv.URL, "http://")
	ctx := context.Background()
	w, err := OpenCacheWriter(ctx, url+"&compression=none", storepath.DefaultStoreDir, HTTPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The closure, as Nix's own uncompressed cache of it holds it.
	src, err := NewCache("file://"+f.caches["none"], Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{f.dep, f.mid, f.top} {
		p := parsePath(t, name)
		ni, err := src.NarInfo(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		info := &store.PathInfo{Path: p, NarHash: ni.NarHash, NarSize: ni.NarSize, References: ni.References, Deriver: ni.Deriver, CA: ni.CA}
		for _, sig := range ni.Sigs {
			info.Signatures = append(info.Signatures, sig.String())
		}
		rc, err := src.OpenNar(ctx, ni)
		if err != nil {
			t.Fatal(err)
		}
		err = w.AddNar(ctx, info, rc, store.AddNarOptions{})
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"nix-cache-info", parsePath(t, f.top).HashPart() + ".narinfo", parsePath(t, f.dep).HashPart() + ".narinfo"} {
		got, _ := os.ReadFile(filepath.Join(fake.dir, name))
		want, _ := os.ReadFile(filepath.Join(f.caches["none"], name))
		if string(got) != string(want) || len(got) == 0 {
			t.Errorf("%s uploaded:\n%s\nNix wrote:\n%s", name, got, want)
		}
	}
	fake.mu.Lock()
	types := strings.Join(fake.types, "\n")
	fake.mu.Unlock()
	for _, want := range []string{"nix-cache-info text/x-nix-cache-info", ".narinfo text/x-nix-narinfo", ".nar application/x-nix-nar"} {
		if !strings.Contains(types, want) {
			t.Errorf("uploads %q: none with %q", types, want)
		}
	}
	st, root := newStore(t)
	if err := New(st, 2).Realise(ctx, cacheConfig(t, f, url, true), []storepath.StorePath{parsePath(t, f.top)}, nil); err != nil {
		t.Fatal(err)
	}
	nixtest.Run(t, nil, "nix-store", "--store", "local?root="+root, "--verify", "--check-contents")
}
