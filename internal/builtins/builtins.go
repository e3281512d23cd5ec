package builtins

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Settings are the nix.conf settings the builtins read.
type Settings struct {
	// CAFile is the bundle of CA certificates https downloads are checked
	// against: ssl-cert-file, else NIX_SSL_CERT_FILE, SSL_CERT_FILE,
	// /etc/ssl/certs/ca-certificates.crt, then
	// /nix/var/nix/profiles/default/etc/ssl/certs/ca-bundle.crt (Nix's
	// order); "" means Go's system roots.
	CAFile          string
	NetrcFile       string        // netrc-file: credentials by host
	HashedMirrors   []string      // hashed-mirrors
	ConnectTimeout  time.Duration // connect-timeout; 0: none
	StalledTimeout  time.Duration // stalled-download-timeout; 0: none
	Attempts        int           // download-attempts; 0 means Nix's default, 5
	UserAgentSuffix string        // user-agent-suffix
	// RetryDelay is the base of the exponential back-off between
	// attempts (Nix: 250 ms); 0 means that.
	RetryDelay time.Duration
}

// Getter reads a setting by name.
type Getter interface{ Get(name string) string }

// defaultCAFiles are where Nix looks for a CA bundle when no variable names
// one.
var defaultCAFiles = []string{"/etc/ssl/certs/ca-certificates.crt", "/nix/var/nix/profiles/default/etc/ssl/certs/ca-bundle.crt"}

// SettingsFrom reads Settings from s; getenv (os.Getenv) supplies the CA
// bundle when ssl-cert-file is not set.
func SettingsFrom(s Getter, getenv func(string) string) Settings {
	atoi := func(name string, def int) int {
		n, err := strconv.Atoi(strings.TrimSpace(s.Get(name)))
		if err != nil || n < 0 {
			return def
		}
		return n
	}
	st := Settings{
		CAFile:          s.Get("ssl-cert-file"),
		NetrcFile:       s.Get("netrc-file"),
		HashedMirrors:   strings.Fields(s.Get("hashed-mirrors")),
		ConnectTimeout:  time.Duration(atoi("connect-timeout", 0)) * time.Second,
		StalledTimeout:  time.Duration(atoi("stalled-download-timeout", 300)) * time.Second,
		Attempts:        atoi("download-attempts", 5),
		UserAgentSuffix: s.Get("user-agent-suffix"),
	}
	if st.CAFile == "" && getenv != nil {
		st.CAFile = getenv("NIX_SSL_CERT_FILE")
		if st.CAFile == "" {
			st.CAFile = getenv("SSL_CERT_FILE")
		}
		if st.CAFile == "" {
			for _, f := range defaultCAFiles {
				if _, err := os.Stat(f); err == nil {
					st.CAFile = f
					break
				}
			}
		}
	}
	return st
}

// Job is one run of a builtin builder.
type Job struct {
	Builder string            // "builtin:fetchurl", …
	Env     map[string]string // the derivation's env, placeholders rewritten
	// Out is the host path where output "out" is made; it does not exist
	// and its parent is private to the daemon. Env["out"] is the output's
	// path as the builder would see it.
	Out      string
	View     *View
	Log      io.Writer // the build log
	Settings Settings
}

// Run runs j's builtin. Its error is the builder's failure, in Nix's words.
func Run(ctx context.Context, j *Job) error {
	if j.View == nil {
		j.View = HostView()
	}
	l := &logger{w: j.Log}
	switch j.Builder {
	case "builtin:fetchurl":
		return fetchurl(ctx, j, l)
	case "builtin:buildenv":
		return buildenv(j, l)
	case "builtin:unpack-channel":
		return unpackChannel(ctx, j)
	}
	return fmt.Errorf("unsupported builtin builder '%s'", hl(strings.TrimPrefix(j.Builder, "builtin:")))
}

// attr is Nix's getAttr: a missing attribute is an error.
func attr(env map[string]string, name string) (string, error) {
	v, ok := env[name]
	if !ok {
		return "", fmt.Errorf("attribute '%s' missing", hl(name))
	}
	return v, nil
}

// Activity types and verbosity levels of Nix's logger, for "@nix" lines.
const (
	actFileTransfer = 101
	resProgress     = 105
	lvlWarn         = 1
	lvlTalkative    = 4
	lvlDebug        = 5
)

// activityIDs numbers activities as Nix does: the pid in the high half.
var activityIDs atomic.Uint64

func nextActivityID() uint64 {
	return uint64(os.Getpid())<<32 | activityIDs.Add(1)
}

// logger writes a builtin's log: plain lines and Nix's JSON messages.
type logger struct{ w io.Writer }

func (l *logger) json(m map[string]any) {
	if l.w == nil {
		return
	}
	b, err := json.Marshal(m)
	if err != nil {
		return
	}
	l.w.Write(append(append([]byte("@nix "), b...), '\n'))
}

func (l *logger) msg(level int, text string) {
	l.json(map[string]any{"action": "msg", "level": level, "msg": text})
}

// warn logs a warning as Nix's warn() does.
func (l *logger) warn(format string, args ...any) {
	l.msg(lvlWarn, "\x1b[35;1mwarning:\x1b[0m "+fmt.Sprintf(format, args...))
}

func (l *logger) debug(format string, args ...any) { l.msg(lvlDebug, fmt.Sprintf(format, args...)) }

func (l *logger) start(level, typ int, text string, fields ...any) uint64 {
	id := nextActivityID()
	if fields == nil {
		fields = []any{}
	}
	l.json(map[string]any{"action": "start", "id": id, "level": level, "type": typ, "text": text, "fields": fields})
	return id
}

func (l *logger) result(id uint64, typ int, fields ...any) {
	l.json(map[string]any{"action": "result", "id": id, "type": typ, "fields": fields})
}

func (l *logger) stop(id uint64) { l.json(map[string]any{"action": "stop", "id": id}) }
