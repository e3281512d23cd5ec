package daemon

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/storepath"
	"cairn/internal/wire"
)

// The golden transcripts recorded from nix-daemon 2.8 (package protocol's
// testdata) are replayed against our daemon: each recorded request goes to our
// daemon, and our answer is decoded with the protocol codecs and compared, value
// by value, with what nix-daemon answered. Allowed to differ: registration
// times, the daemon's version string, log messages and activities, build
// results' realisation ids, temp roots' names, and the error texts.
const goldenDir = "../protocol/testdata"

// golden steps in recording order (steps.txt), with the number of connections.
func goldenSteps(t *testing.T) []struct {
	name string
	n    int
} {
	f, err := os.Open(filepath.Join(goldenDir, "steps.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var steps []struct {
		name string
		n    int
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.SplitN(sc.Text(), "\t", 3)
		var n int
		fmt.Sscan(fields[1], &n)
		steps = append(steps, struct {
			name string
			n    int
		}{fields[0], n})
	}
	return steps
}

// unsupported lists the ops whose golden answer we cannot give (building,
// garbage collection): the replay of that connection expects our error there
// and stops.
var unsupported = map[string]protocol.Op{
	"build.0":      protocol.OpBuildPaths,
	"build-fail.0": protocol.OpBuildPaths,
}

// collections lists the CollectGarbage steps whose answer depends on which
// connections still hold temporary roots: the replay keeps earlier
// connections (and their roots) open where the recording had closed them. The
// replay checks that the op is answered in step and stops there; TestNixGC
// and package gc's tests compare collections with Nix's.
var collections = map[string]protocol.Op{
	"gc-print-dead.0": protocol.OpCollectGarbage,
	"delete.0":        protocol.OpCollectGarbage,
}

// answer is one op's answer: an error, or a reply (or a NAR).
type answer struct {
	err   *protocol.Error
	reply protocol.Reply
	nar   []byte
}

// readAnswer reads one op's answer from r.
func readAnswer(r *wire.Reader, p protocol.Params, op protocol.Op, golden bool) (answer, error) {
	err := protocol.ProcessStderr(r, p, func(*protocol.Message) error { return nil })
	var pe *protocol.Error
	if errors.As(err, &pe) {
		return answer{err: pe}, nil
	}
	if err != nil {
		return answer{}, err
	}
	if op == protocol.OpNarFromPath {
		// nix-daemon 2.8 sends LAST before opening the path; for an invalid
		// one an error frame follows the NAR's magic string.
		if golden {
			if b, _ := r.Peek(32); len(b) == 32 && b[0] == 13 && binary.LittleEndian.Uint64(b[24:]) == protocol.StderrError {
				r.String(16)
				m, err := protocol.ReadMessage(r, p)
				if err != nil {
					return answer{}, err
				}
				return answer{err: m.Err}, nil
			}
		}
		var b bytes.Buffer
		if err := protocol.CopyNAR(&b, r); err != nil {
			return answer{}, err
		}
		return answer{nar: b.Bytes()}, nil
	}
	reply := protocol.NewReply(op, p)
	if reply != nil {
		reply.Read(r, p)
	}
	return answer{reply: reply}, r.Err()
}

// normalise clears what may legitimately differ in a reply.
func normalise(r protocol.Reply, tmpFrom, tmpTo string) protocol.Reply {
	switch x := r.(type) {
	case *protocol.QueryPathInfoReply:
		if x.Info != nil {
			x.Info.RegistrationTime = time.Time{}
		}
	case *protocol.PathInfoReply:
		x.Info.RegistrationTime = time.Time{}
	case *protocol.BuildResultReply:
		b := x.Result
		b.StartTime, b.StopTime = time.Time{}, time.Time{}
		for k, o := range b.BuiltOutputs {
			b.BuiltOutputs[k] = protocol.BuiltOutput{OutPath: o.OutPath}
		}
	case *protocol.KeyedBuildResultsReply:
		for i := range x.Results {
			b := &x.Results[i].BuildResult
			b.StartTime, b.StopTime = time.Time{}, time.Time{}
			for k, o := range b.BuiltOutputs {
				b.BuiltOutputs[k] = protocol.BuiltOutput{OutPath: o.OutPath}
			}
		}
	case *protocol.RootsReply:
		var links []string
		var targets []storepath.StorePath
		for i, l := range x.Links {
			if strings.HasPrefix(l, "{temp:") {
				continue // temp roots of connections that differ
			}
			links = append(links, strings.Replace(l, tmpTo, tmpFrom, 1))
			targets = append(targets, x.Targets[i])
		}
		x.Links, x.Targets = links, targets
	}
	return r
}

func TestGoldenTranscripts(t *testing.T) {
	td := newTestDaemon(t, [2]string{"require-sigs", "true"})
	var tmpFrom string // the recorder's temp dir, as it appears in requests
	for _, step := range goldenSteps(t) {
		for i := range step.n {
			name := fmt.Sprintf("%s.%d", step.name, i)
			t.Run(name, func(t *testing.T) {
				c2d, err := os.ReadFile(filepath.Join(goldenDir, name+".c2d.bin"))
				if err != nil {
					t.Fatal(err)
				}
				d2c, err := os.ReadFile(filepath.Join(goldenDir, name+".d2c.bin"))
				if err != nil {
					t.Fatal(err)
				}
				tmpFrom = replayGolden(t, td, name, c2d, d2c, tmpFrom)
			})
		}
		if step.name == "build" {
			td.registerBuilt(t)
		}
	}
}

// registerBuilt makes valid what the golden `build` step built, so later
// steps find the store as nix-daemon had it.
func (td *testDaemon) registerBuilt(t *testing.T) {
	data := fileNAR(t, "out\n")
	drv, _ := storepath.Parse("/nix/store/cnmzcvcnrx91qy8ip72ld7mcibxzp5jf-hello.drv")
	out, _ := storepath.Parse("/nix/store/y4rfwymqjf9qz65h5c3wyzb3m4a83xy9-hello")
	info := narInfo(t, "hello", data)
	info.Path, info.Deriver, info.Ultimate = out, drv, true
	if err := td.st.AddNar(t.Context(), (*store.PathInfo)(info), bytes.NewReader(data), store.AddNarOptions{}); err != nil {
		t.Fatal(err)
	}
}

func replayGolden(t *testing.T, td *testDaemon, name string, c2d, d2c []byte, tmpFrom string) string {
	rc := wire.NewReader(bytes.NewReader(c2d))
	rd := wire.NewReader(bytes.NewReader(d2c))
	// The golden side: what nix-daemon said in the handshake.
	gdi, err := protocol.ClientHandshake(rd, wire.NewWriter(io.Discard), protocol.ClientConfig{Version: protocol.Nix28}, nil)
	if err != nil {
		t.Fatalf("golden handshake: %v", err)
	}
	// Skip the client's handshake bytes: magic, version, cpu, reserve.
	rc.Uint64()
	rc.Uint64()
	rc.Uint64()
	rc.Uint64()
	cl := td.mustDial(protocol.ClientConfig{Version: protocol.Nix28})
	if !reflect.DeepEqual(cl.p, gdi.Params) {
		t.Fatalf("negotiated %+v, nix-daemon %+v", cl.p, gdi.Params)
	}
	p := cl.p
	tmpTo := td.dir
	for n := 0; ; n++ {
		b, _ := rc.Peek(8)
		if len(b) < 8 {
			return tmpFrom
		}
		op := protocol.Op(binary.LittleEndian.Uint64(b))
		if !op.Known() {
			// Unknown op: nix-daemon answered two errors and hung up.
			cl.w.Write(b)
			_, err := cl.finish(op)
			var pe *protocol.Error
			if !errors.As(err, &pe) || !strings.Contains(pe.Message, "invalid operation") {
				t.Fatalf("op %d: got %v, want invalid operation", op, err)
			}
			if _, err := protocol.ReadMessage(cl.r, p); err != nil {
				t.Fatalf("second error frame: %v", err)
			}
			if _, err := protocol.ReadMessage(cl.r, p); err == nil {
				t.Fatal("connection still open after an unknown op")
			}
			return tmpFrom
		}
		req, err := protocol.ReadRequest(rc, p)
		if err != nil {
			t.Fatalf("golden request %d: %v", n, err)
		}
		// Paths under the recorder's temp dir become paths under ours.
		if q, ok := req.(*protocol.AddIndirectRootRequest); ok {
			tmpFrom = strings.TrimSuffix(q.Path, "/home/root")
			q.Path = tmpTo + "/home/root"
			os.MkdirAll(tmpTo+"/home", 0o755)
			os.Symlink("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt", q.Path)
		}
		protocol.WriteRequest(cl.w, p, req)
		switch op {
		case protocol.OpAddToStore, protocol.OpAddToStoreNar, protocol.OpAddBuildLog, protocol.OpAddMultipleToStore:
			fr := wire.NewFramedReader(rc)
			fw := wire.NewFramedWriter(cl.w)
			if _, err := io.Copy(fw, fr); err != nil {
				t.Fatal(err)
			}
			fw.Close()
		}
		want, err := readAnswer(rd, p, op, true)
		if err != nil {
			t.Fatalf("golden answer to %v: %v", op, err)
		}
		if err := cl.w.Flush(); err != nil {
			t.Fatal(err)
		}
		got, err := readAnswer(cl.r, p, op, false)
		if err != nil {
			t.Fatalf("our answer to %v: %v", op, err)
		}
		if cop, ok := collections[name]; ok && cop == op {
			t.Logf("%v: answered (error %v), nix-daemon answered (error %v)", op, got.err != nil, want.err != nil)
			return tmpFrom
		}
		if uop, ok := unsupported[name]; ok && uop == op {
			if got.err == nil {
				t.Fatalf("%v: no error from an unsupported op", op)
			}
			t.Logf("%v: %s (nix-daemon: error %v)", op, got.err.Message, want.err != nil)
			return tmpFrom
		}
		if (got.err != nil) != (want.err != nil) {
			t.Fatalf("%v: error %v, nix-daemon %v", op, got.err, want.err)
		}
		if got.err != nil {
			t.Logf("%v: error %q (nix-daemon %q)", op, got.err.Message, want.err.Message)
			continue
		}
		if !bytes.Equal(got.nar, want.nar) {
			t.Errorf("%v: NAR of %d bytes, nix-daemon %d", op, len(got.nar), len(want.nar))
		}
		if got.reply != nil {
			g, w := normalise(got.reply, tmpFrom, tmpTo), normalise(want.reply, tmpFrom, tmpTo)
			if !reflect.DeepEqual(g, w) {
				t.Errorf("%v reply:\n got %s\nwant %s", op, show(g), show(w))
			}
		}
	}
}

func show(r protocol.Reply) string {
	if x, ok := r.(*protocol.BuildResultReply); ok {
		return fmt.Sprintf("%+v", *x.Result)
	}
	return fmt.Sprintf("%+v", r)
}
