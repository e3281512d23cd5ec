package daemon

import (
	"context"
	"fmt"
	"io"
	"net"
)

// Splice relays a connection on in and out (--stdio, as ssh-ng:// runs it) to
// the daemon listening at socket, as nix-daemon --stdio does when its store is
// a daemon: bytes pass both ways unchanged until the client closes its side
// and the daemon has answered everything, or ctx is done.
func Splice(ctx context.Context, socket string, in io.Reader, out io.Writer) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return fmt.Errorf("cannot connect to the daemon at '%s': %w", socket, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	up := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, in)
		c.(*net.UnixConn).CloseWrite()
		up <- err
	}()
	if _, err := io.Copy(out, c); err != nil && ctx.Err() == nil {
		return fmt.Errorf("relay from the daemon: %w", err)
	}
	select {
	case err := <-up:
		if err != nil {
			return fmt.Errorf("relay to the daemon: %w", err)
		}
	default:
		// The daemon hung up first; the client's side ends with us.
	}
	return nil
}
