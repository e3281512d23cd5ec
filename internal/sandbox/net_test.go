//go:build linux

package sandbox_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"cairn/internal/sandbox"
)

// The test binary stays static (the probe runs in a root without libc), so
// these tests use raw sockets rather than package net.

// netReport is what the network probe sees.
type netReport struct {
	Interfaces []string
	Address    string            // of sandbox.NetInterface
	ResolvConf string            // /etc/resolv.conf
	Connects   map[string]string // label → "ok" or errno name
	Abstract   string            // connecting to the host's abstract socket
	DNS        string            // a query to sandbox.NetDNS: "answer" or an error
}

// netProbe runs inside: NET_TARGETS is "label=ip:port …", NET_ABSTRACT the
// name of an abstract socket on the host, NET_DNS=1 asks for a DNS query.
func netProbe() int {
	r := netReport{Connects: map[string]string{}}
	if data, err := os.ReadFile("/proc/net/dev"); err == nil {
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		for _, l := range lines[2:] {
			name, _, _ := strings.Cut(l, ":")
			r.Interfaces = append(r.Interfaces, strings.TrimSpace(name))
		}
		slices.Sort(r.Interfaces)
	}
	if fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err == nil {
		if ifr, err := unix.NewIfreq(sandbox.NetInterface); err == nil && unix.IoctlIfreq(fd, unix.SIOCGIFADDR, ifr) == nil {
			if a, err := ifr.Inet4Addr(); err == nil {
				r.Address = fmt.Sprintf("%d.%d.%d.%d", a[0], a[1], a[2], a[3])
			}
		}
		unix.Close(fd)
	}
	data, err := os.ReadFile("/etc/resolv.conf")
	r.ResolvConf = string(data)
	if err != nil {
		r.ResolvConf = errName(err)
	}
	for _, t := range strings.Fields(os.Getenv("NET_TARGETS")) {
		label, addr, _ := strings.Cut(t, "=")
		fd, err := dialTCP(addr, 1500*time.Millisecond)
		if err == nil {
			unix.Write(fd, []byte(label+"\n"))
			unix.Close(fd)
		}
		r.Connects[label] = errName(err)
	}
	if name := os.Getenv("NET_ABSTRACT"); name != "" {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			err = unix.Connect(fd, &unix.SockaddrUnix{Name: "@" + name})
			if err == nil {
				// Through here a build could pass an fd of its output out.
				unix.Write(fd, []byte("escaped\n"))
			}
			unix.Close(fd)
		}
		r.Abstract = errName(err)
	}
	if os.Getenv("NET_DNS") == "1" {
		r.DNS = dnsQuery(sandbox.NetDNS)
	}
	json.NewEncoder(os.Stdout).Encode(r)
	return 0
}

// dialTCP connects to "a.b.c.d:port" within timeout.
func dialTCP(addr string, timeout time.Duration) (int, error) {
	host, port, _ := strings.Cut(addr, ":")
	var sa unix.SockaddrInet4
	sa.Port, _ = strconv.Atoi(port)
	for i, p := range strings.Split(host, ".") {
		if i < 4 {
			n, _ := strconv.Atoi(p)
			sa.Addr[i] = byte(n)
		}
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Connect(fd, &sa); err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		return -1, err
	}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	n, err := unix.Poll(pfd, int(timeout/time.Millisecond))
	if err == nil && n == 0 {
		err = unix.ETIMEDOUT
	}
	if err == nil {
		var soErr int
		if soErr, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err == nil && soErr != 0 {
			err = unix.Errno(soErr)
		}
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// dnsQuery asks server (an IPv4 address, port 53) for example.com's A
// record: "answer" when any reply comes back.
func dnsQuery(server string) string {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return errName(err)
	}
	defer unix.Close(fd)
	var sa unix.SockaddrInet4
	sa.Port = 53
	for i, p := range strings.Split(server, ".") {
		if i < 4 {
			n, _ := strconv.Atoi(p)
			sa.Addr[i] = byte(n)
		}
	}
	q := []byte{0x4a, 0x11, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0}
	q = append(q, "\x07example\x03com\x00"...)
	q = append(q, 0, 1, 0, 1)
	tv := unix.Timeval{Sec: 3}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	for range 2 {
		if err := unix.Sendto(fd, q, 0, &sa); err != nil {
			return errName(err)
		}
		buf := make([]byte, 1500)
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err == nil && n >= 12 && binary.BigEndian.Uint16(buf) == 0x4a11 && buf[2]&0x80 != 0 {
			return "answer"
		}
		if err != nil && err != unix.EAGAIN {
			return errName(err)
		}
	}
	return "no answer"
}

// hostResolver is the first IPv4 name server of the host's resolv.conf.
func hostResolver() string {
	data, _ := os.ReadFile("/etc/resolv.conf")
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "nameserver" && strings.Count(f[1], ".") == 3 {
			return f[1]
		}
	}
	return ""
}

// listener accepts connections on a raw socket and records the first line
// each one sends.
type listener struct {
	fd    int
	mu    sync.Mutex
	lines []string
	done  chan struct{}
}

func listen(t *testing.T, sa unix.Sockaddr) *listener {
	t.Helper()
	family := unix.AF_INET
	if _, ok := sa.(*unix.SockaddrUnix); ok {
		family = unix.AF_UNIX
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		t.Fatal(err)
	}
	l := &listener{fd: fd, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			c, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
			if err == unix.EINTR || err == unix.ECONNABORTED {
				continue
			}
			if err != nil {
				return
			}
			tv := unix.Timeval{Sec: 2}
			unix.SetsockoptTimeval(c, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
			buf := make([]byte, 64)
			n, _ := unix.Read(c, buf)
			unix.Close(c)
			l.mu.Lock()
			l.lines = append(l.lines, strings.TrimSpace(string(buf[:max(n, 0)])))
			l.mu.Unlock()
		}
	}()
	t.Cleanup(l.close)
	return l
}

func (l *listener) port() int {
	sa, _ := unix.Getsockname(l.fd)
	if in, ok := sa.(*unix.SockaddrInet4); ok {
		return in.Port
	}
	return 0
}

func (l *listener) close() {
	unix.Shutdown(l.fd, unix.SHUT_RDWR)
	<-l.done
	unix.Close(l.fd)
}

// got returns the lines received so far, sorted.
func (l *listener) got() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := slices.Clone(l.lines)
	slices.Sort(out)
	return out
}

// stacks are the network stacks installed here.
func stacks(t testing.TB) []*sandbox.Net {
	var out []*sandbox.Net
	for _, tool := range []string{sandbox.NetPasta, sandbox.NetSlirp4netns} {
		if n, err := sandbox.LookNet(tool, true); err == nil {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		if os.Getenv("CAIRN_REQUIRE_NIX") == "1" {
			t.Fatal("neither pasta nor slirp4netns is installed (CI installs passt and slirp4netns)")
		}
		t.Skip("neither pasta nor slirp4netns is installed")
	}
	return out
}

// TestNet runs the network probe behind each installed stack, with the
// host's loopback reachable and isolated: interfaces, address, resolv.conf,
// which host listeners it reaches, DNS, and that the host's abstract Unix
// sockets are out of reach.
func TestNet(t *testing.T) {
	abstract := fmt.Sprintf("cairn-sandbox-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	escape := listen(t, &unix.SockaddrUnix{Name: "@" + abstract})
	// The abstract socket works from the host's network namespace.
	if fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err == nil {
		if err := unix.Connect(fd, &unix.SockaddrUnix{Name: "@" + abstract}); err != nil {
			t.Fatalf("connect to our own abstract socket: %v", err)
		}
		unix.Write(fd, []byte("control\n"))
		unix.Close(fd)
	}
	hostDNS := ""
	if r := hostResolver(); r != "" {
		hostDNS = dnsQuery(r)
	}
	resolv := sandbox.ResolvConf([]byte("nameserver 192.0.2.53\nsearch example.org\noptions edns0\n"))
	if want := "nameserver " + sandbox.NetDNS + "\nsearch example.org\noptions edns0\n"; string(resolv) != want {
		t.Errorf("ResolvConf = %q, want %q", resolv, want)
	}

	for _, n := range stacks(t) {
		for _, m := range modes() {
			for _, loopback := range []bool{true, false} {
				name := fmt.Sprintf("%s/%s/loopback=%v", n.Tool, m.name, loopback)
				t.Run(name, func(t *testing.T) {
					host := listen(t, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})
					f := newFixture(t, m)
					net := *n
					net.HostLoopback = loopback
					f.spec.Net = &net
					f.spec.Files = append(f.spec.Files, sandbox.File{Path: "/etc/resolv.conf", Content: resolv})
					port := strconv.Itoa(host.port())
					f.spec.Command.Env = []string{"CAIRN_SANDBOX_TEST=net", "NET_ABSTRACT=" + abstract, "NET_DNS=1",
						"NET_TARGETS=gateway=" + sandbox.NetGateway + ":" + port + " localhost=127.0.0.1:" + port}
					if n.Tool == sandbox.NetPasta && !m.userNS {
						_, err := sandbox.Start(context.Background(), f.spec)
						if err == nil || !strings.Contains(err.Error(), "pasta needs a user namespace") {
							t.Fatalf("pasta without a user namespace: %v", err)
						}
						return
					}
					p := f.start(t, context.Background())
					if st, err := p.Wait(); err != nil || !st.Success() {
						t.Fatalf("Wait: %v %v\n%s", st, err, f.log)
					}
					var r netReport
					if err := json.Unmarshal(f.log.Bytes(), &r); err != nil {
						t.Fatalf("net probe: %v\n%s", err, f.log)
					}
					want := func(what string, got, want any) {
						t.Helper()
						if !reflect.DeepEqual(got, want) {
							t.Errorf("%s = %v, want %v", what, got, want)
						}
					}
					want("interfaces", r.Interfaces, []string{sandbox.NetInterface, "lo"})
					want("address", r.Address, sandbox.NetAddress)
					want("resolv.conf", r.ResolvConf, string(resolv))
					want("abstract socket", r.Abstract, "ECONNREFUSED")
					if hostDNS == "answer" {
						want("DNS", r.DNS, "answer")
					} else {
						t.Logf("the host's resolver does not answer (%q); DNS not checked", hostDNS)
					}
					var wantReach []string
					switch {
					case loopback && n.Tool == sandbox.NetPasta:
						wantReach = []string{"gateway", "localhost"}
					case loopback:
						wantReach = []string{"gateway"}
					}
					var gotReach []string
					for label, res := range r.Connects {
						if res == "ok" {
							gotReach = append(gotReach, label)
						}
					}
					slices.Sort(gotReach)
					want("connected", gotReach, wantReach)
					// And what the host's listener received.
					for deadline := time.Now().Add(2 * time.Second); len(host.got()) < len(wantReach) && time.Now().Before(deadline); {
						time.Sleep(10 * time.Millisecond)
					}
					want("received on the host", host.got(), wantReach)
					t.Logf("connects: %v", r.Connects)
				})
			}
		}
	}
	// Only the control connection reached the abstract socket.
	time.Sleep(100 * time.Millisecond)
	if got := escape.got(); !slices.Equal(got, []string{"control"}) {
		t.Errorf("abstract socket received %q, want only the control connection", got)
	}
}

// TestPoolNet runs the network probe through a pool: spares of a shape
// with a network get their stack attached while they wait, and a spec
// without one never gets such a spare.
func TestPoolNet(t *testing.T) {
	var m mode
	for _, m = range modes() {
		if m.userNS {
			break
		}
	}
	for _, n := range stacks(t) {
		t.Run(n.Tool, func(t *testing.T) {
			pool := &sandbox.Pool{Spares: 1}
			defer pool.Close()
			host := listen(t, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})
			port := strconv.Itoa(host.port())
			for i, withNet := range []bool{true, true, false, true, false} {
				f := newFixture(t, m)
				if withNet {
					f.spec.Net = n
				}
				f.spec.Command.Env = []string{"CAIRN_SANDBOX_TEST=net", "NET_TARGETS=gateway=" + sandbox.NetGateway + ":" + port}
				log := runPooled(t, pool, f, i)
				var r netReport
				if err := json.Unmarshal(log, &r); err != nil {
					t.Fatalf("run %d: net probe: %v\n%s", i, err, log)
				}
				wantIfs, wantConnect := []string{"lo"}, "ENETUNREACH"
				if withNet {
					wantIfs, wantConnect = []string{sandbox.NetInterface, "lo"}, "ok"
				}
				if !reflect.DeepEqual(r.Interfaces, wantIfs) || r.Connects["gateway"] != wantConnect {
					t.Errorf("run %d (network %v): interfaces %v, gateway %s", i, withNet, r.Interfaces, r.Connects["gateway"])
				}
				waitSpare(t)
			}
		})
	}
}
