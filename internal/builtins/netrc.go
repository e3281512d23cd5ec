package builtins

import (
	"fmt"
	"io"
	"os"
	"strings"
)

// MaxNetrcSize bounds the netrc file.
const MaxNetrcSize = 1 << 20

// netrcEntry is one "machine" (or the "default") entry of a netrc file.
type netrcEntry struct {
	machine         string // "" for default
	login, password string
}

// netrc is a parsed netrc file: tokens separated by white space,
//
//	machine NAME | default     starts an entry
//	login NAME, password SECRET, account X
//	macdef NAME                a macro, up to the next empty line (skipped)
type netrc []netrcEntry

// parseNetrc parses a netrc file's text.
func parseNetrc(text string) (netrc, error) {
	var n netrc
	var cur *netrcEntry
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		fields := strings.Fields(lines[i])
		for j := 0; j < len(fields); j++ {
			tok := fields[j]
			value := func() (string, error) {
				if j+1 >= len(fields) {
					return "", fmt.Errorf("parse netrc line %d: '%s' needs a value", i+1, tok)
				}
				j++
				return fields[j], nil
			}
			switch tok {
			case "machine":
				v, err := value()
				if err != nil {
					return nil, err
				}
				n = append(n, netrcEntry{machine: v})
				cur = &n[len(n)-1]
			case "default":
				n = append(n, netrcEntry{})
				cur = &n[len(n)-1]
			case "login", "password", "account":
				v, err := value()
				if err != nil {
					return nil, err
				}
				if cur == nil {
					return nil, fmt.Errorf("parse netrc line %d: '%s' outside an entry", i+1, tok)
				}
				switch tok {
				case "login":
					cur.login = v
				case "password":
					cur.password = v
				}
			case "macdef":
				// The macro runs to the next empty line.
				for i+1 < len(lines) && strings.TrimSpace(lines[i+1]) != "" {
					i++
				}
				j = len(fields)
			default:
				return nil, fmt.Errorf("parse netrc line %d: unknown token '%s'", i+1, tok)
			}
		}
	}
	return n, nil
}

// lookup returns the credentials for host: its machine entry, else the
// default entry.
func (n netrc) lookup(host string) (login, password string, ok bool) {
	for _, e := range n {
		if e.machine != "" && strings.EqualFold(e.machine, host) {
			return e.login, e.password, true
		}
	}
	for _, e := range n {
		if e.machine == "" {
			return e.login, e.password, true
		}
	}
	return "", "", false
}

// readNetrc reads and parses a netrc file; a missing file is an empty one.
func readNetrc(path string) (netrc, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read netrc-file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxNetrcSize+1))
	if err != nil {
		return nil, fmt.Errorf("read netrc-file: %w", err)
	}
	if len(b) > MaxNetrcSize {
		return nil, fmt.Errorf("read netrc-file %s: larger than %d bytes", path, MaxNetrcSize)
	}
	return parseNetrc(string(b))
}
