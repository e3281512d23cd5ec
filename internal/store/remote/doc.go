// Package remote is a store.Store across the Nix worker protocol: the Unix
// socket of nix-daemon or `cairn daemon` (store URLs "daemon" and
// "unix://PATH"), or any io.ReadWriteCloser that speaks it, such as the pipes
// of `nix-daemon --stdio` run over ssh (ssh-ng).
//
// Vocabulary:
//
//	connection  one handshake, then ops one at a time: op args [payload] stderr [reply]
//	            (see package protocol for the grammar)
//	pool        up to Options.MaxConns connections; an op takes one, runs, and
//	            gives it back. Concurrent callers get concurrent connections.
//	payload     what follows an op's arguments: a framed stream at ≥1.23
//	            (written on its own goroutine while the stderr channel is read,
//	            as the daemon may log or fail while it reads), pulled with
//	            STDERR_READ at 1.21–1.22, a raw NAR below.
//	stderr      log lines and activities go to Options.Log; STDERR_ERROR ends
//	            the op with an *Error carrying the daemon's message.
//	broken      a connection whose byte stream is out of step (I/O error,
//	            protocol violation, cancelled context, failed payload) is closed
//	            and never reused; an *Error leaves the connection usable.
//
// A cancelled ctx closes the connection the op is using, so the op returns at
// once with ctx's error. When a connection breaks while a payload is being
// sent, the op returns without waiting for a Read of the payload's source that
// is blocked; that Read's data is dropped and nothing more is read after it. An op whose reused idle connection turns out to be
// closed by the daemon before it answered is retried once on a new connection,
// when it carries no payload.
//
// Temporary GC roots (AddTempRoot) belong to the connection that made them:
// they last until that connection closes, which the pool does only on Close or
// when the connection breaks. Use Options.MaxConns = 1 when a caller needs them
// to cover what it adds next.
//
// Versions: the client offers protocol 1.38 without features, so it speaks
// min(1.38, daemon). Every op needs the version that introduced it; payload
// forms go back to 1.18 (AddToStoreNar) and 1.25 (AddToStore, with
// AddTextToStore for text below).
package remote
