package daemon

import (
	"fmt"
	"slices"
	"strings"

	"cairn/internal/config"
	"cairn/internal/narinfo"
	"cairn/internal/protocol"
	"cairn/internal/wire"
)

// connSettings are the daemon's settings as one connection sees them: the
// daemon's own, overridden by what the client set with SetOptions (Nix forks
// per connection, so a client's settings never reach another; here they stay
// in the connection).
type connSettings struct {
	global *config.Settings
	over   map[string]string // by canonical name
}

func (s *connSettings) Get(name string) string {
	name = config.Canonical(name)
	if v, ok := s.over[name]; ok {
		return v
	}
	return s.global.Get(name)
}

// scratch returns Settings holding just name's current value, to use
// config's parsing of it.
func (s *connSettings) scratch(name string) *config.Settings {
	t := config.New()
	t.Set(name, s.Get(name))
	return t
}

// KeyValue is the connection's settings as nix.conf lines (build.Options'
// HookConfig).
func (s *connSettings) KeyValue() string { return s.global.KeyValueWith(s.over) }

func (s *connSettings) Bool(name string) bool        { return s.scratch(name).Bool(name) }
func (s *connSettings) Strings(name string) []string { return strings.Fields(s.Get(name)) }

// set sets name for this connection, as config.Settings.Set would.
func (s *connSettings) set(name, value string) error {
	canon := config.Canonical(strings.TrimPrefix(name, "extra-"))
	t := config.New()
	t.Set(canon, s.Get(canon))
	if err := t.Set(name, value); err != nil {
		return err
	}
	if s.over == nil {
		s.over = map[string]string{}
	}
	s.over[canon] = t.Get(canon)
	return nil
}

// untrustedSettings are the settings an untrusted client may set: Nix 2.8's
// timeout, repeat and connect-timeout, and newer Nix's max-silent-time and
// build-poll-interval (builders only when "", see applyOptions).
var untrustedSettings = []string{"timeout", "repeat", "connect-timeout", "max-silent-time", "build-poll-interval"}

// applyOptions applies SetOptions as nix-daemon does: the fixed fields set the
// client's verbosity (the rest matter to builds only), and the overrides are
// applied as far as the client's trust allows, with a warning for each one
// ignored.
func (c *conn) applyOptions(o *protocol.ClientOptions) {
	c.log.setVerbosity(o.Verbosity)
	c.options = *o
	trusted := ClientFrom(c.ctx).Trusted
	for _, name := range wire.SortedKeys(o.Overrides) {
		value := o.Overrides[name]
		canon := config.Canonical(strings.TrimPrefix(name, "extra-"))
		switch {
		case name == "ssh-auth-sock" || canon == "experimental-features" || canon == "plugin-files":
			// Ignored, as by Nix.
		case trusted || slices.Contains(untrustedSettings, canon) || (canon == "builders" && value == ""):
			if err := c.settings.set(name, value); err != nil {
				c.log.Warn(err.Error())
			}
		case canon == "substituters":
			c.settings.set(name, c.filterSubstituters(value))
		default:
			c.log.Warn(fmt.Sprintf("ignoring the client-specified setting '%s', because it is a restricted setting and you are not a trusted user", name))
		}
	}
}

// filterSubstituters keeps the substituters the daemon trusts: those in
// trusted-substituters or substituters (a missing trailing "/" tolerated).
func (c *conn) filterSubstituters(value string) string {
	allowed := append(c.s.Settings.Strings("trusted-substituters"), c.s.Settings.Strings("substituters")...)
	var keep []string
	for _, s := range strings.Fields(value) {
		switch {
		case slices.Contains(allowed, s):
			keep = append(keep, s)
		case !strings.HasSuffix(s, "/") && slices.Contains(allowed, s+"/"):
			keep = append(keep, s+"/")
		default:
			c.log.Warn(fmt.Sprintf("ignoring untrusted substituter '%s'", s))
		}
	}
	return strings.Join(keep, " ")
}

// publicKeys parses trusted-public-keys, skipping malformed keys with a
// warning.
func (c *conn) publicKeys() []narinfo.PublicKey {
	return narinfo.TrustedKeys(c.settings.Get("trusted-public-keys"), c.log.Warn)
}
