// Package config reads Nix's configuration: nix.conf files, NIX_CONFIG and --option.
//
// Grammar of a configuration file (as Nix 2.8 reads it):
//
//	file    = { line "\n" }
//	line    = [ setting | include ] [ "#" comment ]
//	setting = name "=" { word }          value: the words joined by single spaces
//	include = ( "include" | "!include" ) path      relative to the including file;
//	                                               "!include" of a missing file is no error
//
// A name "extra-NAME" appends to NAME instead of replacing it. Every name that some Nix
// version knows is accepted, also the client-side ones Cairn has no use for, so one
// nix.conf serves both, and so are Cairn's own (cairnSettings); any other name is a
// warning in a file and an error on the command line.
package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// ErrUnknown is wrapped by the error for a setting name no Nix version knows.
var ErrUnknown = errors.New("unknown setting")

// ErrInvalid matches (errors.Is) the error for a value a setting cannot
// take, whose text is Nix's message alone.
var ErrInvalid = errors.New("invalid setting value")

type invalidError struct{ msg string }

func (e *invalidError) Error() string        { return e.msg }
func (e *invalidError) Is(target error) bool { return target == ErrInvalid }

type kind uint8

const (
	kindString kind = iota
	kindBool
	kindInt
	kindMaxJobs // a count or "auto"
	kindSandbox // true, false or relaxed
)

type knownSetting struct {
	name    string
	kind    kind
	since   string
	aliases []string
}

// byName maps every known name and alias to its setting.
var byName = func() map[string]*knownSetting {
	m := make(map[string]*knownSetting, 2*len(knownSettings))
	for i := range knownSettings {
		m[knownSettings[i].name] = &knownSettings[i]
	}
	for i := range knownSettings {
		s := &knownSettings[i]
		for _, a := range s.aliases {
			if own, ok := m[a]; ok && own.name == a {
				// A later release renamed a setting (download-attempts
				// became filetransfer-retry-attempts): both names are the
				// older one, which Nix 2.8 knows and Cairn's defaults use.
				m[s.name] = own
				continue
			}
			m[a] = s
		}
	}
	for _, name := range legacySettings {
		m[name] = &knownSetting{name: name}
	}
	for i := range cairnSettings {
		m[cairnSettings[i].name] = &cairnSettings[i]
	}
	return m
}()

// cairnSettings are Cairn's own settings, which no Nix knows (Nix warns
// about them in a shared nix.conf). Their defaults are in defaults.
var cairnSettings = []knownSetting{
	// The user-mode network stack of fixed-output builds: auto (pasta,
	// else slirp4netns), pasta, slirp4netns, an absolute path to either,
	// or none (such builds get only a loopback interface).
	{"fixed-output-network", kindString, "cairn", nil},
	// Whether fixed-output builds reach the host's loopback services (as
	// their gateway, and with pasta as localhost too).
	{"fixed-output-host-loopback", kindBool, "cairn", nil},
}

// lookup resolves name, with or without the "extra-" prefix, to its setting.
func lookup(name string) (s *knownSetting, extra bool) {
	if s, ok := byName[name]; ok {
		return s, false
	}
	if base, ok := strings.CutPrefix(name, "extra-"); ok {
		if s, ok := byName[base]; ok {
			return s, true
		}
	}
	return nil, false
}

// Known reports whether some Nix version knows the setting name (an alias or an
// "extra-" form included).
func Known(name string) bool {
	s, _ := lookup(name)
	return s != nil
}

// Canonical returns the setting's own name for an alias; other names are returned as they are.
func Canonical(name string) string {
	if s, _ := lookup(name); s != nil {
		return s.name
	}
	return name
}

// Settings holds configuration values by canonical setting name. The zero value is
// not ready; use New.
type Settings struct {
	values map[string]string
	// set names the settings given a value by configuration (a file,
	// NIX_CONFIG, --option), not only by default: what Nix calls overridden.
	set map[string]bool
}

// New returns Settings holding Nix 2.8's defaults for the settings Cairn reads.
func New() *Settings {
	s := &Settings{values: make(map[string]string, len(defaults))}
	for name, v := range defaults {
		s.values[name] = v
	}
	for name, v := range platformDefaults() {
		s.values[name] = v
	}
	if rootBuildUsers() {
		s.values["build-users-group"] = rootBuildUsersGroup
	}
	return s
}

// Set sets a setting; "extra-NAME" appends to NAME. An unknown name gives an error
// wrapping ErrUnknown, a value of the wrong kind an error saying so.
func (s *Settings) Set(name, value string) error {
	k, extra := lookup(name)
	if k == nil {
		return fmt.Errorf("set %q: %w", name, ErrUnknown)
	}
	if err := k.check(value); err != nil {
		return err
	}
	if extra {
		if old := s.values[k.name]; old != "" && value != "" {
			value = old + " " + value
		} else if value == "" {
			value = old
		}
	}
	s.values[k.name] = value
	if s.set == nil {
		s.set = map[string]bool{}
	}
	s.set[k.name] = true
	return nil
}

// StoreOverrides are the settings a Nix 2.8 client passes a daemon in
// SetOptions: the store's settings that configuration set, but those
// SetOptions carries in fields of their own and experimental-features.
func (s *Settings) StoreOverrides() map[string]string {
	o := map[string]string{}
	for name := range s.set {
		if storeSettings[name] {
			o[name] = s.values[name]
		}
	}
	// Cairn keeps extra-sandbox-paths apart (an old setting of its own);
	// for Nix 2.8 it is sandbox-paths' extra- form.
	if s.set["extra-sandbox-paths"] {
		o["sandbox-paths"] = strings.TrimSpace(s.values["sandbox-paths"] + " " + s.values["extra-sandbox-paths"])
	}
	return o
}

// storeSettings are Nix 2.8's libstore and file transfer settings, which its
// client passes on (RemoteStore::setOptions), less keep-failed, keep-going,
// fallback, max-jobs, max-silent-time, cores, substitute and
// experimental-features.
var storeSettings = func() map[string]bool {
	m := map[string]bool{}
	for _, n := range strings.Fields(`allow-new-privileges allow-symlinked-store allowed-impure-host-deps
		allowed-users auto-optimise-store build-hook build-poll-interval build-users-group builders
		builders-use-substitutes compress-build-log connect-timeout darwin-log-sandbox-violations diff-hook
		download-attempts enforce-determinism extra-platforms filter-syscalls fsync-metadata gc-reserved-space
		hashed-mirrors http-connections http2 ignored-acls impersonate-linux-26 keep-build-log keep-derivations
		keep-env-derivations keep-outputs log-lines max-build-log-size max-free min-free min-free-check-interval
		nar-buffer-size narinfo-cache-negative-ttl narinfo-cache-positive-ttl netrc-file plugin-files
		post-build-hook pre-build-hook print-missing repeat require-sigs run-diff-hook sandbox sandbox-build-dir
		sandbox-dev-shm-size sandbox-fallback sandbox-paths secret-key-files stalled-download-timeout store
		substituters sync-before-registering system system-features tarball-ttl timeout trusted-public-keys
		trusted-substituters trusted-users use-sqlite-wal user-agent-suffix`) {
		m[n] = true
	}
	return m
}()

// check validates a value of the setting's kind; the errors wrap ErrInvalid
// and read as Nix 2.8's.
func (k *knownSetting) check(v string) error {
	invalid := func(format string, args ...any) error {
		return &invalidError{fmt.Sprintf(format, args...)}
	}
	switch k.kind {
	case kindBool:
		if _, err := parseBool(v); err != nil {
			return invalid("Boolean setting '%s' has invalid value '%s'", k.name, v)
		}
	case kindInt:
		if _, err := parseSize(v); err != nil {
			return invalid("setting '%s' has invalid value '%s'", k.name, v)
		}
	case kindMaxJobs:
		if v != "auto" {
			if _, err := strconv.ParseUint(v, 10, 32); err != nil {
				return invalid("configuration setting '%s' should be 'auto' or an integer", k.name)
			}
		}
	case kindSandbox:
		if v != "relaxed" {
			if _, err := parseBool(v); err != nil {
				return invalid("option '%s' has invalid value '%s'", k.name, v)
			}
		}
	}
	return nil
}

// parseBool accepts the spellings Nix accepts.
func parseBool(v string) (bool, error) {
	switch v {
	case "true", "yes", "1":
		return true, nil
	case "false", "no", "0":
		return false, nil
	}
	return false, fmt.Errorf("%q is not a Boolean", v)
}

// SizeSuffix splits the K, M, G or T suffix (powers of 1024) Nix allows on
// a size off v: the number's digits and the multiplier (1 without one).
func SizeSuffix(v string) (digits string, mult int64) {
	if n := len(v); n > 0 {
		switch v[n-1] {
		case 'K':
			return v[:n-1], 1 << 10
		case 'M':
			return v[:n-1], 1 << 20
		case 'G':
			return v[:n-1], 1 << 30
		case 'T':
			return v[:n-1], 1 << 40
		}
	}
	return v, 1
}

// parseSize parses an integer with an optional K, M, G or T suffix (powers of 1024).
func parseSize(v string) (int64, error) {
	v, mult := SizeSuffix(v)
	if i, err := strconv.ParseInt(v, 10, 64); err == nil {
		if i > 0 && i > (1<<63-1)/mult {
			return 1<<63 - 1, nil
		}
		return i * mult, nil
	}
	// Unsigned 64-bit values (max-free's default is 2^64-1) saturate.
	if u, err := strconv.ParseUint(v, 10, 64); err == nil && u > 0 {
		return 1<<63 - 1, nil
	}
	return 0, fmt.Errorf("%q is not an integer", v)
}

// KeyValue is every setting with a value as "name = value" lines, sorted by
// name: what Nix passes a post-build-hook in NIX_CONFIG.
func (s *Settings) KeyValue() string { return s.KeyValueWith(nil) }

// KeyValueWith is KeyValue with overrides (canonical name → value) in place.
func (s *Settings) KeyValueWith(overrides map[string]string) string {
	names := make([]string, 0, len(s.values)+len(overrides))
	for n := range s.values {
		names = append(names, n)
	}
	for n := range overrides {
		if _, ok := s.values[n]; !ok {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	var b strings.Builder
	for _, n := range names {
		v, ok := overrides[n]
		if !ok {
			v = s.values[n]
		}
		fmt.Fprintf(&b, "%s = %s\n", n, v)
	}
	return b.String()
}

// Get returns a setting's value as text ("" if unset).
func (s *Settings) Get(name string) string { return s.values[Canonical(name)] }

// IsSet reports whether the setting has a value, from a default or from configuration.
func (s *Settings) IsSet(name string) bool {
	_, ok := s.values[Canonical(name)]
	return ok
}

// Bool returns a Boolean setting; an unset or malformed one is false.
func (s *Settings) Bool(name string) bool {
	b, _ := parseBool(s.Get(name))
	return b
}

// Int returns an integer setting; an unset or malformed one is 0.
func (s *Settings) Int(name string) int64 {
	i, _ := parseSize(s.Get(name))
	return i
}

// Strings returns a list setting split on white space.
func (s *Settings) Strings(name string) []string { return strings.Fields(s.Get(name)) }

// Apply sets each name in overrides; used for --option and SetOptions.
func (s *Settings) Apply(overrides map[string]string) error {
	for name, value := range overrides {
		if err := s.Set(name, value); err != nil {
			return err
		}
	}
	return nil
}

// maxIncludeDepth stops include cycles.
const maxIncludeDepth = 16

// ApplyFile reads a configuration file and applies it. A missing file is no error.
// Unknown settings are passed to warn, as Nix warns about them.
func (s *Settings) ApplyFile(path string, warn func(string)) error {
	return s.applyFile(path, warn, 0)
}

func (s *Settings) applyFile(path string, warn func(string), depth int) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read config %s: %w", path, err)
	}
	return s.apply(string(data), path, filepath.Dir(path), warn, depth)
}

// ApplyText applies configuration text such as NIX_CONFIG's; source names it in messages.
func (s *Settings) ApplyText(text, source string, warn func(string)) error {
	dir, _ := os.Getwd()
	return s.apply(text, source, dir, warn, 0)
}

func (s *Settings) apply(text, source, dir string, warn func(string), depth int) error {
	if depth > maxIncludeDepth {
		return fmt.Errorf("read config %s: includes nested more than %d deep", source, maxIncludeDepth)
	}
	for n, line := range strings.Split(text, "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		words := configWords(line)
		if len(words) == 0 {
			continue
		}
		if len(words) < 2 {
			return fmt.Errorf("read config %s line %d: illegal configuration line %q", source, n+1, line)
		}
		if words[0] == "include" || words[0] == "!include" {
			if len(words) != 2 {
				return fmt.Errorf("read config %s line %d: illegal configuration line %q", source, n+1, line)
			}
			p := words[1]
			if !filepath.IsAbs(p) {
				p = filepath.Join(dir, p)
			}
			if _, err := os.Stat(p); err != nil {
				if words[0] == "!include" && errors.Is(err, os.ErrNotExist) {
					continue
				}
				return fmt.Errorf("read config %s line %d: file %q included from %q not found", source, n+1, p, source)
			}
			data, err := os.ReadFile(p)
			if err != nil {
				return fmt.Errorf("read config %s: %w", p, err)
			}
			if err := s.apply(string(data), p, filepath.Dir(p), warn, depth+1); err != nil {
				return err
			}
			continue
		}
		if words[1] != "=" {
			return fmt.Errorf("read config %s line %d: illegal configuration line %q", source, n+1, line)
		}
		err := s.Set(words[0], strings.Join(words[2:], " "))
		if errors.Is(err, ErrUnknown) {
			if warn != nil {
				warn(fmt.Sprintf("unknown setting '%s'", words[0]))
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("read config %s line %d: %w", source, n+1, err)
		}
	}
	return nil
}

// configWords splits a configuration line into words as Nix does: at
// spaces, tabs, carriage returns and newlines only (a vertical tab, a form
// feed or a no-break space is part of a word, and so makes the line illegal
// where Nix finds it so).
func configWords(line string) []string {
	return strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == '\t' || r == '\r' || r == '\n' })
}

// Env is how Load reads the environment; os.Getenv in production.
type Env func(string) string

// ConfDir returns NIX_CONF_DIR, or Nix's default /etc/nix.
func ConfDir(env Env) string {
	if d := env("NIX_CONF_DIR"); d != "" {
		return d
	}
	return "/etc/nix"
}

// Load reads configuration the way Nix does: $NIX_CONF_DIR/nix.conf, then the user
// files (NIX_USER_CONF_FILES, or nix/nix.conf in XDG_CONFIG_DIRS and XDG_CONFIG_HOME,
// later files weaker), then NIX_CONFIG.
func Load(env Env, warn func(string)) (*Settings, error) {
	s := New()
	s.values["netrc-file"] = filepath.Join(ConfDir(env), "netrc")
	s.values["builders"] = "@" + filepath.Join(ConfDir(env), "machines")
	if err := s.ApplyFile(filepath.Join(ConfDir(env), "nix.conf"), warn); err != nil {
		return nil, err
	}
	files := userConfFiles(env)
	for i := len(files) - 1; i >= 0; i-- {
		if err := s.ApplyFile(files[i], warn); err != nil {
			return nil, err
		}
	}
	if text := env("NIX_CONFIG"); text != "" {
		if err := s.ApplyText(text, "NIX_CONFIG", warn); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func userConfFiles(env Env) []string {
	if v := env("NIX_USER_CONF_FILES"); v != "" {
		return filepath.SplitList(v)
	}
	var dirs []string
	home := env("XDG_CONFIG_HOME")
	if home == "" && env("HOME") != "" {
		home = filepath.Join(env("HOME"), ".config")
	}
	if home != "" {
		dirs = append(dirs, home)
	}
	xdg := env("XDG_CONFIG_DIRS")
	if xdg == "" {
		xdg = "/etc/xdg"
	}
	dirs = append(dirs, filepath.SplitList(xdg)...)
	files := make([]string, 0, len(dirs))
	for _, d := range dirs {
		files = append(files, filepath.Join(d, "nix", "nix.conf"))
	}
	return files
}
