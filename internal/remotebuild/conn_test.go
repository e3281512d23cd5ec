package remotebuild

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"cairn/internal/nar"
	"cairn/internal/nixhash"
	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/storepath"
	"cairn/internal/wire"
)

// The test binary doubles as the remote side: with REMOTEBUILD_FAKE_SERVE
// set it serves (a little of) the serve protocol on stdin/stdout instead of
// running tests, so Dial runs it through bash as it runs nix-store.
func TestMain(m *testing.M) {
	if mode := os.Getenv("REMOTEBUILD_FAKE_SERVE"); mode != "" {
		os.Exit(fakeServe(mode))
	}
	os.Exit(m.Run())
}

func fakeServe(mode string) int {
	r, w := wire.NewReader(os.Stdin), wire.NewWriter(os.Stdout)
	ours := protocol.ServeVersion
	if v := os.Getenv("REMOTEBUILD_FAKE_VERSION"); v != "" {
		n, err := strconv.ParseUint(v, 0, 64)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		ours = protocol.Version(n)
	}
	switch mode {
	case "oops": // reads the client's hello (so that its write cannot fail), then gives up
		r.Uint64()
		r.Uint64()
		fmt.Fprintln(os.Stderr, "oops: no nix-store here")
		return 1
	case "ngoops": // as oops, for the worker protocol's 8-byte hello
		r.Uint64()
		fmt.Fprintln(os.Stderr, "oops: no nix-daemon here")
		return 1
	case "badmagic":
		r.Uint64()
		r.Uint64()
		w.Uint64(0xdead)
		w.Uint64(uint64(ours))
		w.Flush()
		fmt.Fprintln(os.Stderr, "garbage follows")
		return 1
	case "hang": // never answers; ends at EOF
		io.Copy(io.Discard, os.Stdin)
		return 0
	case "serve":
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", mode)
		return 2
	}
	fmt.Fprintln(os.Stderr, "before handshake")
	cv, err := protocol.ServeServerHandshake(r, w, ours)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	v := min(cv, ours)
	fmt.Fprintln(os.Stderr, "after handshake")
	for {
		cmd := protocol.ServeCmd(r.Uint64())
		if r.Err() != nil {
			return 0 // the client closed the connection
		}
		switch cmd {
		case protocol.ServeQueryValidPaths:
			var a protocol.ServeQueryValidPathsArgs
			a.Read(r)
			fmt.Fprintf(os.Stderr, "query lock=%v substitute=%v paths=%d\n", a.Lock, a.Substitute, len(a.Paths))
			w.StorePaths(slices.DeleteFunc(a.Paths, func(p storepath.StorePath) bool { return !fakeValid(p) }))
		case protocol.ServeQueryPathInfos:
			var infos []*protocol.PathInfo
			for _, p := range r.StorePaths() {
				if fakeValid(p) {
					infos = append(infos, fakeInfo(p))
				}
			}
			protocol.WriteServePathInfos(w, v, infos)
		case protocol.ServeDumpStorePath:
			w.Write(fakeNAR(r.StorePath().Name()))
		case protocol.ServeAddToStoreNar:
			var a protocol.ServeAddToStoreNarArgs
			a.Read(r)
			data := make([]byte, a.Info.NarSize)
			r.ReadFull(data)
			fmt.Fprintf(os.Stderr, "added %s refs=%d hash-ok=%v nar=%q\n", a.Info.Path.Name(), len(a.Info.References),
				nixhash.Sum(nixhash.SHA256, data) == a.Info.NarHash, data)
			w.Uint64(fakeAccept(a.Info.Path))
		case protocol.ServeImportPaths:
			more := r.Uint64()
			var data bytes.Buffer
			if _, err := nar.Copy(&data, r); err != nil {
				r.Fail(err)
			}
			magic := r.Uint64()
			p := r.StorePath()
			refs := r.StorePaths()
			deriver := r.OptStorePath()
			sig, end := r.Uint64(), r.Uint64()
			fmt.Fprintf(os.Stderr, "imported %s more=%d magic-ok=%v refs=%d deriver=%s sig=%d end=%d nar=%q\n", p.Name(), more,
				magic == protocol.ExportMagic, len(refs), deriver.Name(), sig, end, data.Bytes())
			w.Uint64(fakeAccept(p))
		default:
			fmt.Fprintln(os.Stderr, "unexpected command", cmd)
			return 1
		}
		if r.Err() != nil {
			fmt.Fprintln(os.Stderr, r.Err())
			return 1
		}
		if err := w.Flush(); err != nil {
			return 1
		}
	}
}

// The fake store has the paths whose names start with "valid", and takes
// every path but those whose names start with "reject".
func fakeValid(p storepath.StorePath) bool { return strings.HasPrefix(p.Name(), "valid") }

func fakeAccept(p storepath.StorePath) uint64 {
	if strings.HasPrefix(p.Name(), "reject") {
		return 0
	}
	return 1
}

// fakeNAR is the NAR of a regular file holding name.
func fakeNAR(name string) []byte {
	var b bytes.Buffer
	w := wire.NewWriter(&b)
	for _, s := range []string{"nix-archive-1", "(", "type", "regular", "contents", name, ")"} {
		w.String(s)
	}
	w.Flush()
	return b.Bytes()
}

func fakeInfo(p storepath.StorePath) *protocol.PathInfo {
	n := fakeNAR(p.Name())
	return &protocol.PathInfo{Path: p, Deriver: drvPath, References: []storepath.StorePath{p}, NarSize: uint64(len(n)),
		NarHash: nixhash.Sum(nixhash.SHA256, n), Signatures: []string{"key:" + p.Name()}}
}

var drvPath = mustPath("/nix/store/cnmzcvcnrx91qy8ip72ld7mcibxzp5jf-hello.drv")

func mustPath(s string) storepath.StorePath {
	p, err := storepath.Parse(s)
	if err != nil {
		panic(err)
	}
	return p
}

func path(name string) storepath.StorePath {
	return mustPath("/nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-" + name)
}

// syncBuffer is a log written by exec's stderr goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// fakeMachine is a localhost machine whose remote program is this test
// binary in mode, answering the handshake with version (0 for ServeVersion).
func fakeMachine(t *testing.T, mode string, version protocol.Version) *Machine {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	program := "env REMOTEBUILD_FAKE_SERVE=" + mode
	if version != 0 {
		program += fmt.Sprintf(" REMOTEBUILD_FAKE_VERSION=%#x", uint64(version))
	}
	program += " " + shellEscape(exe)
	// Spaces as %20: ParseQuery would also take '+', Nix would not.
	q := strings.ReplaceAll(url.QueryEscape(program), "+", "%20")
	return &Machine{StoreURI: "ssh://localhost?remote-program=" + q, Systems: []string{"x86_64-linux"}, MaxJobs: 1, SpeedFactor: 1}
}

// noTemp points TMPDIR at an empty directory and checks at the end of the
// test that Dial left nothing there (its host key directory).
func noTemp(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("TMPDIR", dir)
	t.Cleanup(func() {
		if left, _ := os.ReadDir(dir); len(left) > 0 {
			t.Errorf("left in TMPDIR: %v", left)
		}
	})
}

func dial(t *testing.T, m *Machine, log io.Writer) *Conn {
	t.Helper()
	c, err := Dial(context.Background(), m, log)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	return c
}

func TestCommandLocalhost(t *testing.T) {
	m := &Machine{StoreURI: "ssh://localhost?remote-program=X&remote-store=local?root=/a b'c", SSHKey: "/key",
		SSHPublicHostKey: "aGVsbG8="}
	t.Setenv("NIX_SSHOPTS", "-p 22")
	tmp := t.TempDir()
	argv, host, err := command(m, tmp)
	if err != nil {
		t.Fatal(err)
	}
	// Nix's fake ssh: bash, no ssh options, no host key file.
	want := []string{"bash", "-c", `X --serve --write --store 'local?root=/a b'\''c'`}
	if !slices.Equal(argv, want) || host != "localhost" {
		t.Errorf("argv %q host %q, want %q", argv, host, want)
	}
	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Errorf("files written for localhost: %v", left)
	}
	if argv, _, _ := command(&Machine{StoreURI: "ssh://localhost"}, tmp); !slices.Equal(argv, []string{"bash", "-c", "nix-store --serve --write"}) {
		t.Errorf("default program: %q", argv)
	}
}

func TestCommandSSH(t *testing.T) {
	t.Setenv("NIX_SSHOPTS", " -p 2222\t-oControlMaster=no  ")
	tmp := t.TempDir()
	m := &Machine{StoreURI: "ssh://user@host?compress=true&ssh-key=/ignored&remote-program=/bin/nix-store",
		SSHKey: "/root/.ssh/id", SSHPublicHostKey: "c3NoLWVkMjU1MTkgQUFBQQ"}
	argv, host, err := command(m, tmp)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(tmp, "host-key")
	want := []string{"ssh", "user@host", "-x", "-a", "-p", "2222", "-oControlMaster=no", "-i", "/root/.ssh/id",
		"-oUserKnownHostsFile=" + keyFile, "-C", "/bin/nix-store --serve --write"}
	if !slices.Equal(argv, want) || host != "user@host" {
		t.Errorf("argv\n got %q\nwant %q\nhost %q", argv, want, host)
	}
	// The known hosts line names the host without the user.
	if b, err := os.ReadFile(keyFile); err != nil || string(b) != "host ssh-ed25519 AAAA\n" {
		t.Errorf("host key file %q, %v", b, err)
	}
}

func TestCommandSSHParams(t *testing.T) {
	t.Setenv("NIX_SSHOPTS", "")
	tmp := t.TempDir()
	// Without the columns, the URI's parameters give the key and host key;
	// the last '@' ends the user.
	m := &Machine{StoreURI: "ssh://a@b@h.example?ssh-key=/k&base64-ssh-public-host-key=aGVsbG8%3D&compress=false"}
	argv, host, err := command(m, tmp)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"ssh", "a@b@h.example", "-x", "-a", "-i", "/k", "-oUserKnownHostsFile=" + filepath.Join(tmp, "host-key"),
		"nix-store --serve --write"}
	if !slices.Equal(argv, want) || host != "a@b@h.example" {
		t.Errorf("argv\n got %q\nwant %q", argv, want)
	}
	if b, _ := os.ReadFile(filepath.Join(tmp, "host-key")); string(b) != "h.example hello\n" {
		t.Errorf("host key file %q", b)
	}
	// Nothing but ssh's defaults.
	argv, _, err = command(&Machine{StoreURI: "ssh://h"}, tmp)
	if want := []string{"ssh", "h", "-x", "-a", "nix-store --serve --write"}; err != nil || !slices.Equal(argv, want) {
		t.Errorf("argv %q, %v; want %q", argv, err, want)
	}
}

func TestCommandSSHNG(t *testing.T) {
	// ssh-ng:// runs nix-daemon --stdio, with the same ssh options.
	t.Setenv("NIX_SSHOPTS", "-v")
	tmp := t.TempDir()
	argv, host, err := command(&Machine{StoreURI: "ssh-ng://u@h?remote-store=/r&compress=true", SSHKey: "/k"}, tmp)
	want := []string{"ssh", "u@h", "-x", "-a", "-v", "-i", "/k", "-C", "nix-daemon --stdio --store '/r'"}
	if err != nil || !slices.Equal(argv, want) || host != "u@h" {
		t.Errorf("argv %q host %q, %v; want %q", argv, host, err, want)
	}
	argv, _, err = command(&Machine{StoreURI: "ssh-ng://localhost?remote-program=/bin/d"}, tmp)
	if want := []string{"bash", "-c", "/bin/d --stdio"}; err != nil || !slices.Equal(argv, want) {
		t.Errorf("localhost argv %q, %v; want %q", argv, err, want)
	}
}

func TestCommandErrors(t *testing.T) {
	for _, tt := range []struct{ uri, key, want string }{
		{"daemon", "", "store 'daemon': remote builders must be ssh:// or ssh-ng:// stores"},
		{"local?root=/x", "", "store 'local?root=/x': remote builders must be ssh:// or ssh-ng:// stores"},
		{"/nix/store", "", "store '/nix/store': remote builders must be ssh:// or ssh-ng:// stores"},
		{"ssh-ng://-x", "", "invalid SSH host name '-x'"},
		{"ssh://-oProxyCommand=evil", "", "invalid SSH host name '-oProxyCommand=evil'"},
		{"ssh://?remote-program=x", "", "invalid SSH host name ''"},
		{"ssh://", "", "invalid SSH host name ''"},
		{"ssh://h?remote-program=%zz", "", "store 'ssh://h?remote-program=%zz': "},
		{"ssh://h", "no*base64", "store 'ssh://h': host key: invalid character in Base64 string: '*'"},
	} {
		argv, _, err := command(&Machine{StoreURI: tt.uri, SSHPublicHostKey: tt.key}, t.TempDir())
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("command(%q): %q, %v; want error %q", tt.uri, argv, err, tt.want)
		}
	}
}

func TestDialVersion(t *testing.T) {
	noTemp(t)
	for _, tt := range []struct{ server, want protocol.Version }{
		{0x207, 0x207},
		{0x204, 0x204},
		{0x2ff, 0x207}, // a newer server is spoken to at ours
	} {
		c := dial(t, fakeMachine(t, "serve", tt.server), io.Discard)
		if c.Version != tt.want || c.Host != "localhost" {
			t.Errorf("server %#x: version %#x host %q, want %#x", uint64(tt.server), uint64(c.Version), c.Host, uint64(tt.want))
		}
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
}

func TestConn(t *testing.T) {
	noTemp(t)
	var log syncBuffer
	c := dial(t, fakeMachine(t, "serve", 0), &log)

	valid, err := c.QueryValidPaths([]storepath.StorePath{path("valid-a"), path("other-b"), path("valid-c")}, true, false)
	if want := []storepath.StorePath{path("valid-a"), path("valid-c")}; err != nil || !slices.Equal(valid, want) {
		t.Errorf("QueryValidPaths = %v, %v; want %v", valid, err, want)
	}
	if valid, err := c.QueryValidPaths(nil, false, true); err != nil || len(valid) != 0 {
		t.Errorf("QueryValidPaths(nil) = %v, %v", valid, err)
	}

	infos, err := c.QueryPathInfos([]storepath.StorePath{path("other-b"), path("valid-a")})
	if err != nil || len(infos) != 1 {
		t.Fatalf("QueryPathInfos = %v, %v", infos, err)
	}
	if got, want := infos[0], (*store.PathInfo)(fakeInfo(path("valid-a"))); !reflect.DeepEqual(got, want) {
		t.Errorf("QueryPathInfos\n got %+v\nwant %+v", got, want)
	}

	r, err := c.DumpStorePath(path("valid-a"), infos[0].NarSize)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(r); err != nil || !bytes.Equal(b, fakeNAR("valid-a")) {
		t.Errorf("DumpStorePath: %q, %v", b, err)
	}

	// At 2.5 and later a path goes as AddToStoreNar.
	n := fakeNAR("new")
	info := &store.PathInfo{Path: path("new"), References: []storepath.StorePath{path("valid-a")}, NarSize: uint64(len(n)),
		NarHash: nixhash.Sum(nixhash.SHA256, n)}
	if err := c.AddToStoreNar(info, bytes.NewReader(n)); err != nil {
		t.Errorf("AddToStoreNar: %v", err)
	}
	rejected := *info
	rejected.Path = path("reject-me")
	err = c.AddToStoreNar(&rejected, bytes.NewReader(n))
	if want := "failed to add path '" + path("reject-me").String() + "' to remote host 'localhost'"; err == nil || err.Error() != want {
		t.Errorf("AddToStoreNar rejected: %v, want %q", err, want)
	}

	if u := c.URI(); u != "ssh://localhost" {
		t.Errorf("URI %q", u)
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	// What the remote side wrote to stderr, before and after the
	// handshake, reaches the log in order.
	want := "before handshake\nafter handshake\n" +
		"query lock=true substitute=false paths=3\nquery lock=false substitute=true paths=0\n" +
		fmt.Sprintf("added new refs=1 hash-ok=true nar=%q\nadded reject-me refs=1 hash-ok=true nar=%q\n", n, n)
	if got := log.String(); got != want {
		t.Errorf("log\n got %q\nwant %q", got, want)
	}
}

func TestConnOldServer(t *testing.T) {
	// Before 2.4 path infos have no hash, and before 2.5 paths go as an
	// export stream (ImportPaths).
	noTemp(t)
	var log syncBuffer
	c := dial(t, fakeMachine(t, "serve", 0x203), &log)
	infos, err := c.QueryPathInfos([]storepath.StorePath{path("valid-a")})
	want := fakeInfo(path("valid-a"))
	want.NarHash, want.Signatures = nixhash.Hash{}, nil
	if err != nil || len(infos) != 1 || !reflect.DeepEqual(infos[0], (*store.PathInfo)(want)) {
		t.Errorf("QueryPathInfos = %+v, %v; want %+v", infos, err, want)
	}
	n := fakeNAR("old")
	info := &store.PathInfo{Path: path("old"), Deriver: drvPath, References: []storepath.StorePath{path("valid-a"), path("valid-b")},
		NarSize: uint64(len(n)), NarHash: nixhash.Sum(nixhash.SHA256, n)}
	if err := c.AddToStoreNar(info, bytes.NewReader(n)); err != nil {
		t.Errorf("AddToStoreNar: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	wantLog := fmt.Sprintf("imported old more=1 magic-ok=true refs=2 deriver=hello.drv sig=0 end=0 nar=%q\n", n)
	if got := log.String(); !strings.HasSuffix(got, wantLog) {
		t.Errorf("log %q, want it to end with %q", got, wantLog)
	}
}

func TestConnShortNAR(t *testing.T) {
	noTemp(t)
	c := dial(t, fakeMachine(t, "serve", 0), io.Discard)
	defer c.Close() // the stream is broken: the remote side fails
	info := &store.PathInfo{Path: path("short"), NarSize: 100, NarHash: nixhash.Sum(nixhash.SHA256, nil)}
	err := c.AddToStoreNar(info, strings.NewReader("0123456789"))
	if err == nil || !strings.Contains(err.Error(), "read 10 of 100 NAR bytes") {
		t.Errorf("AddToStoreNar with a short NAR: %v", err)
	}
}

func TestDialErrors(t *testing.T) {
	noTemp(t)
	for _, tt := range []struct {
		mode    string
		version protocol.Version
		want    string
	}{
		// The remote side's stderr explains a failed connection.
		{"oops", 0, "cannot connect to 'localhost': oops: no nix-store here"},
		{"badmagic", 0, "'nix-store --serve' protocol mismatch from 'localhost': serve handshake: bad magic 0xdead: " +
			protocol.ErrProtocol.Error() + ": garbage follows"},
		{"serve", 0x300, "'nix-store --serve' protocol mismatch from 'localhost': serve handshake: server version 0x300: " +
			protocol.ErrProtocol.Error() + ": before handshake\nafter handshake"},
	} {
		var log syncBuffer
		c, err := Dial(context.Background(), fakeMachine(t, tt.mode, tt.version), &log)
		if err == nil {
			c.Close()
			t.Errorf("%s: Dial succeeded", tt.mode)
			continue
		}
		if err.Error() != tt.want {
			t.Errorf("%s: error\n got %q\nwant %q", tt.mode, err, tt.want)
		}
		// What explained the failure is not also logged.
		if log.String() != "" {
			t.Errorf("%s: logged %q", tt.mode, log.String())
		}
	}
	// Open takes ssh-ng:// machines to the worker protocol.
	m := fakeMachine(t, "ngoops", 0)
	m.StoreURI = strings.Replace(m.StoreURI, "ssh://", "ssh-ng://", 1)
	var log syncBuffer
	if p, err := Open(context.Background(), m, storepath.DefaultStoreDir, &log); err == nil || err.Error() != "cannot connect to 'localhost': oops: no nix-daemon here" {
		if err == nil {
			p.Close()
		}
		t.Errorf("ssh-ng: %v", err)
	}
	if log.String() != "" {
		t.Errorf("ssh-ng: logged %q", log.String())
	}
	if _, err := Dial(context.Background(), &Machine{StoreURI: "ssh://-x"}, io.Discard); err == nil || err.Error() != "invalid SSH host name '-x'" {
		t.Errorf("bad host: %v", err)
	}
}

func TestDialContext(t *testing.T) {
	noTemp(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Dial(ctx, fakeMachine(t, "serve", 0), io.Discard)
	if !errors.Is(err, context.Canceled) || !strings.HasPrefix(err.Error(), "cannot connect to 'localhost'") {
		t.Errorf("cancelled: %v", err)
	}

	// A remote side that never answers is killed at the deadline.
	ctx, cancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = Dial(ctx, fakeMachine(t, "hang", 0), io.Discard)
	if err == nil || !strings.HasPrefix(err.Error(), "cannot connect to 'localhost'") {
		t.Errorf("hang: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("hang: Dial returned after %v", d)
	}
}

func TestStderrSwitch(t *testing.T) {
	// Held until the handshake, then passed on first and in order (Dial's
	// own test cannot force the remote stderr to arrive before the switch).
	s := &stderrSwitch{}
	for _, p := range []string{"ssh: warning \n", "more\r\n"} {
		if n, err := s.Write([]byte(p)); n != len(p) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if got := s.held(); got != "ssh: warning \nmore" {
		t.Errorf("held %q", got)
	}
	var dst bytes.Buffer
	s.connect(&dst)
	s.Write([]byte("after"))
	if got := dst.String(); got != "ssh: warning \nmore\r\nafter" {
		t.Errorf("passed on %q", got)
	}
	if got := s.held(); got != "" {
		t.Errorf("held after connect %q", got)
	}

	// What is held is bounded; extra output is dropped but still accepted,
	// so that exec's copying goroutine never fails.
	s = &stderrSwitch{}
	big := bytes.Repeat([]byte("x"), 64<<10)
	s.Write(big)
	if n, err := s.Write([]byte("dropped")); n != 7 || err != nil {
		t.Errorf("Write past the bound = %d, %v", n, err)
	}
	if got := s.held(); got != string(big) {
		t.Errorf("held %d bytes, want %d", len(got), len(big))
	}
}

func TestDecodeQueryAsNix(t *testing.T) {
	// '+' stays '+' (store paths hold it); the first of two names wins; a
	// pair without '=' is ignored; a bad escape is an error.
	m := &Machine{StoreURI: "ssh://localhost?remote-program=/nix/store/abc-nix-2.8+git/bin/nix-store&x&remote-program=no&remote-store=local%3Froot%3D/a"}
	argv, _, err := command(m, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if want := "/nix/store/abc-nix-2.8+git/bin/nix-store --serve --write --store 'local?root=/a'"; argv[2] != want {
		t.Errorf("command %q, want %q", argv[2], want)
	}
	for _, bad := range []string{"remote-program=%4", "remote-program=%zz", "compress=maybe"} {
		if _, _, err := command(&Machine{StoreURI: "ssh://host?" + bad}, t.TempDir()); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

func TestDialGoneBeforeHandshake(t *testing.T) {
	// A remote side that exits without reading makes the hello a write into
	// a closed pipe: that is a failed connection, not a protocol mismatch.
	noTemp(t)
	for range 30 {
		_, err := Dial(context.Background(), &Machine{StoreURI: "ssh://localhost?remote-program=true"}, io.Discard)
		if err == nil || !strings.HasPrefix(err.Error(), "cannot connect to 'localhost'") {
			t.Fatalf("Dial: %v", err)
		}
	}
}

func TestDialCancelKillsGroup(t *testing.T) {
	// A wrapper that does not exec leaves the real program a grandchild
	// holding the pipes; cancelling must still end Dial.
	noTemp(t)
	m := fakeMachine(t, "hang", 0)
	m.StoreURI = strings.Replace(m.StoreURI, "remote-program=", "remote-program=f()%20%7B%20", 1) + "%20%22$@%22;%20%7D;%20f"
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := Dial(ctx, m, io.Discard); err == nil {
		t.Error("Dial to a side that never answers succeeded")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Dial returned %v after a 200 ms deadline", d)
	}
}

// FuzzCommand: any store URI gives an argv or an error, never a panic; the
// command line quotes remote-store so that the shell sees one word.
func FuzzCommand(f *testing.F) {
	for _, s := range []string{
		"ssh://localhost?remote-store=local?root=/a%20b'c",
		"ssh-ng://user@host?remote-program=/nix/store/x-nix-2.8+git/bin/nix-daemon&compress=true",
		"ssh://host?ssh-key=/k&base64-ssh-public-host-key=c3NoLWVkMjU1MTkgQUFBQQ",
		"ssh://-oProxyCommand=x", "ssh://host?remote-program=%4", "file:///x", "ssh://",
	} {
		f.Add(s)
	}
	tmp := f.TempDir()
	f.Fuzz(func(t *testing.T, uri string) {
		argv, host, err := command(&Machine{StoreURI: uri}, tmp)
		if err != nil {
			return
		}
		if host == "" || strings.HasPrefix(host, "-") || len(argv) < 3 {
			t.Fatalf("%q: argv %q, host %q", uri, argv, host)
		}
		if argv[0] == "ssh" && argv[1] != host {
			t.Fatalf("%q: ssh to %q, host %q", uri, argv[1], host)
		}
	})
}
