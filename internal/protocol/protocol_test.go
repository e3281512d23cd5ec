package protocol

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"cairn/internal/storepath"
	"cairn/internal/wire"
)

func mustPath(t testing.TB, s string) storepath.StorePath {
	t.Helper()
	p, err := storepath.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

const drvStr = "/nix/store/cnmzcvcnrx91qy8ip72ld7mcibxzp5jf-hello.drv"
const outStr = "/nix/store/y4rfwymqjf9qz65h5c3wyzb3m4a83xy9-hello"

func TestDerivedPath(t *testing.T) {
	old, new := Params{Version: 0x11d}, Params{Version: 0x11e}
	tests := []struct {
		s    string
		p    Params
		want DerivedPath
	}{
		{outStr, new, DerivedPath{Path: mustPath(t, outStr)}},
		{drvStr + "!*", new, DerivedPath{Path: mustPath(t, drvStr), Built: true, All: true}},
		{drvStr + "!out", new, DerivedPath{Path: mustPath(t, drvStr), Built: true, Outputs: []string{"out"}}},
		{drvStr + "!dev,out", old, DerivedPath{Path: mustPath(t, drvStr), Built: true, Outputs: []string{"dev", "out"}}},
		{drvStr, old, DerivedPath{Path: mustPath(t, drvStr), Built: true, All: true}},
		{drvStr, new, DerivedPath{Path: mustPath(t, drvStr)}},
	}
	for _, tt := range tests {
		t.Run(tt.s+"@"+tt.p.Version.String(), func(t *testing.T) {
			got, err := ParseDerivedPath("", tt.p, tt.s)
			if err != nil {
				t.Fatal(err)
			}
			if got.Path != tt.want.Path || got.Built != tt.want.Built || got.All != tt.want.All || !slices.Equal(got.Outputs, tt.want.Outputs) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			if f := got.Format(tt.p); f != tt.s {
				t.Errorf("Format = %q", f)
			}
		})
	}
	for _, bad := range []string{"", "foo", drvStr + "!", drvStr + "!a!b", drvStr + "!o/ut", "/nix/store/x!out"} {
		if _, err := ParseDerivedPath("", new, bad); err == nil {
			t.Errorf("ParseDerivedPath(%q) accepted", bad)
		}
	}
}

func TestRealisationJSON(t *testing.T) {
	// As nix-daemon 2.8 sent it in testdata/own-build.0.d2c.bin.
	js := `{"dependentRealisations":{},"id":"sha256:69b4c76e99eed39bf10122fd5e0ac01ce76078da4b861448f6fe171645c637f2!out","outPath":"y4rfwymqjf9qz65h5c3wyzb3m4a83xy9-hello","signatures":[]}`
	rl, err := ParseRealisationJSON("", []byte(js))
	if err != nil {
		t.Fatal(err)
	}
	if rl.OutPath.String() != outStr {
		t.Errorf("OutPath = %v", rl.OutPath)
	}
	if got := string(rl.JSON()); got != js {
		t.Errorf("JSON =\n %s\nwant\n %s", got, js)
	}
	if !bytes.Contains(mustRead(t, "testdata/own-build.0.d2c.bin"), []byte(js)) {
		t.Error("golden JSON not in the recording")
	}
}

func mustRead(t *testing.T, name string) []byte {
	t.Helper()
	b, err := readFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBuiltOutputsGenerated re-encodes the recorded BuildPathsWithResults reply
// with the JSON generated rather than kept.
func TestBuiltOutputsGenerated(t *testing.T) {
	var trs []transcript
	for _, tr := range loadTranscripts(t) {
		if tr.name == "own-build.0" {
			trs = append(trs, tr)
		}
	}
	res, err := replay(trs[0])
	if err != nil {
		t.Fatal(err)
	}
	var reply *KeyedBuildResultsReply
	for _, x := range res.replies {
		if k, ok := x.(*KeyedBuildResultsReply); ok {
			reply = k
		}
	}
	p := Params{Version: Nix28}
	if reply == nil || len(reply.Results) != 2 || reply.Results[1].BuiltOutputs["out"].OutPath.String() != outStr {
		t.Fatalf("results %+v", reply)
	}
	var a, b bytes.Buffer
	wa := wire.NewWriter(&a)
	reply.Write(wa, p)
	wa.Flush()
	for k := range reply.Results {
		for name, o := range reply.Results[k].BuiltOutputs {
			o.JSON = ""
			reply.Results[k].BuiltOutputs[name] = o
		}
	}
	wb := wire.NewWriter(&b)
	reply.Write(wb, p)
	wb.Flush()
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Errorf("generated JSON differs from nix-daemon's")
	}
}

func TestLoggerDowngrade(t *testing.T) {
	act := Activity{ID: 7, Level: LvlInfo, Type: ActBuild, Text: "building foo", Fields: []Field{StringField(drvStr), StringField(""), IntField(1), IntField(1)}}
	run := func(p Params) []*Message {
		var buf bytes.Buffer
		w := wire.NewWriter(&buf)
		l := NewLogger(w, p)
		l.StartActivity(act)
		l.Result(7, ResBuildLogLine, []Field{StringField("hello")})
		l.Result(7, ResProgress, []Field{IntField(1), IntField(2), IntField(0), IntField(0)})
		l.StopActivity(7)
		l.Error(&Error{Message: "boom", Status: 100})
		r := wire.NewReader(&buf)
		var msgs []*Message
		for {
			m, err := ReadMessage(r, p)
			if err != nil {
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatal(err)
				}
				return msgs
			}
			msgs = append(msgs, m)
		}
	}
	codes := func(ms []*Message) (cs []uint64) {
		for _, m := range ms {
			cs = append(cs, m.Code)
		}
		return cs
	}
	newer := run(Params{Version: Nix28})
	if want := []uint64{StderrStartActivity, StderrResult, StderrResult, StderrStopActivity, StderrError}; !slices.Equal(codes(newer), want) {
		t.Errorf("1.34: %x, want %x", codes(newer), want)
	}
	if e := newer[4].Err; e.Message != "boom" || e.Status != 0 {
		t.Errorf("1.34 error %+v", e)
	}
	for _, p := range []Params{{Version: 0x113}, {Version: 0x126, Guix: true}} {
		old := run(p)
		if want := []uint64{StderrNext, StderrNext, StderrError}; !slices.Equal(codes(old), want) {
			t.Fatalf("%v: %x, want %x", p, codes(old), want)
		}
		if old[0].Text != "building foo\n" || old[1].Text != "hello\n" || old[2].Err.Status != 100 {
			t.Errorf("%v: %q %q %+v", p, old[0].Text, old[1].Text, old[2].Err)
		}
	}
}

func TestSetOptionsGuix(t *testing.T) {
	o := ClientOptions{KeepGoing: true, Verbosity: LvlInfo, MaxBuildJobs: 4, BuildCores: 2, UseSubstitutes: true,
		Overrides: map[string]string{"build-timeout": "10"}}
	for _, tt := range []struct {
		p      Params
		fields int
	}{{Params{Version: Nix28}, 12}, {Params{Version: 0x126, Guix: true}, 12}, {Params{Version: 0x163, Guix: true}, 9}} {
		var buf bytes.Buffer
		w := wire.NewWriter(&buf)
		o.Write(w, tt.p)
		w.Flush()
		if want := tt.fields*8 + 8 + (8 + 16) + (8 + 8); buf.Len() != want {
			t.Errorf("%+v: %d bytes, want %d", tt.p, buf.Len(), want)
		}
		var got ClientOptions
		r := wire.NewReader(&buf)
		got.Read(r, tt.p)
		if r.Err() != nil || got.Overrides["build-timeout"] != "10" || got.KeepGoing != true {
			t.Errorf("%+v: read back %+v %v", tt.p, got, r.Err())
		}
	}
}

// TestTruncatedOps cuts every recorded client stream at every offset after the
// handshake: decoding must fail with an error (never panic) unless the cut
// falls between two ops.
func TestTruncatedOps(t *testing.T) {
	for _, tr := range loadTranscripts(t) {
		if strings.HasPrefix(tr.name, "handshake-") || len(tr.c2d) > 4096 {
			continue
		}
		for i := range len(tr.c2d) {
			r := wire.NewReader(bytes.NewReader(tr.c2d[:i]))
			var out bytes.Buffer
			ci, err := ServerHandshake(r, wire.NewWriter(&out), ServerInfo{Version: Nix28})
			if err != nil {
				continue
			}
			for {
				req, err := ReadRequest(r, ci.Params)
				if err != nil {
					break
				}
				switch req.Op() {
				case OpAddToStore, OpAddToStoreNar, OpAddMultipleToStore, OpAddBuildLog:
					if err := wire.NewFramedReader(r).Drain(); err != nil {
						break
					}
				}
			}
		}
	}
}

// TestBadRequests feeds ops with lengths past every limit and unknown codes.
func TestBadRequests(t *testing.T) {
	p := Params{Version: Nix28}
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"unknown op", le(99), ErrUnknownOp},
		{"guix op from nix", le(uint64(OpBuiltinBuilders)), ErrUnknownOp},
		{"huge op", le(1 << 63), ErrUnknownOp},
		{"path too long", join(le(uint64(OpIsValidPath)), le(wire.MaxPathLen+1)), wire.ErrTooLong},
		{"bad path", join(le(uint64(OpIsValidPath)), wstr("/etc/passwd")), storepath.ErrInvalid},
		{"too many paths", join(le(uint64(OpQueryValidPaths)), le(wire.MaxListCount+1)), wire.ErrTooLong},
		{"text too long", join(le(uint64(OpAddTextToStore)), wstr("x"), le(wire.MaxTextLen+1)), wire.ErrTooLong},
		{"bad ca method", join(le(uint64(OpAddToStore)), wstr("x"), wstr("fixed:r:sha257")), nil},
		{"bad build mode", join(le(uint64(OpBuildPaths)), wstrs(outStr), le(3)), wire.ErrTooLong},
		{"bad gc action", join(le(uint64(OpCollectGarbage)), le(4)), wire.ErrTooLong},
		{"bad nar hash", join(le(uint64(OpAddToStoreNar)), wstr(outStr), wstr(""), wstr("xyz")), nil},
		{"bad derived path", join(le(uint64(OpQueryMissing)), wstrs(outStr+"!a!b")), ErrProtocol},
		{"padding", join(le(uint64(OpQueryPathFromHashPart)), le(1), []byte{'a', 0, 0, 0, 0, 0, 0, 1}), wire.ErrPadding},
		{"not a drv", join(le(uint64(OpBuildDerivation)), wstr(outStr)), ErrProtocol},
		{"bad build log name", join(le(uint64(OpAddBuildLog)), wstr("../../etc")), nil},
		{"truncated", join(le(uint64(OpAddSignatures)), wstr(outStr), le(2), wstr("a")), io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadRequest(wire.NewReader(bytes.NewReader(tt.in)), p)
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
	// Messages and replies too.
	for _, in := range [][]byte{le(0x12345), join(le(StderrResult, 1, 101), le(MaxFields+1)),
		join(le(StderrError), wstr("Error"), le(0), wstr("Error"), wstr("m"), le(1)),
		join(le(StderrError), wstr("Nope"))} {
		if _, err := ReadMessage(wire.NewReader(bytes.NewReader(in)), p); err == nil {
			t.Errorf("ReadMessage(%x) accepted", in)
		}
	}
}

func FuzzRequest(f *testing.F) {
	for _, g := range handshakeGoldens {
		f.Add(g.c2d)
	}
	files, _ := globFiles("testdata/*.c2d.bin")
	for _, name := range files {
		if b, err := readFile(name); err == nil && len(b) < 1<<16 {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := wire.NewReader(bytes.NewReader(data))
		var out bytes.Buffer
		ci, err := ServerHandshake(r, wire.NewWriter(&out), goldenServer)
		if err != nil {
			return
		}
		for range 64 {
			req, err := ReadRequest(r, ci.Params)
			if err != nil {
				return
			}
			// A request that decoded re-encodes and decodes to the same bytes.
			var a bytes.Buffer
			w := wire.NewWriter(&a)
			WriteRequest(w, ci.Params, req)
			w.Flush()
			req2, err := ReadRequest(wire.NewReader(bytes.NewReader(a.Bytes())), ci.Params)
			if err != nil {
				t.Fatalf("%v: re-read: %v", req.Op(), err)
			}
			var b bytes.Buffer
			w = wire.NewWriter(&b)
			WriteRequest(w, ci.Params, req2)
			w.Flush()
			if !bytes.Equal(a.Bytes(), b.Bytes()) {
				t.Fatalf("%v: not stable", req.Op())
			}
			switch req.Op() {
			case OpAddToStore, OpAddToStoreNar, OpAddMultipleToStore, OpAddBuildLog:
				if wire.NewFramedReader(r).Drain() != nil {
					return
				}
			}
		}
	})
}

func FuzzStderr(f *testing.F) {
	files, _ := globFiles("testdata/*.d2c.bin")
	for _, name := range files {
		if b, err := readFile(name); err == nil && len(b) > 48 && len(b) < 1<<16 {
			f.Add(b[48:])
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p := Params{Version: Nix28}
		r := wire.NewReader(bytes.NewReader(data))
		for range 64 {
			m, err := ReadMessage(r, p)
			if err != nil {
				return
			}
			var a bytes.Buffer
			w := wire.NewWriter(&a)
			WriteMessage(w, p, m)
			w.Flush()
			m2, err := ReadMessage(wire.NewReader(bytes.NewReader(a.Bytes())), p)
			if err != nil || m2.Code != m.Code {
				t.Fatalf("re-read %x: %v", m.Code, err)
			}
		}
	})
}
