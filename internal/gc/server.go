package gc

import (
	"bufio"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"

	"cairn/internal/gcroots"
	"cairn/internal/storepath"
)

// maxRootLine bounds one line read from the roots socket.
const maxRootLine = 8192

// rootServer is the collector's end of STATE/gc-socket/socket: it records
// the hash parts of the temporary roots sent while the collector runs, and
// holds back the answer for a path while it is being deleted.
type rootServer struct {
	dir storepath.StoreDir
	ln  *net.UnixListener
	log func(string)

	mu      sync.Mutex
	cond    *sync.Cond
	temp    map[string]bool // hash parts
	pending map[string]bool // hash parts being deleted
	closed  bool
	conns   map[net.Conn]bool
	wg      sync.WaitGroup
}

// startServer listens on the roots socket of stateDir (replacing a stale
// one) with mode 0666, as Nix does.
func startServer(stateDir string, dir storepath.StoreDir, log func(string)) (*rootServer, error) {
	path := filepath.Join(stateDir, gcroots.GCSocketName)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	os.Remove(path)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false) // another collector may have replaced it
	if err := os.Chmod(path, 0o666); err != nil {
		ln.Close()
		return nil, err
	}
	s := &rootServer{dir: dir, ln: ln, log: log, temp: map[string]bool{}, pending: map[string]bool{}, conns: map[net.Conn]bool{}}
	s.cond = sync.NewCond(&s.mu)
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

func (s *rootServer) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = true
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serve(c)
	}
}

func (s *rootServer) serve(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	r := bufio.NewReaderSize(c, 4096)
	for {
		line, err := readLine(r)
		if err != nil {
			return
		}
		if p, err := s.dir.Parse(line); err == nil {
			h := p.HashPart()
			s.mu.Lock()
			s.temp[h] = true
			for s.pending[h] && !s.closed {
				s.cond.Wait()
			}
			s.mu.Unlock()
		} else if s.log != nil {
			s.log("received garbage instead of a root from client")
		}
		if _, err := c.Write([]byte("1")); err != nil {
			return
		}
	}
}

var errLongLine = errors.New("line too long")

// readLine reads one line of at most maxRootLine bytes, without its "\n".
func readLine(r *bufio.Reader) (string, error) {
	var buf []byte
	for {
		chunk, err := r.ReadSlice('\n')
		buf = append(buf, chunk...)
		if len(buf) > maxRootLine {
			return "", errLongLine
		}
		if err == nil {
			return string(buf[:len(buf)-1]), nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return "", err
		}
	}
}

// addTemp records hash parts of temporary roots found in the files.
func (s *rootServer) addTemp(hashPart string) {
	s.mu.Lock()
	s.temp[hashPart] = true
	s.mu.Unlock()
}

// isTemp reports whether a temporary root names hashPart.
func (s *rootServer) isTemp(hashPart string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.temp[hashPart]
}

// claim marks hashPart as being deleted, unless a temporary root names it
// (then it reports false): a root sent for it from now on waits for
// release.
func (s *rootServer) claim(hashPart string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.temp[hashPart] {
		return false
	}
	s.pending[hashPart] = true
	return true
}

// release ends every claim.
func (s *rootServer) release() {
	s.mu.Lock()
	clear(s.pending)
	s.cond.Broadcast()
	s.mu.Unlock()
}

// close stops the server and waits for its connections.
func (s *rootServer) close() {
	s.mu.Lock()
	s.closed = true
	clear(s.pending)
	s.cond.Broadcast()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.ln.Close()
	s.wg.Wait()
}
