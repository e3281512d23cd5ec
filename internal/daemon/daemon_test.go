package daemon

import (
	"bytes"
	"compress/bzip2"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"cairn/internal/narinfo"
	"cairn/internal/nixhash"
	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
	"cairn/internal/wire"
)

// TestHandshakeGoldens sends the client side of package protocol's handshake
// goldens (Nix 2.3 at 1.21, Lix at 1.35, Nix 2.35 at 1.38 with features, Guix
// at 0x163) and expects the golden daemon side, whose daemon announced what
// ours does, except for the version string.
func TestHandshakeGoldens(t *testing.T) {
	td := newTestDaemon(t)
	var oldVer, newVer bytes.Buffer
	w := wire.NewWriter(&oldVer)
	w.String("2.8.0")
	w.Flush()
	w = wire.NewWriter(&newVer)
	w.String(HandshakeVersion)
	w.Flush()
	for _, name := range []string{"nix-2.3", "lix", "nix-2.35", "guix"} {
		t.Run(name, func(t *testing.T) {
			c2d, err := os.ReadFile(filepath.Join(goldenDir, "handshake-"+name+".c2d.bin"))
			if err != nil {
				t.Fatal(err)
			}
			d2c, err := os.ReadFile(filepath.Join(goldenDir, "handshake-"+name+".d2c.bin"))
			if err != nil {
				t.Fatal(err)
			}
			want := bytes.Replace(d2c, oldVer.Bytes(), newVer.Bytes(), 1)
			c := td.dialRaw()
			if _, err := c.Write(c2d); err != nil {
				t.Fatal(err)
			}
			c.(*net.UnixConn).CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("handshake:\n got %x\nwant %x", got, want)
			}
		})
	}
}

// TestVersionsServe runs a few operations at every protocol version a client
// may speak, each field gated on the negotiated version.
func TestVersionsServe(t *testing.T) {
	td := newTestDaemon(t)
	for _, v := range []protocol.Version{protocol.V(1, 10), protocol.Nix23, protocol.V(1, 24), protocol.V(1, 25),
		protocol.V(1, 30), protocol.Nix28, protocol.LixVersion, protocol.V(1, 37), protocol.Latest, protocol.GuixVersion} {
		t.Run(v.String(), func(t *testing.T) {
			cfg := protocol.ClientConfig{Version: v}
			if v == protocol.Latest {
				cfg.Features = protocol.LatestClientFeatures
			}
			cl := td.mustDial(cfg)
			if v == protocol.Latest && !cl.p.Has(protocol.FeatureRealisationWithPath) {
				t.Errorf("features %v", cl.p.Features)
			}
			text := "text at " + v.String() + "\n"
			rep := cl.mustCall(&protocol.AddTextToStoreRequest{Name: "t.txt", Text: text}, nil).(*protocol.PathReply)
			if !strings.HasSuffix(rep.Path.String(), "-t.txt") {
				t.Fatalf("AddTextToStore: %v", rep.Path)
			}
			ok := cl.mustCall(&protocol.PathRequest{Code: protocol.OpIsValidPath, Path: rep.Path}, nil).(*protocol.BoolReply)
			if !ok.Value {
				t.Fatal("not valid")
			}
			pi := cl.mustCall(&protocol.PathRequest{Code: protocol.OpQueryPathInfo, Path: rep.Path}, nil).(*protocol.QueryPathInfoReply)
			if !pi.Valid || pi.Info.NarSize == 0 {
				t.Fatalf("QueryPathInfo: %+v", pi)
			}
			cl.mustCall(&protocol.SetOptionsRequest{ClientOptions: protocol.ClientOptions{Verbosity: protocol.LvlInfo}}, nil)
			// A NAR through AddToStoreNar: framed, STDERR_READ or raw by version.
			if !cl.p.Guix {
				data := fileNAR(t, "nar at "+v.String())
				info := caNarInfo(t, "n", data)
				protocol.WriteRequest(cl.w, cl.p, &protocol.AddToStoreNarRequest{Info: *info})
				if err := sendNAR(cl, data); err != nil {
					t.Fatal(err)
				}
				ok := cl.mustCall(&protocol.PathRequest{Code: protocol.OpIsValidPath, Path: info.Path}, nil).(*protocol.BoolReply)
				if !ok.Value {
					t.Fatal("AddToStoreNar: not valid")
				}
			}
		})
	}
}

// sendNAR sends an AddToStoreNar payload the way the client's version does and
// reads the answer.
func sendNAR(cl *client, data []byte) error {
	switch {
	case cl.p.Version.AtLeast(23):
		fw := wire.NewFramedWriter(cl.w)
		fw.Write(data)
		fw.Close()
		_, err := cl.finish(protocol.OpAddToStoreNar)
		return err
	case cl.p.Version.AtLeast(21):
		cl.w.Flush()
		src := bytes.NewReader(data)
		return protocol.ProcessStderr(cl.r, cl.p, func(m *protocol.Message) error {
			if m.Code != protocol.StderrRead {
				return nil
			}
			buf := make([]byte, m.ReadLen)
			n, _ := src.Read(buf)
			cl.w.Bytes(buf[:n])
			return cl.w.Flush()
		})
	default:
		cl.w.Write(data)
		_, err := cl.finish(protocol.OpAddToStoreNar)
		return err
	}
}

// TestOldOps covers the ops only old clients and Guix send: AddToStore in its
// old form (an unframed NAR), ExportPath (STDERR_WRITE) and ImportPaths
// (STDERR_READ).
func TestOldOps(t *testing.T) {
	td := newTestDaemon(t, [2]string{"require-sigs", "false"})
	for _, v := range []protocol.Version{protocol.Nix23, protocol.GuixVersion} {
		t.Run(v.String(), func(t *testing.T) {
			cl := td.mustDial(protocol.ClientConfig{Version: v})
			data := fileNAR(t, "flat "+v.String())
			protocol.WriteRequest(cl.w, cl.p, &protocol.AddToStoreRequest{Name: "flat", Fixed: true, OldAlgo: "sha256"})
			cl.w.Write(data)
			flat, err := cl.finish(protocol.OpAddToStore)
			if err != nil {
				t.Fatal(err)
			}
			protocol.WriteRequest(cl.w, cl.p, &protocol.AddToStoreRequest{Name: "rec", Fixed: false})
			cl.w.Write(data)
			rec, err := cl.finish(protocol.OpAddToStore)
			if err != nil {
				t.Fatal(err)
			}
			p := rec.(*protocol.PathReply).Path
			if flat.(*protocol.PathReply).Path == p {
				t.Fatal("flat and recursive gave the same path")
			}
			// A failing old AddToStore (a directory where a file is wanted)
			// still reads its NAR: the connection carries on.
			protocol.WriteRequest(cl.w, cl.p, &protocol.AddToStoreRequest{Name: "bad name/", Fixed: true, OldAlgo: "sha256"})
			cl.w.Write(data)
			if _, err := cl.finish(protocol.OpAddToStore); err == nil {
				t.Fatal("bad name accepted")
			}
			// Export, then import into a second daemon.
			protocol.WriteRequest(cl.w, cl.p, &protocol.ExportPathRequest{Path: p})
			cl.w.Flush()
			var export bytes.Buffer
			if err := protocol.ProcessStderr(cl.r, cl.p, func(m *protocol.Message) error {
				if m.Code == protocol.StderrWrite {
					export.Write(m.Data)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			cl.r.Uint64()
			var stream bytes.Buffer
			sw := wire.NewWriter(&stream)
			sw.Uint64(1)
			sw.Write(export.Bytes())
			sw.Uint64(0)
			sw.Flush()

			td2 := newTestDaemon(t, [2]string{"require-sigs", "false"})
			cl2 := td2.mustDial(protocol.ClientConfig{Version: v})
			paths, err := importVia(cl2, stream.Bytes())
			if err != nil {
				t.Fatal(err)
			}
			if len(paths) != 1 || paths[0] != p.String() {
				t.Fatalf("imported %v, want %v", paths, p)
			}
			// An untrusted client may not import unsigned paths.
			td3 := newTestDaemon(t)
			td3.setDecision(Decision{User: "u", Allowed: true})
			cl3 := td3.mustDial(protocol.ClientConfig{Version: v})
			if _, err := importVia(cl3, stream.Bytes()); err == nil || !strings.Contains(err.Error(), "lacks a valid signature") {
				t.Fatalf("untrusted import: %v", err)
			}
			cl3.mustCall(&protocol.EmptyRequest{Code: protocol.OpSyncWithGC}, nil)
		})
	}
}

func importVia(cl *client, stream []byte) ([]string, error) {
	protocol.WriteRequest(cl.w, cl.p, &protocol.EmptyRequest{Code: protocol.OpImportPaths})
	cl.w.Flush()
	src := bytes.NewReader(stream)
	if err := protocol.ProcessStderr(cl.r, cl.p, func(m *protocol.Message) error {
		if m.Code == protocol.StderrRead {
			buf := make([]byte, m.ReadLen)
			n, _ := src.Read(buf)
			cl.w.Bytes(buf[:n])
			return cl.w.Flush()
		}
		return nil
	}); err != nil {
		return nil, err
	}
	var rep protocol.StringsReply
	rep.Read(cl.r, cl.p)
	return rep.Values, cl.r.Err()
}

// TestUntrusted checks what an untrusted client may not do.
func TestUntrusted(t *testing.T) {
	sk, pk, err := narinfo.GenerateKey("test-1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	td := newTestDaemon(t, [2]string{"trusted-public-keys", pk.String()}, [2]string{"trusted-substituters", "https://ok.example/"})
	td.setDecision(Decision{User: "u", UID: 1000, Allowed: true})
	cl := td.mustDial(protocol.ClientConfig{Version: protocol.LixVersion})
	if cl.info.Trusted != protocol.NotTrusted {
		t.Errorf("trusted flag %v", cl.info.Trusted)
	}

	// SetOptions: restricted settings are ignored with a warning.
	cl.mustCall(&protocol.SetOptionsRequest{ClientOptions: protocol.ClientOptions{Verbosity: protocol.LvlInfo, Overrides: map[string]string{
		"require-sigs": "false", "timeout": "5", "substituters": "https://ok.example https://evil.example/",
	}}}, nil)
	log := cl.logText()
	for _, want := range []string{"ignoring the client-specified setting 'require-sigs'", "ignoring untrusted substituter 'https://evil.example/'"} {
		if !strings.Contains(log, want) {
			t.Errorf("SetOptions log %q lacks %q", log, want)
		}
	}
	if strings.Contains(log, "'timeout'") {
		t.Errorf("timeout refused: %q", log)
	}

	addNar := func(info *protocol.PathInfo, data []byte, dontCheck bool) error {
		_, err := cl.call(&protocol.AddToStoreNarRequest{Info: *info, DontCheckSigs: dontCheck}, data)
		return err
	}
	data := fileNAR(t, "unsigned")
	info := narInfo(t, "unsigned", data)
	if err := addNar(info, data, true); err == nil || !strings.Contains(err.Error(), "lacks a valid signature") {
		t.Fatalf("unsigned NAR: %v", err)
	}
	// Signed by a trusted key: accepted.
	fp := (*store.PathInfo)(info).Fingerprint()
	info.Signatures = []string{sk.Sign(fp).String()}
	if err := addNar(info, data, false); err != nil {
		t.Fatalf("signed NAR: %v", err)
	}
	// Content-addressed: needs no signature.
	cdata := fileNAR(t, "content-addressed")
	if err := addNar(caNarInfo(t, "ca", cdata), cdata, false); err != nil {
		t.Fatalf("CA NAR: %v", err)
	}
	// The same through AddMultipleToStore.
	mdata := fileNAR(t, "multiple")
	var payload bytes.Buffer
	pw := wire.NewWriter(&payload)
	protocol.WriteMultipleCount(pw, 1)
	protocol.AddMultiple(pw, narInfo(t, "multiple", mdata), bytes.NewReader(mdata))
	pw.Flush()
	if _, err := cl.call(&protocol.AddMultipleToStoreRequest{DontCheckSigs: true}, payload.Bytes()); err == nil {
		t.Fatal("unsigned AddMultipleToStore accepted")
	}

	for _, tc := range []struct {
		name    string
		req     protocol.Request
		payload []byte
		want    string
	}{
		{"repair", &protocol.AddToStoreNarRequest{Info: *caNarInfo(t, "ca", cdata), Repair: true}, cdata, "repairing is not allowed"},
		{"signatures", &protocol.AddSignaturesRequest{Path: info.Path, Signatures: []string{sk.Sign("x").String()}}, nil, "not privileged to add signatures"},
		{"build log", &protocol.AddBuildLogRequest{DrvBase: "cnmzcvcnrx91qy8ip72ld7mcibxzp5jf-hello.drv"}, []byte("log\n"), "not privileged to add logs"},
		{"verify repair", &protocol.VerifyStoreRequest{Repair: true}, nil, "not privileged to repair"},
		{"perm root", &protocol.AddPermRootRequest{Path: info.Path, GCRoot: filepath.Join(td.dir, "r")}, nil, "not privileged to create perm roots"},
		{"build", &protocol.BuildPathsRequest{Code: protocol.OpBuildPaths, Mode: protocol.BuildRepair}, nil, "repairing is not allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := cl.call(tc.req, tc.payload)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
	// The connection is still in step.
	cl.mustCall(&protocol.EmptyRequest{Code: protocol.OpSyncWithGC}, nil)
	// FindRoots: links are censored. (The paths this connection added are
	// temporary roots too, as with Nix.)
	cl.mustCall(&protocol.PathRequest{Code: protocol.OpAddTempRoot, Path: info.Path}, nil)
	roots := cl.mustCall(&protocol.EmptyRequest{Code: protocol.OpFindRoots}, nil).(*protocol.RootsReply)
	if !slices.Contains(roots.Targets, info.Path) || slices.ContainsFunc(roots.Links, func(l string) bool { return l != "{censored}" }) {
		t.Fatalf("roots %+v", roots)
	}
}

// TestTrustedOps covers the root operations, signatures and build logs for a
// trusted client.
func TestTrustedOps(t *testing.T) {
	td := newTestDaemon(t, [2]string{"require-sigs", "true"})
	cl := td.mustDial(protocol.ClientConfig{Version: protocol.Nix28})
	data := fileNAR(t, "trusted")
	info := narInfo(t, "trusted", data)
	if _, err := cl.call(&protocol.AddToStoreNarRequest{Info: *info}, data); err == nil {
		t.Fatal("unsigned NAR accepted without dontCheckSigs")
	}
	cl.mustCall(&protocol.AddToStoreNarRequest{Info: *info, DontCheckSigs: true}, data)
	sig := "k:" + strings.Repeat("A", 86) + "=="
	cl.mustCall(&protocol.AddSignaturesRequest{Path: info.Path, Signatures: []string{sig}}, nil)
	pi := cl.mustCall(&protocol.PathRequest{Code: protocol.OpQueryPathInfo, Path: info.Path}, nil).(*protocol.QueryPathInfoReply)
	if len(pi.Info.Signatures) != 1 || pi.Info.Signatures[0] != sig {
		t.Fatalf("signatures %v", pi.Info.Signatures)
	}
	drv := "cnmzcvcnrx91qy8ip72ld7mcibxzp5jf-hello.drv"
	cl.mustCall(&protocol.AddBuildLogRequest{DrvBase: drv}, []byte("a build log\n"))
	if b, err := readBz2(filepath.Join(td.cfg.LogDir, "drvs", drv[:2], drv[2:]) + ".bz2"); err != nil || string(b) != "a build log\n" {
		t.Fatalf("build log %q, %v", b, err)
	}
	// Roots.
	cl.mustCall(&protocol.PathRequest{Code: protocol.OpAddTempRoot, Path: info.Path}, nil)
	// One file for the connection's roots (the store holds another, for its
	// temporaries).
	temps, _ := os.ReadDir(filepath.Join(td.cfg.StateDir, "temproots"))
	var naming int
	for _, e := range temps {
		if b, _ := os.ReadFile(filepath.Join(td.cfg.StateDir, "temproots", e.Name())); strings.Contains(string(b), info.Path.String()) {
			naming++
		}
	}
	if naming != 1 {
		t.Fatalf("temproots naming %s: %d of %v", info.Path, naming, temps)
	}
	root := filepath.Join(td.dir, "home", "result")
	rep := cl.mustCall(&protocol.AddPermRootRequest{Path: info.Path, GCRoot: root}, nil).(*protocol.StringReply)
	if rep.Value != root {
		t.Fatalf("perm root %q", rep.Value)
	}
	if target, _ := os.Readlink(root); target != info.Path.String() {
		t.Fatalf("root points to %q", target)
	}
	roots := cl.mustCall(&protocol.EmptyRequest{Code: protocol.OpFindRoots}, nil).(*protocol.RootsReply)
	var links []string
	for i, l := range roots.Links {
		if roots.Targets[i] != info.Path {
			t.Errorf("root %s → %s", l, roots.Targets[i])
		}
		links = append(links, l)
	}
	if len(links) != 2 || links[0] != root || !strings.HasPrefix(links[1], "{temp:") {
		t.Fatalf("roots %v", links)
	}
	// The temp roots file goes with the connection (the store's stays).
	cl.c.Close()
	for range 100 {
		if temps, _ = os.ReadDir(filepath.Join(td.cfg.StateDir, "temproots")); len(temps) == 1 {
			break
		}
		waitABit()
	}
	if len(temps) != 1 {
		t.Fatalf("temproots left: %v", temps)
	}
	// Per-user directories were made for the connecting user.
	for _, d := range []string{"gcroots/per-user/tester", "profiles/per-user/tester"} {
		if fi, err := os.Stat(filepath.Join(td.cfg.StateDir, d)); err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s: %v %v", d, fi, err)
		}
	}
}

// TestBadInput sends broken requests: each connection gets an error and
// closes; the daemon and other connections carry on, nothing is registered and
// no temporary is left.
func TestBadInput(t *testing.T) {
	td := newTestDaemon(t, [2]string{"require-sigs", "false"})
	other := td.mustDial(protocol.ClientConfig{Version: protocol.Nix28})
	data := fileNAR(t, strings.Repeat("x", 100000))
	info := caNarInfo(t, "victim", data)
	u64 := func(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }
	var args bytes.Buffer
	aw := wire.NewWriter(&args)
	protocol.WriteRequest(aw, protocol.Params{Version: protocol.Nix28}, &protocol.AddToStoreNarRequest{Info: *info})
	aw.Flush()
	framedPart := func(n int) []byte { // a frame header announcing the whole NAR, and n bytes of it
		return append(u64(uint64(len(data))), data[:n]...)
	}
	for _, tc := range []struct {
		name  string
		bytes []byte
		close bool // the client hangs up after sending
		err   bool // an error frame is expected
	}{
		{"unknown op", u64(99), false, true},
		{"huge op", u64(1 << 62), false, true},
		{"truncated args", append(u64(uint64(protocol.OpIsValidPath)), u64(40)...), true, false},
		{"string past limit", append(u64(uint64(protocol.OpIsValidPath)), u64(1<<40)...), false, true},
		{"path outside the store", append(u64(uint64(protocol.OpIsValidPath)), append(u64(8), []byte("/etc/pwd")...)...), false, true},
		{"list past limit", append(u64(uint64(protocol.OpQueryValidPaths)), u64(1<<40)...), false, true},
		{"frame past limit", append(args.Bytes(), u64(1<<40)...), false, true},
		{"vanishes mid-NAR", append(args.Bytes(), framedPart(50000)...), true, false},
		{"truncated frame then EOF", append(args.Bytes(), framedPart(10)...), true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := td.dialRaw()
			cl := &client{t: t, c: c, r: wire.NewReader(c), w: wire.NewWriter(c)}
			if _, err := protocol.ClientHandshake(cl.r, cl.w, protocol.ClientConfig{Version: protocol.Nix28}, nil); err != nil {
				t.Fatal(err)
			}
			cl.p = protocol.Params{Version: protocol.Nix28}
			c.Write(tc.bytes)
			if tc.close {
				c.(*net.UnixConn).CloseWrite()
			}
			m, err := protocol.ReadMessage(cl.r, cl.p)
			if tc.err && (err != nil || m.Code != protocol.StderrError) {
				t.Fatalf("want an error frame, got %+v, %v", m, err)
			}
			// Then the daemon hangs up.
			rest, _ := io.ReadAll(c)
			if !tc.err && len(rest) > 0 && m == nil {
				t.Fatalf("unexpected %d bytes", len(rest))
			}
			if m != nil && m.Code == protocol.StderrError {
				t.Logf("error: %s", m.Err.Message)
			}
		})
	}
	ok := other.mustCall(&protocol.PathRequest{Code: protocol.OpIsValidPath, Path: info.Path}, nil).(*protocol.BoolReply)
	if ok.Value {
		t.Error("a broken upload was registered")
	}
	if left := td.tempLeft(); len(left) > 0 {
		t.Errorf("temporaries left: %v", left)
	}
	ents, _ := os.ReadDir(td.cfg.RealStoreDir)
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), ".") && e.Name() != local.TempDirName {
			t.Errorf("store dir holds %s", e.Name())
		}
	}
	// A failed framed upload is drained: the connection goes on.
	bad := *info
	bad.NarHash = nixhash.Sum(nixhash.SHA256, []byte("wrong"))
	if _, err := other.call(&protocol.AddToStoreNarRequest{Info: bad}, data); !errors.Is(err, err) || err == nil {
		t.Fatal("hash mismatch accepted")
	}
	other.mustCall(&protocol.AddToStoreNarRequest{Info: *info}, data)
}

// TestRefused: a user the hook refuses gets the handshake, then an error.
func TestRefused(t *testing.T) {
	td := newTestDaemon(t)
	td.setDecision(Decision{User: "mallory", Refusal: "user 'mallory' is not allowed to connect to the Nix daemon"})
	_, err := td.dial(protocol.ClientConfig{Version: protocol.Nix28})
	var pe *protocol.Error
	if !errors.As(err, &pe) || !strings.Contains(pe.Message, "not allowed to connect") {
		t.Fatalf("got %v", err)
	}
	if _, err := os.Stat(filepath.Join(td.cfg.StateDir, "gcroots/per-user/mallory")); err == nil {
		t.Error("refused user got a gcroots dir")
	}
}

// TestQueryMissing: a valid derivation with missing outputs will be built,
// every other invalid path is unknown.
func TestQueryMissing(t *testing.T) {
	td := newTestDaemon(t)
	cl := td.mustDial(protocol.ClientConfig{Version: protocol.Nix28})
	drvText := `Derive([("out","/nix/store/y4rfwymqjf9qz65h5c3wyzb3m4a83xy9-hello","","")],[],[],"x86_64-linux","/bin/sh",["-c","echo building; echo out > $out"],[("builder","/bin/sh"),("name","hello"),("out","/nix/store/y4rfwymqjf9qz65h5c3wyzb3m4a83xy9-hello"),("system","x86_64-linux")])`
	drv := cl.mustCall(&protocol.AddTextToStoreRequest{Name: "hello.drv", Text: drvText}, nil).(*protocol.PathReply).Path
	bogus, _ := storepath.Parse("/nix/store/00000000000000000000000000000000-bogus")
	mi := cl.mustCall(&protocol.QueryMissingRequest{Paths: []protocol.DerivedPath{
		{Path: drv, Built: true, All: true}, {Path: bogus},
	}}, nil).(*protocol.MissingInfo)
	if len(mi.WillBuild) != 1 || mi.WillBuild[0] != drv || len(mi.Unknown) != 1 || mi.Unknown[0] != bogus {
		t.Fatalf("missing %+v", mi)
	}
	_, err := cl.call(&protocol.BuildPathsRequest{Code: protocol.OpBuildPaths, Paths: []protocol.DerivedPath{{Path: drv, Built: true, All: true}}}, nil)
	// This daemon has no sandbox-paths: the builder /bin/sh is missing.
	if err == nil || !strings.Contains(err.Error(), "exec /bin/sh: no such file or directory") {
		t.Fatalf("build: %v", err)
	}
	names := cl.mustCall(&protocol.PathRequest{Code: protocol.OpQueryDerivationOutputNames, Path: drv}, nil).(*protocol.StringsReply)
	if len(names.Values) != 1 || names.Values[0] != "out" {
		t.Fatalf("output names %v", names.Values)
	}
}

func waitABit() { time.Sleep(10 * time.Millisecond) }

// readBz2 reads a bzip2-compressed file.
func readBz2(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(bzip2.NewReader(f))
}
