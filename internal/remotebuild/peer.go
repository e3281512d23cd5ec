package remotebuild

import (
	"context"
	"io"
	"os"
	"os/exec"
	"strings"

	"cairn/internal/derivation"
	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/store/remote"
	"cairn/internal/storepath"
)

// Peer is a machine's store as a remote build uses it: through the serve
// protocol (ssh://, Conn) or the worker protocol (ssh-ng://, DaemonConn).
type Peer interface {
	// URI is the store as Nix names it in "copying path '…' from '…'":
	// the scheme and host, no parameters.
	URI() string
	// Build builds drv, a basic derivation whose inputs are valid there.
	Build(ctx context.Context, drvPath storepath.StorePath, drv *derivation.Derivation, opts protocol.ServeBuildOptions) (*protocol.BuildResult, error)
	Close() error

	queryValid(ctx context.Context, paths []storepath.StorePath, substitute bool) ([]storepath.StorePath, error)
	queryInfos(ctx context.Context, paths []storepath.StorePath) ([]*store.PathInfo, error)
	addNar(ctx context.Context, info *store.PathInfo, nar io.Reader) error
	// nar returns p's NAR (narSize bytes), and what ends the reading.
	nar(ctx context.Context, p storepath.StorePath, narSize uint64) (io.Reader, func() error, error)
}

// Open connects to m's store, as Dial (ssh://) or DialDaemon (ssh-ng://).
func Open(ctx context.Context, m *Machine, dir storepath.StoreDir, log io.Writer) (Peer, error) {
	if strings.HasPrefix(m.StoreURI, "ssh-ng://") {
		return DialDaemon(ctx, m, dir, log)
	}
	return Dial(ctx, m, log)
}

func (c *Conn) URI() string { return "ssh://" + c.Host }

func (c *Conn) Build(ctx context.Context, drvPath storepath.StorePath, drv *derivation.Derivation, opts protocol.ServeBuildOptions) (*protocol.BuildResult, error) {
	return c.BuildDerivation(drvPath, drv, opts)
}

func (c *Conn) queryValid(ctx context.Context, paths []storepath.StorePath, substitute bool) ([]storepath.StorePath, error) {
	return c.QueryValidPaths(paths, false, substitute)
}

func (c *Conn) queryInfos(ctx context.Context, paths []storepath.StorePath) ([]*store.PathInfo, error) {
	return c.QueryPathInfos(paths)
}

func (c *Conn) addNar(ctx context.Context, info *store.PathInfo, nar io.Reader) error {
	return c.AddToStoreNar(info, nar)
}

func (c *Conn) nar(ctx context.Context, p storepath.StorePath, narSize uint64) (io.Reader, func() error, error) {
	r, err := c.DumpStorePath(p, narSize)
	return r, func() error { return nil }, err
}

// DaemonConn is a worker protocol connection to a machine's store:
// nix-daemon --stdio (or its remote-program) through ssh, or run directly
// for "localhost", as Nix's ssh-ng store runs it. Its builders' log lines
// arrive as the protocol's log results.
type DaemonConn struct {
	Host   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	st     *remote.Store
	stderr *stderrSwitch
	tmp    string
}

// pipes are a command's stdin and stdout as one connection.
type pipes struct {
	io.Reader
	io.WriteCloser
}

// DialDaemon starts the worker protocol on m (an ssh-ng:// machine) and
// shakes hands, as Dial. The builders' log lines go to log, and so does what
// the remote side writes to stderr once connected.
func DialDaemon(ctx context.Context, m *Machine, dir storepath.StoreDir, log io.Writer) (*DaemonConn, error) {
	return DialDaemonWith(ctx, m, dir, log, remote.Options{
		Log: func(msg *protocol.Message) {
			if msg.Code == protocol.StderrResult && msg.Result == protocol.ResBuildLogLine && len(msg.Fields) > 0 && msg.Fields[0].IsString {
				io.WriteString(log, msg.Fields[0].String+"\n")
			}
		},
	})
}

// DialDaemonWith is DialDaemon with the store's options: its Log gets the
// daemon's messages; stderr what the remote side writes to its stderr once
// connected. SetOptions is never sent, as by Nix 2.8's ssh-ng store.
func DialDaemonWith(ctx context.Context, m *Machine, dir storepath.StoreDir, stderr io.Writer, opts remote.Options) (*DaemonConn, error) {
	cmd, stdin, stdout, held, host, tmp, err := start(ctx, m)
	if err != nil {
		return nil, err
	}
	c := &DaemonConn{Host: host, cmd: cmd, stdin: stdin, stderr: held, tmp: tmp}
	opts.NoSetOptions = true
	c.st = remote.NewConn(dir, pipes{stdout, stdin}, opts)
	if err := c.st.Ping(ctx); err != nil {
		c.Close()
		return nil, connectError("nix-daemon --stdio", host, err, c.stderr.held())
	}
	c.stderr.connect(stderr)
	return c, nil
}

func (c *DaemonConn) URI() string { return "ssh-ng://" + c.Host }

// Store is the machine's store, through the connection.
func (c *DaemonConn) Store() *remote.Store { return c.st }

func (c *DaemonConn) Build(ctx context.Context, drvPath storepath.StorePath, drv *derivation.Derivation, opts protocol.ServeBuildOptions) (*protocol.BuildResult, error) {
	return c.st.BuildDerivation(ctx, drvPath, drv, protocol.BuildNormal)
}

// Close ends the connection and waits for the command.
func (c *DaemonConn) Close() error {
	c.st.Close()
	c.stdin.Close()
	err := c.cmd.Wait()
	os.RemoveAll(c.tmp)
	return err
}

func (c *DaemonConn) queryValid(ctx context.Context, paths []storepath.StorePath, substitute bool) ([]storepath.StorePath, error) {
	return c.st.QueryValidPathsSubstituting(ctx, paths, substitute)
}

func (c *DaemonConn) queryInfos(ctx context.Context, paths []storepath.StorePath) ([]*store.PathInfo, error) {
	return c.st.QueryPathInfos(ctx, paths)
}

func (c *DaemonConn) addNar(ctx context.Context, info *store.PathInfo, nar io.Reader) error {
	return c.st.AddNar(ctx, info, nar, store.AddNarOptions{})
}

func (c *DaemonConn) nar(ctx context.Context, p storepath.StorePath, narSize uint64) (io.Reader, func() error, error) {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := c.st.NarFromPath(ctx, p, pw)
		pw.CloseWithError(err)
		done <- err
	}()
	return pr, func() error {
		pr.CloseWithError(io.ErrClosedPipe)
		return <-done
	}, nil
}
