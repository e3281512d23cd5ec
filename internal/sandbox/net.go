package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// The network a Net gives the sandbox: the same layout for both stacks
// (slirp4netns's defaults), so that what a build sees does not depend on
// which one the host has.
const (
	NetInterface = "eth0"
	NetAddress   = "10.0.2.100" // the sandbox's address, in NetAddress/24
	NetGateway   = "10.0.2.2"   // the default route; the host's loopback, unless isolated
	NetDNS       = "10.0.2.3"   // a DNS forwarder to the host's resolver
	NetMTU       = 65520
)

// The user-mode network stacks a Net can run.
const (
	NetPasta       = "pasta"       // from passt; preferred
	NetSlirp4netns = "slirp4netns" // the fallback
)

// Net is a user-mode network stack for the sandbox's own network
// namespace: pasta or slirp4netns, run by the parent (Start) once init
// exists and before the command runs, and stopped by Wait. The sandbox
// never shares the host's network namespace, so the host's abstract Unix
// sockets stay out of reach whatever the stack lets through.
//
// Inside, the namespace has NetInterface with NetAddress/24, a default
// route through NetGateway and a DNS forwarder at NetDNS (see ResolvConf).
// With HostLoopback, connections to NetGateway reach the host's loopback
// (both stacks), and pasta also binds the host's listening loopback ports
// on the sandbox's own loopback, so a service on the host's localhost is
// the sandbox's localhost too. Nothing on the host is bound for the
// sandbox: no port of the sandbox is reachable from outside.
type Net struct {
	Tool         string // NetPasta or NetSlirp4netns
	Path         string // the tool's executable
	HostLoopback bool
	// Dir is where a stack's scratch files go (pasta's ready FIFO, in a
	// fresh 0700 directory): the caller's private directory; "" means
	// os.TempDir().
	Dir string
}

// ErrNoNet is wrapped by LookNet's error when no stack is installed.
var ErrNoNet = errors.New("no user-mode network stack found")

// LookNet finds a network stack. stack is "auto" or "" (pasta, else
// slirp4netns, from PATH), a tool's name (from PATH), or an absolute path
// to one of them, named by its base name (pasta…, passt…, or
// slirp4netns…).
func LookNet(stack string, hostLoopback bool) (*Net, error) {
	n := &Net{HostLoopback: hostLoopback}
	switch {
	case stack == "" || stack == "auto":
		for _, tool := range []string{NetPasta, NetSlirp4netns} {
			if p, err := exec.LookPath(tool); err == nil {
				n.Tool, n.Path = tool, p
				return n, nil
			}
		}
		return nil, fmt.Errorf("sandbox: network: %w: neither pasta (Debian package passt) nor slirp4netns is in PATH", ErrNoNet)
	case stack == NetPasta || stack == NetSlirp4netns:
		p, err := exec.LookPath(stack)
		if err != nil {
			return nil, fmt.Errorf("sandbox: network: %w: %v", ErrNoNet, err)
		}
		n.Tool, n.Path = stack, p
		return n, nil
	case filepath.IsAbs(stack):
		base := filepath.Base(stack)
		switch {
		case strings.HasPrefix(base, "slirp4netns"):
			n.Tool = NetSlirp4netns
		case strings.HasPrefix(base, "pasta"), strings.HasPrefix(base, "passt"):
			n.Tool = NetPasta
		default:
			return nil, fmt.Errorf("sandbox: network: %s is neither pasta nor slirp4netns", stack)
		}
		if _, err := exec.LookPath(stack); err != nil {
			return nil, fmt.Errorf("sandbox: network: %w: %v", ErrNoNet, err)
		}
		n.Path = stack
		return n, nil
	}
	return nil, fmt.Errorf("sandbox: network: unknown stack %q (auto, pasta, slirp4netns or an absolute path)", stack)
}

// ResolvConf is an /etc/resolv.conf for a sandbox with a Net: NetDNS as
// the only name server, and the host's search, domain and options lines
// (host is the host's resolv.conf, possibly empty).
func ResolvConf(host []byte) []byte {
	out := []byte("nameserver " + NetDNS + "\n")
	for line := range bytes.Lines(host) {
		f := bytes.Fields(line)
		if len(f) > 0 && (string(f[0]) == "search" || string(f[0]) == "domain" || string(f[0]) == "options") {
			out = append(out, bytes.TrimSpace(line)...)
			out = append(out, '\n')
		}
	}
	return out
}
