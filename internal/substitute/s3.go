package substitute

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/logging"
)

// s3Backend is a cache in an S3 bucket (s3://BUCKET), read as Nix 2.8's
// S3BinaryCacheStore reads it: the parameters region (or aws-region,
// us-east-1 by default), profile, scheme and endpoint; with an endpoint, the
// bucket is addressed by path (MinIO, Ceph), otherwise by virtual host. The
// credentials are the AWS SDK's default chain (or the profile's); where
// there are none, requests go unsigned, as to a public bucket.
type s3Backend struct {
	bucket string
	opts   s3Params
	ca     HTTPOptions

	once   sync.Once
	client *s3.Client
	err    error
}

type s3Params struct{ region, profile, scheme, endpoint string }

// s3ConnectTimeout and s3RequestTimeout are Nix's for S3.
const (
	s3ConnectTimeout = 5 * time.Second
	s3RequestTimeout = 600 * time.Second
)

func newS3Backend(u *url.URL, o HTTPOptions) (*s3Backend, error) {
	if u.Host == "" {
		return nil, fmt.Errorf("open cache %s: no bucket", u.Redacted())
	}
	q := u.Query()
	p := s3Params{region: q.Get("region"), profile: q.Get("profile"), scheme: q.Get("scheme"), endpoint: q.Get("endpoint")}
	if p.region == "" {
		p.region = q.Get("aws-region")
	}
	if p.region == "" {
		p.region = "us-east-1"
	}
	if p.scheme != "" && p.scheme != "http" && p.scheme != "https" {
		return nil, fmt.Errorf("open cache %s: scheme %q", u.Redacted(), p.scheme)
	}
	return &s3Backend{bucket: u.Host, opts: p, ca: o}, nil
}

// connect makes the client on first use: loading the SDK's configuration
// may look for credentials (files, the environment, an instance's metadata).
func (b *s3Backend) connect(ctx context.Context) (*s3.Client, error) {
	b.once.Do(func() {
		tlsConf, err := tlsConfig(b.ca.CAFile)
		if err != nil {
			b.err = err
			return
		}
		// The SDK's own client, so that it can add AWS_CA_BUNDLE's roots.
		hc := awshttp.NewBuildableClient().WithTimeout(s3RequestTimeout).
			WithDialerOptions(func(d *net.Dialer) { d.Timeout = s3ConnectTimeout }).
			WithTransportOptions(func(tr *http.Transport) {
				if b.ca.CAFile != "" || tr.TLSClientConfig == nil {
					tr.TLSClientConfig = tlsConf
				}
			})
		opts := []func(*config.LoadOptions) error{config.WithRegion(b.opts.region), config.WithHTTPClient(hc)}
		if b.opts.profile != "" {
			opts = append(opts, config.WithSharedConfigProfile(b.opts.profile))
		}
		cfg, err := config.LoadDefaultConfig(ctx, opts...)
		if err != nil {
			b.err = fmt.Errorf("open cache s3://%s: %w", b.bucket, err)
			return
		}
		// No credentials anywhere: a public bucket, unsigned requests.
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if _, err := cfg.Credentials.Retrieve(rctx); err != nil {
			cfg.Credentials = aws.AnonymousCredentials{}
		}
		cancel()
		b.client = s3.NewFromConfig(cfg, func(o *s3.Options) {
			// Caches made by Nix have no checksums, and the SDK would say so
			// on stderr for every object.
			o.DisableLogOutputChecksumValidationSkipped = true
			o.Logger = logging.Nop{}
			scheme := b.opts.scheme
			if scheme == "" {
				scheme = "https"
			}
			if e := b.opts.endpoint; e != "" {
				if !strings.Contains(e, "://") {
					e = scheme + "://" + e
				}
				o.BaseEndpoint = aws.String(e)
				o.UsePathStyle = true
			} else if scheme == "http" {
				o.EndpointOptions.DisableHTTPS = true
			}
		})
	})
	return b.client, b.err
}

func (b *s3Backend) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	if !validName(name) {
		return nil, fmt.Errorf("get %s: invalid name", name)
	}
	c, err := b.connect(ctx)
	if err != nil {
		return nil, err
	}
	out, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(name)})
	if err != nil {
		// As Nix: a missing key, or one the bucket will not show.
		var ae smithy.APIError
		if errors.As(err, &ae) && (ae.ErrorCode() == "NoSuchKey" || ae.ErrorCode() == "AccessDenied" || ae.ErrorCode() == "NotFound") {
			return nil, fmt.Errorf("get s3://%s/%s: %w", b.bucket, name, ErrNotFound)
		}
		var ne net.Error
		if errors.As(err, &ne) {
			return nil, fmt.Errorf("AWS error fetching '%s': %w", name, ne)
		}
		return nil, fmt.Errorf("AWS error fetching '%s': %w", name, err)
	}
	return decodeContent(aws.ToString(out.ContentEncoding), out.Body)
}

// decodeContent undoes the Content-Encoding that Nix's S3 upload sets for
// compressed narinfos, listings and logs.
func decodeContent(encoding string, body io.ReadCloser) (io.ReadCloser, error) {
	switch encoding {
	case "", "identity", "none":
		return body, nil
	case "gzip":
		zr, err := gzip.NewReader(body)
		if err != nil {
			body.Close()
			return nil, fmt.Errorf("decompress gzip: %w", err)
		}
		return readCloser{zr, func() error { zr.Close(); return body.Close() }}, nil
	}
	r, done, err := decompressor(encoding, body)
	if err != nil {
		body.Close()
		return nil, err
	}
	return readCloser{r, func() error { done(); return body.Close() }}, nil
}

type readCloser struct {
	io.Reader
	close func() error
}

func (r readCloser) Close() error { return r.close() }

// s3Files keeps a cache's files in an S3 bucket, as Nix's S3 store uploads
// them: a HEAD for has, a PUT with the content type for put.
type s3Files struct {
	b   *s3Backend
	tmp string
}

func (f *s3Files) has(ctx context.Context, name string) (bool, error) {
	c, err := f.b.connect(ctx)
	if err != nil {
		return false, err
	}
	_, err = c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(f.b.bucket), Key: aws.String(name)})
	if err == nil {
		return true, nil
	}
	var ae smithy.APIError
	if errors.As(err, &ae) && (ae.ErrorCode() == "NotFound" || ae.ErrorCode() == "NoSuchKey" || ae.ErrorCode() == "AccessDenied") {
		return false, nil
	}
	return false, fmt.Errorf("AWS error checking '%s': %w", name, err)
}

func (f *s3Files) put(ctx context.Context, name string, data []byte, contentType string) error {
	return f.upload(ctx, name, bytes.NewReader(data), contentType)
}

func (f *s3Files) putFile(ctx context.Context, name string, tmp *os.File, contentType string) error {
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return err
	}
	return f.upload(ctx, name, tmp, contentType)
}

func (f *s3Files) upload(ctx context.Context, name string, body io.ReadSeeker, contentType string) error {
	c, err := f.b.connect(ctx)
	if err != nil {
		return err
	}
	_, err = c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(f.b.bucket), Key: aws.String(name), Body: body,
		ContentType: aws.String(contentType)})
	if err != nil {
		return fmt.Errorf("AWS error uploading '%s': %w", name, err)
	}
	return nil
}

func (f *s3Files) tempDir() string { return f.tmp }
