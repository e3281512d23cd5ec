package cli

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// stderrWriter is where verbs write messages: standard error, with Nix's colour
// escapes removed when it is not a terminal, as Nix removes them.
func stderrWriter() io.Writer {
	if isTerminal(os.Stderr) {
		return os.Stderr
	}
	return &ansiStripper{w: os.Stderr}
}

// ansiStripper drops CSI escape sequences (ESC '[' params final-byte) from what it
// passes on; a sequence may be split across writes.
type ansiStripper struct {
	w     io.Writer
	state uint8 // 0 text, 1 after ESC, 2 inside CSI
}

func (a *ansiStripper) Write(p []byte) (int, error) {
	out := make([]byte, 0, len(p))
	for _, c := range p {
		switch a.state {
		case 0:
			if c == 0x1b {
				a.state = 1
				continue
			}
			out = append(out, c)
		case 1:
			if c == '[' {
				a.state = 2
				continue
			}
			a.state = 0
			out = append(out, c)
		case 2:
			if c >= 0x40 && c <= 0x7e {
				a.state = 0
			}
		}
	}
	if _, err := a.w.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}
