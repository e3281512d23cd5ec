// Command queryfloor is the least a worker-protocol daemon can do to answer
// `nix-store -q`: it speaks the handshake as cairn daemon does, accepts
// SetOptions, and answers QueryPathInfo and IsValidPath from replies encoded
// once at start-up, keyed by the path's text. It does nothing else (no
// SQLite, no allocation per op, no stderr channel beyond STDERR_LAST), so the
// time a client takes against it is the floor any daemon can reach on this
// machine with that client (bench/query-floor.py).
//
//	queryfloor -store 'local?root=DIR' -socket PATH
//
// Every other operation closes the connection.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"syscall"
	"time"

	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/wire"
)

// maxPathLen bounds a path read from a client.
const maxPathLen = 4096

func main() {
	storeURL := flag.String("store", "", "the local store whose paths to serve")
	socket := flag.String("socket", "", "where to listen")
	flag.StringVar(&waitMode, "wait", "netpoll", "how a connection waits for the next op: netpoll, block (blocking read on a locked thread) or spin (poll the socket for -spin before the netpoller)")
	flag.DurationVar(&spinFor, "spin", 100*time.Microsecond, "with -wait spin, how long to poll")
	flag.Parse()
	if err := run(*storeURL, *socket); err != nil {
		fmt.Fprintln(os.Stderr, "queryfloor:", err)
		os.Exit(1)
	}
}

// replies holds, per path, the bytes that answer QueryPathInfo and IsValidPath.
type replies struct {
	info, valid map[string][]byte
	infoNone    []byte
	validNone   []byte
}

func load(ctx context.Context, storeURL string) ([]*store.PathInfo, error) {
	cfg, err := store.ParseURL(storeURL, os.Getenv)
	if err != nil {
		return nil, err
	}
	st, err := local.Open(ctx, cfg, local.DefaultOptions())
	if err != nil {
		return nil, err
	}
	defer st.Close()
	paths, err := st.QueryAllValidPaths(ctx)
	if err != nil {
		return nil, err
	}
	return st.QueryPathInfos(ctx, paths)
}

// encodeAll encodes the replies for protocol parameters p.
func encodeAll(infos []*store.PathInfo, p protocol.Params) *replies {
	encode := func(r protocol.Reply) []byte {
		var b bufferWriter
		w := wire.NewWriter(&b)
		w.Uint64(protocol.StderrLast)
		r.Write(w, p)
		w.Flush()
		return b.b
	}
	rs := &replies{info: map[string][]byte{}, valid: map[string][]byte{},
		infoNone:  encode(&protocol.QueryPathInfoReply{}),
		validNone: encode(&protocol.BoolReply{})}
	for _, info := range infos {
		rs.info[info.Path.String()] = encode(&protocol.QueryPathInfoReply{Valid: true, Info: (*protocol.PathInfo)(info)})
		rs.valid[info.Path.String()] = encode(&protocol.BoolReply{Value: true})
	}
	return rs
}

// byParams encodes the replies once for each protocol version clients
// negotiate (Nix 2.8's 1.34 in practice).
type byParams struct {
	infos []*store.PathInfo
	mu    sync.Mutex
	m     map[string]*replies // by fmt.Sprint(Params)
}

func (b *byParams) get(p protocol.Params) *replies {
	b.mu.Lock()
	defer b.mu.Unlock()
	key := fmt.Sprint(p)
	rs, ok := b.m[key]
	if !ok {
		rs = encodeAll(b.infos, p)
		b.m[key] = rs
	}
	return rs
}

type bufferWriter struct{ b []byte }

func (w *bufferWriter) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }

func run(storeURL, socket string) error {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	infos, err := load(ctx, storeURL)
	if err != nil {
		return err
	}
	rs := &byParams{infos: infos, m: map[string]*replies{}}
	os.Remove(socket)
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return err
	}
	context.AfterFunc(ctx, func() { ln.Close() })
	fmt.Fprintf(os.Stderr, "queryfloor: %d paths on %s\n", len(infos), socket)
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go func() {
			defer c.Close()
			rw, err := waiter(c.(*net.UnixConn))
			if err != nil {
				fmt.Fprintln(os.Stderr, "queryfloor:", err)
				return
			}
			if err := serve(rw, rs); err != nil && err != io.EOF {
				fmt.Fprintln(os.Stderr, "queryfloor:", err)
			}
		}()
	}
}

func serve(c io.ReadWriter, all *byParams) error {
	r, w := wire.NewReader(c), wire.NewWriter(c)
	ci, err := protocol.ServerHandshake(r, w, protocol.ServerInfo{
		Version: protocol.Latest, Features: protocol.LatestFeatures, NixVersion: "2.8.0", Trusted: protocol.Trusted})
	if err != nil {
		return err
	}
	rs := all.get(ci.Params)
	w.Uint64(protocol.StderrLast)
	if err := w.Flush(); err != nil {
		return err
	}
	buf := make([]byte, maxPathLen)
	for {
		op := protocol.Op(r.Uint64())
		if err := r.Err(); err != nil {
			return err
		}
		switch op {
		case protocol.OpSetOptions:
			req, _ := protocol.NewRequest(op, ci.Params)
			req.Read(r, ci.Params)
			w.Uint64(protocol.StderrLast)
		case protocol.OpQueryPathInfo, protocol.OpIsValidPath:
			n := r.Int("path length", maxPathLen)
			r.ReadFull(buf[:n+(8-n%8)%8])
			m, none := rs.info, rs.infoNone
			if op == protocol.OpIsValidPath {
				m, none = rs.valid, rs.validNone
			}
			b, ok := m[string(buf[:n])]
			if !ok {
				b = none
			}
			w.Write(b)
		default:
			return fmt.Errorf("operation %d not served", op)
		}
		if err := r.Err(); err != nil {
			return err
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
}

var (
	waitMode string
	spinFor  time.Duration
)

// waiter returns c read the way -wait says.
func waiter(c *net.UnixConn) (io.ReadWriter, error) {
	switch waitMode {
	case "netpoll":
		return c, nil
	case "block":
		rc, err := c.SyscallConn()
		if err != nil {
			return nil, err
		}
		var fd int
		rc.Control(func(x uintptr) { fd = int(x) })
		if err := syscall.SetNonblock(fd, false); err != nil {
			return nil, err
		}
		runtime.LockOSThread()
		return blockingFD(fd), nil
	case "spin":
		rc, err := c.SyscallConn()
		if err != nil {
			return nil, err
		}
		return &spinConn{UnixConn: c, rc: rc}, nil
	}
	return nil, fmt.Errorf("unknown -wait %q", waitMode)
}

// blockingFD reads and writes a descriptor in blocking mode with plain
// system calls: the thread sleeps in read(2) until the client writes.
type blockingFD int

func (fd blockingFD) Read(p []byte) (int, error) {
	for {
		n, err := syscall.Read(int(fd), p)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}

func (fd blockingFD) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		n, err := syscall.Write(int(fd), p[done:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

// spinConn polls the non-blocking socket for spinFor before it lets the
// netpoller wait.
type spinConn struct {
	*net.UnixConn
	rc syscall.RawConn
}

func (c *spinConn) Read(p []byte) (int, error) {
	var n int
	var rerr error
	start := time.Now()
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			n, rerr = syscall.Read(int(fd), p)
			if rerr != syscall.EAGAIN && rerr != syscall.EINTR {
				return true
			}
			if time.Since(start) > spinFor {
				return false
			}
		}
	})
	if err != nil {
		return 0, err
	}
	if rerr != nil {
		return 0, rerr
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}
