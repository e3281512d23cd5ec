package remotebuild

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"cairn/internal/derivation"
	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/storepath"
	"cairn/internal/wire"
)

// Conn is a serve protocol connection to a machine's store: nix-store
// --serve --write (or its remote-program) run through ssh, or directly with
// bash for the host "localhost", as Nix's legacy ssh store runs it.
type Conn struct {
	Host    string // [user@]host, as Nix names the store in messages
	Version protocol.Version

	cmd    *exec.Cmd
	stdin  io.WriteCloser
	r      *wire.Reader
	w      *wire.Writer
	stderr *stderrSwitch
	tmp    string // holds the host key file
}

// stderrSwitch keeps what the remote side writes to stderr until the
// handshake is done (it explains a failed connection), then passes it on.
type stderrSwitch struct {
	mu  sync.Mutex
	buf bytes.Buffer
	dst io.Writer
}

func (s *stderrSwitch) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dst != nil {
		s.dst.Write(p)
	} else if s.buf.Len() < 64<<10 {
		s.buf.Write(p)
	}
	return len(p), nil
}

// connect sends what was held to dst and everything after it.
func (s *stderrSwitch) connect(dst io.Writer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	dst.Write(s.buf.Bytes())
	s.buf.Reset()
	s.dst = dst
}

func (s *stderrSwitch) held() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.TrimRight(s.buf.String(), " \t\n\r")
}

// decodeQuery reads a store URI's parameters as Nix's decodeQuery: pairs
// split at '&' and the first '=', values percent-decoded ('+' stays '+'),
// the first of two equal names kept, a pair without '=' ignored.
func decodeQuery(q string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range strings.Split(q, "&") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		var b strings.Builder
		for i := 0; i < len(v); {
			if v[i] != '%' {
				b.WriteByte(v[i])
				i++
				continue
			}
			if i+2 >= len(v) {
				return nil, fmt.Errorf("invalid URI parameter '%s'", v)
			}
			n, err := strconv.ParseUint(v[i+1:i+3], 16, 8)
			if err != nil {
				return nil, fmt.Errorf("invalid URI parameter '%s'", v)
			}
			b.WriteByte(byte(n))
			i += 3
		}
		if _, seen := out[k]; !seen {
			out[k] = b.String()
		}
	}
	return out, nil
}

// shellEscape quotes s for sh, as Nix's shellEscape.
func shellEscape(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// command is the argv that runs the serve protocol (ssh://) or the worker
// protocol (ssh-ng://) on m, and the host.
func command(m *Machine, tmp string) (argv []string, host string, err error) {
	program, args := "nix-store", " --serve --write"
	rest, ok := strings.CutPrefix(m.StoreURI, "ssh://")
	if !ok {
		if rest, ok = strings.CutPrefix(m.StoreURI, "ssh-ng://"); !ok {
			return nil, "", fmt.Errorf("store '%s': remote builders must be ssh:// or ssh-ng:// stores", m.StoreURI)
		}
		program, args = "nix-daemon", " --stdio"
	}
	host, query, _ := strings.Cut(rest, "?")
	params, err := decodeQuery(query)
	if err != nil {
		return nil, "", fmt.Errorf("store '%s': %w", m.StoreURI, err)
	}
	if host == "" || strings.HasPrefix(host, "-") {
		return nil, "", fmt.Errorf("invalid SSH host name '%s'", host)
	}
	if p := params["remote-program"]; p != "" {
		program = p
	}
	cmdline := program + args
	if rs := params["remote-store"]; rs != "" {
		cmdline += " --store " + shellEscape(rs)
	}
	if host == "localhost" {
		return []string{"bash", "-c", cmdline}, host, nil
	}
	argv = []string{"ssh", host, "-x", "-a"}
	argv = append(argv, fields(os.Getenv("NIX_SSHOPTS"))...)
	key := params["ssh-key"]
	if m.SSHKey != "" {
		key = m.SSHKey
	}
	if key != "" {
		argv = append(argv, "-i", key)
	}
	hostKey := params["base64-ssh-public-host-key"]
	if m.SSHPublicHostKey != "" {
		hostKey = m.SSHPublicHostKey
	}
	if hostKey != "" {
		decoded, err := decodeBase64(hostKey)
		if err != nil {
			return nil, "", fmt.Errorf("store '%s': host key: %w", m.StoreURI, err)
		}
		name := host
		if i := strings.LastIndexByte(host, '@'); i >= 0 {
			name = host[i+1:]
		}
		file := filepath.Join(tmp, "host-key")
		if err := os.WriteFile(file, []byte(name+" "+string(decoded)+"\n"), 0o600); err != nil {
			return nil, "", err
		}
		argv = append(argv, "-oUserKnownHostsFile="+file)
	}
	switch params["compress"] {
	case "true", "yes", "1":
		argv = append(argv, "-C")
	case "", "false", "no", "0":
	default:
		return nil, "", fmt.Errorf("store '%s': Boolean setting 'compress' has invalid value '%s'", m.StoreURI, params["compress"])
	}
	return append(argv, cmdline), host, nil
}

// stopGrace is how long a cancelled remote side has to stop its builds.
const stopGrace = 5 * time.Second

// start runs the command that speaks to m's store, its stderr held by the
// returned switch until the connection is made.
func start(ctx context.Context, m *Machine) (cmd *exec.Cmd, stdin io.WriteCloser, stdout io.Reader, stderr *stderrSwitch, host, tmp string, err error) {
	tmp, err = os.MkdirTemp("", "cairn-ssh-")
	if err != nil {
		return nil, nil, nil, nil, "", "", err
	}
	argv, host, err := command(m, tmp)
	if err == nil {
		cmd = exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Env = withoutPrompts(os.Environ())
		// Cancelling ends the whole group: a child of bash or ssh that
		// holds the pipes open would otherwise keep a read waiting.
		// SIGTERM first, so that nix-store --serve stops its builders
		// (killed, they would outlive it); SIGKILL if the group is still
		// there after stopGrace.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Cancel = func() error {
			pgid := cmd.Process.Pid
			time.AfterFunc(stopGrace, func() { syscall.Kill(-pgid, syscall.SIGKILL) })
			return syscall.Kill(-pgid, syscall.SIGTERM)
		}
		cmd.WaitDelay = stopGrace + time.Second
		stderr = &stderrSwitch{}
		cmd.Stderr = stderr
		if stdin, err = cmd.StdinPipe(); err == nil {
			if stdout, err = cmd.StdoutPipe(); err == nil {
				if err = cmd.Start(); err != nil {
					err = fmt.Errorf("cannot connect to '%s': %w", host, err)
				}
			}
		}
	}
	if err != nil {
		os.RemoveAll(tmp)
		return nil, nil, nil, nil, "", "", err
	}
	return cmd, stdin, stdout, stderr, host, tmp, nil
}

// connectError is Nix's message for a connection that failed (EOF, or not
// the protocol), followed by what the remote side said.
func connectError(program, host string, err error, said string) error {
	var e error = fmt.Errorf("cannot connect to '%s'", host)
	// Only an answer that is not the protocol is a mismatch; an EOF or a
	// write into a closed pipe is the remote side gone.
	if errors.Is(err, protocol.ErrProtocol) {
		e = fmt.Errorf("'%s' protocol mismatch from '%s': %v", program, host, err)
	}
	if said != "" {
		e = fmt.Errorf("%w: %s", e, said)
	}
	return e
}

// Dial starts the serve protocol on m (an ssh:// machine) and shakes
// hands. After the handshake, what the remote side writes to stderr (its
// builders' logs) goes to log. The error of a failed connection reads as
// Nix's ("cannot connect to 'HOST'"), followed by what the remote side said.
func Dial(ctx context.Context, m *Machine, log io.Writer) (*Conn, error) {
	cmd, stdin, stdout, stderr, host, tmp, err := start(ctx, m)
	if err != nil {
		return nil, err
	}
	c := &Conn{Host: host, tmp: tmp, stderr: stderr, cmd: cmd, stdin: stdin}
	c.r = wire.NewReader(stdout)
	c.w = wire.NewWriter(stdin)
	v, err := protocol.ServeClientHandshake(c.r, c.w, protocol.ServeVersion)
	if err != nil {
		c.Close()
		return nil, connectError("nix-store --serve", host, err, c.stderr.held())
	}
	c.Version = min(v, protocol.ServeVersion)
	c.stderr.connect(log)
	return c, nil
}

// withoutPrompts drops what would make ssh ask for a passphrase or a host
// key in a window, as Nix's hook does.
func withoutPrompts(env []string) []string {
	out := env[:0:0]
	for _, e := range env {
		if !strings.HasPrefix(e, "DISPLAY=") && !strings.HasPrefix(e, "SSH_ASKPASS=") {
			out = append(out, e)
		}
	}
	return out
}

// Close ends the connection (the remote side sees EOF and exits) and waits
// for the command.
func (c *Conn) Close() error {
	c.stdin.Close()
	err := c.cmd.Wait()
	os.RemoveAll(c.tmp)
	return err
}

// fail wraps a broken connection's error.
func (c *Conn) fail(op string, err error) error {
	return fmt.Errorf("%s on '%s': %w", op, c.Host, err)
}

// QueryValidPaths returns those of paths valid on the machine (substituted
// there first with substitute).
func (c *Conn) QueryValidPaths(paths []storepath.StorePath, lock, substitute bool) ([]storepath.StorePath, error) {
	c.w.Uint64(uint64(protocol.ServeQueryValidPaths))
	(&protocol.ServeQueryValidPathsArgs{Lock: lock, Substitute: substitute, Paths: paths}).Write(c.w)
	if err := c.w.Flush(); err != nil {
		return nil, c.fail("query valid paths", err)
	}
	valid := c.r.StorePaths()
	if err := c.r.Err(); err != nil {
		return nil, c.fail("query valid paths", err)
	}
	return valid, nil
}

// QueryPathInfos returns the infos of those of paths valid on the machine.
func (c *Conn) QueryPathInfos(paths []storepath.StorePath) ([]*store.PathInfo, error) {
	c.w.Uint64(uint64(protocol.ServeQueryPathInfos))
	c.w.StorePaths(paths)
	if err := c.w.Flush(); err != nil {
		return nil, c.fail("query path infos", err)
	}
	infos := protocol.ReadServePathInfos(c.r, c.Version)
	if err := c.r.Err(); err != nil {
		return nil, c.fail("query path infos", err)
	}
	out := make([]*store.PathInfo, len(infos))
	for i, info := range infos {
		out[i] = (*store.PathInfo)(info)
	}
	return out, nil
}

// AddToStoreNar adds a path from its NAR, exactly info.NarSize bytes of nar.
func (c *Conn) AddToStoreNar(info *store.PathInfo, nar io.Reader) error {
	if !c.Version.AtLeast(5) {
		return c.importPath(info, nar)
	}
	c.w.Uint64(uint64(protocol.ServeAddToStoreNar))
	(&protocol.ServeAddToStoreNarArgs{Info: protocol.PathInfo(*info)}).Write(c.w)
	if n, err := io.CopyN(c.w, nar, int64(info.NarSize)); err != nil {
		return fmt.Errorf("copy %s to '%s': read %d of %d NAR bytes: %w", info.Path, c.Host, n, info.NarSize, err)
	}
	return c.added(info)
}

// importPath is AddToStoreNar for a machine older than serve 2.5: an export
// stream of one path.
func (c *Conn) importPath(info *store.PathInfo, nar io.Reader) error {
	c.w.Uint64(uint64(protocol.ServeImportPaths))
	c.w.Uint64(1)
	if n, err := io.CopyN(c.w, nar, int64(info.NarSize)); err != nil {
		return fmt.Errorf("copy %s to '%s': read %d of %d NAR bytes: %w", info.Path, c.Host, n, info.NarSize, err)
	}
	c.w.Uint64(protocol.ExportMagic)
	c.w.StorePath(info.Path)
	c.w.StorePaths(info.References)
	c.w.OptStorePath(info.Deriver)
	c.w.Uint64(0)
	c.w.Uint64(0)
	return c.added(info)
}

func (c *Conn) added(info *store.PathInfo) error {
	if err := c.w.Flush(); err != nil {
		return c.fail("copy "+info.Path.String(), err)
	}
	if ok := c.r.Uint64(); c.r.Err() != nil {
		return c.fail("copy "+info.Path.String(), c.r.Err())
	} else if ok != 1 {
		return fmt.Errorf("failed to add path '%s' to remote host '%s'", info.Path, c.Host)
	}
	return nil
}

// BuildDerivation builds drv (a basic derivation: its inputs are sources
// valid on the machine) and returns the machine's result.
func (c *Conn) BuildDerivation(drvPath storepath.StorePath, drv *derivation.Derivation, opts protocol.ServeBuildOptions) (*protocol.BuildResult, error) {
	c.w.Uint64(uint64(protocol.ServeBuildDerivation))
	(&protocol.ServeBuildDerivationArgs{DrvPath: drvPath, Drv: drv, Options: opts}).Write(c.w, c.Version)
	if err := c.w.Flush(); err != nil {
		return nil, c.fail("build "+drvPath.String(), err)
	}
	res := protocol.ReadServeBuildResult(c.r, c.Version)
	if err := c.r.Err(); err != nil {
		return nil, c.fail("build "+drvPath.String(), err)
	}
	return res, nil
}

// DumpStorePath asks for p's NAR, which is narSize bytes long; the caller
// reads all of it from the returned reader before the next call.
func (c *Conn) DumpStorePath(p storepath.StorePath, narSize uint64) (io.Reader, error) {
	c.w.Uint64(uint64(protocol.ServeDumpStorePath))
	c.w.StorePath(p)
	if err := c.w.Flush(); err != nil {
		return nil, c.fail("dump "+p.String(), err)
	}
	return io.LimitReader(c.r, int64(narSize)), nil
}
