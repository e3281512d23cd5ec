package builtins

import (
	"compress/bzip2"
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/ulikunitz/xz"
	"golang.org/x/sys/unix"

	"cairn/internal/nar"
	"cairn/internal/nixhash"
)

// Limits of downloads.
const (
	// MaxErrorBody bounds the response body read after an HTTP error;
	// Nix quotes bodies shorter than 1024 bytes in the message.
	MaxErrorBody = 1024
	// MaxRedirects is curl's CURLOPT_MAXREDIRS as Nix sets it.
	MaxRedirects = 10
	// MaxCAFile bounds the CA bundle.
	MaxCAFile = 16 << 20
	// copyBufferSize is the buffer a flat download is written through.
	copyBufferSize = 256 << 10
	// progressInterval spaces the progress results of a download.
	progressInterval = 500 * time.Millisecond
)

// userAgent is what Cairn says it is in HTTP requests.
const userAgent = "Cairn Nix/2.8.0"

// fetchurl is builtin:fetchurl, as Nix 2.8's builtinFetchurl: try the
// hashed mirrors for a flat output, then the URL; write the download as the
// output (or restore it as a NAR with unpack=1); make it executable with
// executable=1.
func fetchurl(ctx context.Context, j *Job, l *logger) error {
	env := j.Env
	out, err := attr(env, "out")
	if err != nil {
		return err
	}
	mainURL, err := attr(env, "url")
	if err != nil {
		return err
	}
	unpack := env["unpack"] == "1"
	t := &transfer{s: j.Settings, view: j.View, log: l}
	defer t.close()

	fetch := func(u string) error {
		err := t.download(ctx, u, func(r io.Reader) error {
			// A failed attempt may have left a partial output.
			if err := removeAll(j.Out); err != nil {
				return err
			}
			if unpack && strings.HasSuffix(mainURL, ".xz") {
				xr, err := xz.NewReader(r)
				if err != nil {
					return fmt.Errorf("decompress xz: %w", err)
				}
				r = xr
			}
			if unpack {
				return nar.Restore(r, j.Out, nar.RestoreOptions{})
			}
			f, err := os.OpenFile(j.Out, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o666)
			if err != nil {
				return fmt.Errorf("opening file '%s': %s", hl(out), hl(errText(err)))
			}
			if _, err := io.CopyBuffer(struct{ io.Writer }{f}, r, make([]byte, copyBufferSize)); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return fmt.Errorf("writing to file '%s': %s", hl(out), hl(errText(err)))
			}
			return nil
		})
		if err != nil {
			return err
		}
		if env["executable"] == "1" {
			if err := chmodNoFollow(j.Out, 0o755); err != nil {
				return fmt.Errorf("making '%s' executable: %s", hl(out), hl(errText(err)))
			}
		}
		return nil
	}

	mode, err := attr(env, "outputHashMode")
	if err != nil {
		return err
	}
	if mode == "flat" {
		for _, m := range j.Settings.HashedMirrors {
			err := func() error {
				if !strings.HasSuffix(m, "/") {
					m += "/"
				}
				algoName, err := attr(env, "outputHashAlgo")
				if err != nil {
					return err
				}
				var algo nixhash.Algorithm
				if algoName != "" {
					if algo, err = nixhash.ParseAlgorithm(algoName); err != nil {
						return err
					}
				}
				hs, err := attr(env, "outputHash")
				if err != nil {
					return err
				}
				h, err := nixhash.ParseAny(hs, algo)
				if err != nil {
					return err
				}
				return fetch(m + h.Algorithm().String() + "/" + h.Base16())
			}()
			if err == nil {
				return nil
			}
			l.debug("%s", err)
		}
	}
	return fetch(mainURL)
}

// errorKind classifies a failed transfer as Nix's FileTransfer::Error.
type errorKind int

const (
	transient errorKind = iota
	notFound
	forbidden
	misc
)

// transferError is a failed download.
type transferError struct {
	kind errorKind
	msg  string
}

func (e *transferError) Error() string { return e.msg }

// transfer downloads for one job.
type transfer struct {
	s      Settings
	view   *View
	log    *logger
	client *http.Client
	tr     *http.Transport
}

func (t *transfer) close() {
	if t.tr != nil {
		t.tr.CloseIdleConnections()
	}
}

// download fetches u and hands the body to sink, retrying transient
// failures (download-attempts in all) while sink has read nothing.
func (t *transfer) download(ctx context.Context, u string, sink func(io.Reader) error) error {
	act := t.log.start(lvlTalkative, actFileTransfer, fmt.Sprintf("downloading '%s'", u), u)
	defer t.log.stop(act)
	attempts := t.s.Attempts
	if attempts <= 0 {
		attempts = 5
	}
	base := t.s.RetryDelay
	if base == 0 {
		base = 250 * time.Millisecond
	}
	for attempt := 1; ; attempt++ {
		cr := &countingReader{ctx: ctx, log: t.log, act: act}
		err := t.once(ctx, u, cr, sink)
		if err == nil {
			return nil
		}
		var te *transferError
		if !errors.As(err, &te) || te.kind != transient || attempt >= attempts || cr.n > 0 || ctx.Err() != nil {
			return err
		}
		d := time.Duration(float64(base) * math.Pow(2, float64(attempt-1)+rand.Float64()*0.5))
		t.log.warn("%s; retrying in %d ms", err, d.Milliseconds())
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return err
		}
	}
}

// once is one attempt. Errors reading the source are transferErrors;
// errors of the sink are returned as they are.
func (t *transfer) once(ctx context.Context, u string, cr *countingReader, sink func(io.Reader) error) error {
	fail := func(kind errorKind, format string, args ...any) error {
		return &transferError{kind: kind, msg: fmt.Sprintf("unable to download '%s': ", u) + fmt.Sprintf(format, args...)}
	}
	pu, err := url.Parse(u)
	if err != nil {
		return fail(misc, "URL using bad/illegal format or missing URL (3)")
	}
	var body io.ReadCloser
	switch pu.Scheme {
	case "file":
		if pu.Host != "" && pu.Host != "localhost" {
			return fail(misc, "URL using bad/illegal format or missing URL (3)")
		}
		f, err := t.view.Open(pu.Path)
		if err == nil {
			var fi os.FileInfo
			if fi, err = f.Stat(); err == nil && !fi.Mode().IsRegular() {
				err = syscall.EISDIR
			}
			if err != nil {
				f.Close()
			}
		}
		if err != nil {
			return fail(notFound, "Couldn't read a file:// file (37)")
		}
		body = f
	case "http", "https":
		c, err := t.httpClient()
		if err != nil {
			return fail(misc, "%s", err)
		}
		ctx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return fail(misc, "URL using bad/illegal format or missing URL (3)")
		}
		ua := userAgent
		if t.s.UserAgentSuffix != "" {
			ua += " " + t.s.UserAgentSuffix
		}
		req.Header.Set("User-Agent", ua)
		resp, err := c.Do(req)
		if err != nil {
			return fail(kindOf(err), "%s", httpErrText(err))
		}
		switch resp.StatusCode {
		case 200, 201, 204, 206:
		default:
			defer resp.Body.Close()
			msg := fmt.Sprintf("HTTP error %d ('%s')", resp.StatusCode, strings.TrimSpace(strings.TrimPrefix(resp.Status, fmt.Sprint(resp.StatusCode))))
			b, _ := io.ReadAll(io.LimitReader(resp.Body, MaxErrorBody))
			if len(b) > 0 && len(b) < MaxErrorBody {
				msg += "\n\nresponse body:\n\n" + strings.TrimRight(string(b), "\n\r\t ")
			}
			return fail(statusKind(resp.StatusCode), "%s", msg)
		}
		body = resp.Body
		if resp.Header.Get("Content-Encoding") == "" {
			cr.expected = resp.ContentLength
		}
		if t.s.StalledTimeout > 0 {
			cr.stall = time.AfterFunc(t.s.StalledTimeout, func() { cancel(errStalled) })
			cr.stallAfter = t.s.StalledTimeout
			defer cr.stall.Stop()
		}
		dec, err := decoder(resp.Header.Get("Content-Encoding"), body)
		if err != nil {
			body.Close()
			return fail(misc, "%s", err)
		}
		body = readCloser{dec, body}
		cr.cause = func() error { return context.Cause(ctx) }
	default:
		return fail(misc, "Unsupported protocol (1)")
	}
	defer body.Close()
	cr.r = body
	err = sink(cr)
	if cr.err != nil && !errors.Is(cr.err, io.EOF) {
		kind := transient
		if pu.Scheme == "file" {
			kind = misc
		}
		e := cr.err
		if cr.cause != nil && errors.Is(cr.cause(), errStalled) {
			e = errStalled
		}
		return fail(kind, "%s", httpErrText(e))
	}
	return err
}

var errStalled = errors.New("no data received for stalled-download-timeout seconds")

// statusKind classifies an HTTP status as Nix does.
func statusKind(code int) errorKind {
	switch {
	case code == 404 || code == 410:
		return notFound
	case code == 401 || code == 403 || code == 407:
		return forbidden
	case code >= 400 && code < 500 && code != 408 && code != 429:
		return misc
	case code == 501 || code == 505 || code == 511:
		return misc
	}
	return transient
}

// kindOf classifies a request's error: certificate and protocol errors are
// not worth retrying; the network's are.
func kindOf(err error) errorKind {
	var cv *tls.CertificateVerificationError
	var ue x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	if errors.As(err, &cv) || errors.As(err, &ue) || errors.As(err, &he) || errors.As(err, &ci) {
		return misc
	}
	if strings.Contains(err.Error(), "stopped after") { // too many redirects
		return misc
	}
	return transient
}

// httpErrText is a request's error without Go's "Get "URL": " prefix.
func httpErrText(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return err.Error()
}

// httpClient makes the job's HTTP client: the CA bundle, netrc
// credentials, timeouts, the environment's proxies.
func (t *transfer) httpClient() (*http.Client, error) {
	if t.client != nil {
		return t.client, nil
	}
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.s.CAFile != "" {
		pool, err := loadCAFile(t.s.CAFile)
		if err != nil {
			return nil, err
		}
		tlsConf.RootCAs = pool
	}
	creds, err := readNetrc(t.s.NetrcFile)
	if err != nil {
		return nil, err
	}
	dialer := &net.Dialer{Timeout: t.s.ConnectTimeout, KeepAlive: 30 * time.Second}
	t.tr = &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         dialer.DialContext,
		TLSClientConfig:     tlsConf,
		TLSHandshakeTimeout: t.s.ConnectTimeout,
		DisableCompression:  true, // as curl: no Accept-Encoding; a Content-Encoding is still decoded
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 2,
	}
	t.client = &http.Client{
		Transport: &netrcTransport{next: t.tr, creds: creds},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) > MaxRedirects {
				return fmt.Errorf("stopped after %d redirects", MaxRedirects)
			}
			return nil
		},
	}
	return t.client, nil
}

// loadCAFile reads a PEM bundle of CA certificates.
func loadCAFile(path string) (*x509.CertPool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("problem with the SSL CA cert (path? access rights?): %s", errText(err))
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxCAFile+1))
	if err != nil {
		return nil, fmt.Errorf("problem with the SSL CA cert (path? access rights?): %s", errText(err))
	}
	if len(b) > MaxCAFile {
		return nil, fmt.Errorf("problem with the SSL CA cert: '%s' is larger than %d bytes", path, MaxCAFile)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("problem with the SSL CA cert: no certificates in '%s'", path)
	}
	return pool, nil
}

// netrcTransport adds a host's netrc credentials to requests that carry
// none (curl's CURL_NETRC_OPTIONAL), hop by hop, so a redirect to another
// host gets that host's.
type netrcTransport struct {
	next  http.RoundTripper
	creds netrc
}

func (n *netrcTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.User == nil && req.Header.Get("Authorization") == "" {
		if login, password, ok := n.creds.lookup(req.URL.Hostname()); ok {
			req = req.Clone(req.Context())
			req.SetBasicAuth(login, password)
		}
	}
	return n.next.RoundTrip(req)
}

// decoder undoes a Content-Encoding, as Nix's decompression sink does.
func decoder(encoding string, r io.Reader) (io.Reader, error) {
	switch strings.ToLower(strings.TrimSpace(encoding)) {
	case "", "none", "identity":
		return r, nil
	case "gzip", "x-gzip":
		return gzip.NewReader(r)
	case "xz":
		return xz.NewReader(r)
	case "bzip2":
		return bzip2.NewReader(r), nil
	}
	return nil, fmt.Errorf("unknown compression method '%s'", encoding)
}

type readCloser struct {
	io.Reader
	io.Closer
}

// countingReader counts what the sink reads, keeps the source's error
// apart from the sink's, feeds the stall timer and reports progress.
type countingReader struct {
	ctx        context.Context
	r          io.Reader
	expected   int64
	n          int64
	err        error
	log        *logger
	act        uint64
	last       time.Time
	stall      *time.Timer
	stallAfter time.Duration
	cause      func() error
}

func (c *countingReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil { // a file:// copy is not otherwise cancelled
		c.err = err
		return 0, err
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	if n > 0 && c.stall != nil {
		c.stall.Reset(c.stallAfter)
	}
	if err != nil {
		c.err = err
	}
	if now := time.Now(); err == io.EOF || now.Sub(c.last) >= progressInterval {
		c.last = now
		c.log.result(c.act, resProgress, c.n, max(c.expected, 0), 0, 0)
	}
	return n, err
}

// chmodNoFollow sets the mode of p unless it is a symlink (the root of an
// unpacked NAR may be one; its target is none of our business).
func chmodNoFollow(p string, mode uint32) error {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err == unix.ELOOP {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Fchmod(fd, mode)
}

// removeAll removes a partial output, making directories writable first.
func removeAll(p string) error {
	if _, err := os.Lstat(p); os.IsNotExist(err) {
		return nil
	}
	if err := os.RemoveAll(p); err == nil {
		return nil
	}
	chmodDirs(p)
	return os.RemoveAll(p)
}

func chmodDirs(p string) {
	fi, err := os.Lstat(p)
	if err != nil || !fi.IsDir() {
		return
	}
	os.Chmod(p, 0o700)
	ents, _ := os.ReadDir(p)
	for _, e := range ents {
		chmodDirs(p + "/" + e.Name())
	}
}
