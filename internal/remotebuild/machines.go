// Package remotebuild sends builds to remote machines as Nix 2.8's build hook
// (build-remote) does: the builders setting and machines files, the choice
// of a machine through the slot locks under STATE/current-load (shared with
// Nix's hook on the same store), and a client of the serve protocol
// (nix-store --serve --write, over ssh, or run directly for "localhost").
package remotebuild

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Machine is one remote builder, a line of the builders setting.
type Machine struct {
	StoreURI          string   // ssh://[user@]host[?params]; a bare host gets ssh://
	Systems           []string // in the order written
	SSHKey            string   // "" for ssh's default
	MaxJobs           uint64
	SpeedFactor       uint64 // at least 1
	SupportedFeatures []string
	MandatoryFeatures []string
	SSHPublicHostKey  string // base64, "" for the known hosts
}

// maxMachinesDepth bounds how deeply "@file" lines may include files.
const maxMachinesDepth = 32

// Parse reads the builders setting: machines separated by newlines or ';',
// "#" starting a comment, "@FILE" including a machines file (a missing one
// is no machine). A machine's systems default to thisSystem.
func Parse(builders, thisSystem string) ([]*Machine, error) {
	lines, err := expand(builders, 0)
	if err != nil {
		return nil, err
	}
	machines := make([]*Machine, 0, len(lines))
	for _, line := range lines {
		m, err := parseLine(line, thisSystem)
		if err != nil {
			return nil, err
		}
		machines = append(machines, m)
	}
	return machines, nil
}

// expand splits builders into machine lines, reading "@file" includes.
func expand(builders string, depth int) ([]string, error) {
	var out []string
	for _, line := range strings.FieldsFunc(builders, func(r rune) bool { return r == '\n' || r == ';' }) {
		line = strings.Trim(line, " \t\n\r")
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		if line == "" {
			continue
		}
		if line[0] != '@' {
			out = append(out, line)
			continue
		}
		path := strings.Trim(line[1:], " \t\n\r")
		text, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read machines file: %w", err)
		}
		if depth >= maxMachinesDepth {
			return nil, fmt.Errorf("read machines file %s: included more than %d deep", path, maxMachinesDepth)
		}
		more, err := expand(string(text), depth+1)
		if err != nil {
			return nil, err
		}
		out = append(out, more...)
	}
	return out, nil
}

// fields splits at Nix's whitespace (space, tab, CR, LF).
func fields(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == '\t' || r == '\n' || r == '\r' })
}

// list splits a comma-separated column, dropping empty items as Nix does.
func list(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' })
}

// set is list sorted and without duplicates, as Nix's std::set.
func set(s string) []string {
	l := list(s)
	slices.Sort(l)
	return slices.Compact(l)
}

func parseLine(line, thisSystem string) (*Machine, error) {
	tok := fields(line)
	isSet := func(i int) bool { return len(tok) > i && tok[i] != "" && tok[i] != "-" }
	uint32Field := func(i int) (uint64, error) {
		n, err := strconv.ParseUint(strings.TrimPrefix(tok[i], "+"), 10, 32)
		if err != nil {
			return 0, fmt.Errorf("bad machine specification: failed to convert column #%d in a row: '%s' to 'unsigned int'", i, line)
		}
		return n, nil
	}
	if !isSet(0) {
		return nil, fmt.Errorf("bad machine specification: store URL was not found at the first column of a row: '%s'", line)
	}
	m := &Machine{StoreURI: storeURI(tok[0]), Systems: []string{thisSystem}, MaxJobs: 1, SpeedFactor: 1}
	if isSet(1) {
		m.Systems = list(tok[1])
	}
	if isSet(2) {
		m.SSHKey = tok[2]
	}
	var err error
	if isSet(3) {
		if m.MaxJobs, err = uint32Field(3); err != nil {
			return nil, err
		}
	}
	if isSet(4) {
		if m.SpeedFactor, err = uint32Field(4); err != nil {
			return nil, err
		}
		m.SpeedFactor = max(m.SpeedFactor, 1)
	}
	if isSet(5) {
		m.SupportedFeatures = set(tok[5])
	}
	if isSet(6) {
		m.MandatoryFeatures = set(tok[6])
	}
	if isSet(7) {
		if _, err := decodeBase64(tok[7]); err != nil {
			return nil, fmt.Errorf("bad machine specification: a column #%d in a row: '%s' is not valid base64 string: %v", 7, line, err)
		}
		m.SSHPublicHostKey = tok[7]
	}
	return m, nil
}

// storeURI gives a bare host name the ssh:// scheme, as Nix does for every
// URI that is not a path, has no scheme and names no special store.
func storeURI(s string) string {
	if strings.Contains(s, "://") || strings.Contains(s, "/") {
		return s
	}
	switch s {
	case "auto", "daemon", "local":
		return s
	}
	for _, p := range []string{"auto?", "daemon?", "local?", "?"} {
		if strings.HasPrefix(s, p) {
			return s
		}
	}
	return "ssh://" + s
}

// AllSupported reports whether the machine has every feature in features.
func (m *Machine) AllSupported(features []string) bool {
	for _, f := range features {
		if !slices.Contains(m.SupportedFeatures, f) && !slices.Contains(m.MandatoryFeatures, f) {
			return false
		}
	}
	return true
}

// MandatoryMet reports whether features name every mandatory feature.
func (m *Machine) MandatoryMet(features []string) bool {
	for _, f := range m.MandatoryFeatures {
		if !slices.Contains(features, f) {
			return false
		}
	}
	return true
}

// canBuild reports whether the machine is of the type a derivation for
// system with the required features needs.
func (m *Machine) canBuild(system string, features []string) bool {
	return (system == "builtin" || slices.Contains(m.Systems, system)) && m.AllSupported(features) && m.MandatoryMet(features)
}

// decodeBase64 decodes as Nix's base64Decode: up to the first '=', newlines
// skipped, missing padding allowed, any other character outside the
// alphabet an error.
func decodeBase64(s string) ([]byte, error) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	out := make([]byte, 0, (len(s)+2)/4*3)
	var d, bits uint
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '=' {
			break
		}
		if c == '\n' {
			continue
		}
		digit := strings.IndexByte(alphabet, c)
		if digit < 0 {
			return nil, fmt.Errorf("invalid character in Base64 string: '%c'", c)
		}
		bits += 6
		d = d<<6 | uint(digit)
		if bits >= 8 {
			out = append(out, byte(d>>(bits-8)))
			bits -= 8
		}
	}
	return out, nil
}
