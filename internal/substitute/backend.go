package substitute

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ErrNotFound says a cache has no file of that name.
var ErrNotFound = errors.New("not found")

// MaxCAFile bounds a CA bundle file.
const MaxCAFile = 16 << 20

// MaxRedirects bounds the redirects of one HTTP request.
const MaxRedirects = 10

// Backend fetches a binary cache's files by name ("nix-cache-info",
// "<hashpart>.narinfo", "nar/…"). Get returns an error matching ErrNotFound
// for a file the cache does not have.
type Backend interface {
	Get(ctx context.Context, name string) (io.ReadCloser, error)
}

// validName reports whether name stays inside the cache: relative, no ".."
// element, no empty element.
func validName(name string) bool {
	if name == "" || strings.HasPrefix(name, "/") || strings.ContainsAny(name, "\x00\\?#") {
		return false
	}
	for _, e := range strings.Split(name, "/") {
		if e == "" || e == "." || e == ".." {
			return false
		}
	}
	return true
}

// fileBackend is a cache in a local directory (file://DIR).
type fileBackend struct{ dir string }

func (f fileBackend) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	if !validName(name) {
		return nil, fmt.Errorf("get %s: invalid name", name)
	}
	fh, err := os.Open(filepath.Join(f.dir, filepath.FromSlash(name)))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("get %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	return fh, nil
}

// httpBackend is a cache at an http:// or https:// URL prefix.
type httpBackend struct {
	base   string // without the trailing "/"
	client *http.Client
}

// HTTPOptions are the settings of an HTTP cache's client.
type HTTPOptions struct {
	ConnectTimeout time.Duration // connect-timeout; 0: the system's
	CAFile         string        // ssl-cert-file; "": the system's certificates
}

func newHTTPBackend(base string, o HTTPOptions) (*httpBackend, error) {
	tlsConf, err := tlsConfig(o.CAFile)
	if err != nil {
		return nil, err
	}
	dialer := &net.Dialer{Timeout: o.ConnectTimeout, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         dialer.DialContext,
		TLSClientConfig:     tlsConf,
		TLSHandshakeTimeout: o.ConnectTimeout,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
	}
	client := &http.Client{
		Transport: tr,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) > MaxRedirects {
				return fmt.Errorf("stopped after %d redirects", MaxRedirects)
			}
			return nil
		},
	}
	return &httpBackend{base: strings.TrimSuffix(base, "/"), client: client}, nil
}

// tlsConfig is the TLS of a cache's client: TLS 1.2 or later, the roots of
// caFile (ssl-cert-file) or, when "", the system's.
func tlsConfig(caFile string) (*tls.Config, error) {
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		data, err := readBounded(caFile, MaxCAFile)
		if err != nil {
			return nil, fmt.Errorf("read CA bundle %s: %w", caFile, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(data) {
			return nil, fmt.Errorf("read CA bundle %s: no certificates", caFile)
		}
		conf.RootCAs = pool
	}
	return conf, nil
}

func readBounded(name string, limit int64) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("larger than %d bytes", limit)
	}
	return data, nil
}

func (h *httpBackend) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	if !validName(name) {
		return nil, fmt.Errorf("get %s: invalid name", name)
	}
	u := h.base + "/" + name
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := h.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("unable to download '%s': %w", u, err)
	}
	switch {
	case resp.StatusCode == http.StatusOK:
		return resp.Body, nil
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusForbidden:
		// Nix treats 403 as absent too (S3 answers it for missing keys).
		resp.Body.Close()
		return nil, fmt.Errorf("get %s: %w", u, ErrNotFound)
	default:
		resp.Body.Close()
		return nil, fmt.Errorf("unable to download '%s': HTTP error %d", u, resp.StatusCode)
	}
}

// newBackend returns the backend of a cache URL: file://DIR, http://…,
// https://…; its query parameters are the caller's.
func newBackend(u *url.URL, o HTTPOptions) (Backend, error) {
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("open cache %s: file URL with a host", u.Redacted())
		}
		return fileBackend{dir: u.Path}, nil
	case "http", "https":
		v := *u
		v.RawQuery, v.Fragment = "", ""
		return newHTTPBackend(v.String(), o)
	case "s3":
		return newS3Backend(u, o)
	}
	return nil, fmt.Errorf("open cache %s: %w", u.Redacted(), errUnsupportedScheme)
}

var errUnsupportedScheme = errors.New("don't know how to open this kind of binary cache")
