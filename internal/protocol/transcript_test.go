package protocol

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"cairn/internal/wire"
)

// transcript is one recorded connection: what the client sent, what the
// daemon answered.
type transcript struct {
	name     string
	c2d, d2c []byte
}

func loadTranscripts(t *testing.T) []transcript {
	t.Helper()
	files, err := filepath.Glob("testdata/*.c2d.bin")
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	var out []transcript
	for _, f := range files {
		if strings.HasPrefix(filepath.Base(f), "handshake-") {
			continue // built from the fact sheet; see TestHandshakeGoldens
		}
		name := strings.TrimSuffix(filepath.Base(f), ".c2d.bin")
		c2d, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		d2c, err := os.ReadFile(strings.TrimSuffix(f, ".c2d.bin") + ".d2c.bin")
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, transcript{name, c2d, d2c})
	}
	if len(out) == 0 {
		t.Fatal("no transcripts in testdata")
	}
	return out
}

// replayResult is what replaying a transcript found.
type replayResult struct {
	ops       []Op
	replies   []Reply
	errs      []*Error
	c2d, d2c  []byte // re-encoded
	daemonHdr []byte // ServerHandshake's output
	clientHdr []byte // ClientHandshake's output
}

// copyFrames copies a framed stream frame by frame (keeping the boundaries)
// and returns its payload.
func copyFrames(r *wire.Reader, w *wire.Writer) ([]byte, error) {
	var payload []byte
	for {
		n := r.Uint64()
		if r.Err() != nil {
			return nil, r.Err()
		}
		w.Uint64(n)
		if n == 0 {
			return payload, nil
		}
		if n > wire.MaxFrameSize {
			return nil, fmt.Errorf("frame %d too long", n)
		}
		buf := make([]byte, n)
		r.ReadFull(buf)
		w.Write(buf)
		payload = append(payload, buf...)
	}
}

// replay decodes a recorded connection with our codecs and re-encodes every
// part of it.
func replay(tr transcript) (*replayResult, error) {
	res := &replayResult{}
	rc := wire.NewReader(bytes.NewReader(tr.c2d))
	rd := wire.NewReader(bytes.NewReader(tr.d2c))
	var bc, bd bytes.Buffer
	wc, wd := wire.NewWriter(&bc), wire.NewWriter(&bd)

	// The daemon's side: our ServerHandshake fed the client's bytes must say
	// what nix-daemon 2.8 said.
	var hdr bytes.Buffer
	hw := wire.NewWriter(&hdr)
	ci, err := ServerHandshake(rc, hw, ServerInfo{Version: Nix28, NixVersion: "2.8.0", Trusted: Trusted})
	if err != nil {
		return nil, fmt.Errorf("server handshake: %w", err)
	}
	hw.Flush()
	res.daemonHdr = hdr.Bytes()
	// The client's side: our ClientHandshake fed the daemon's bytes must say
	// what the Nix 2.8 client said.
	var chdr bytes.Buffer
	cw := wire.NewWriter(&chdr)
	var startup []*Message
	di, err := ClientHandshake(rd, cw, ClientConfig{Version: Nix28}, func(m *Message) error {
		startup = append(startup, m)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("client handshake: %w", err)
	}
	res.clientHdr = chdr.Bytes()
	if ci.Params.Version != di.Params.Version {
		return nil, fmt.Errorf("negotiated %v and %v", ci.Params.Version, di.Params.Version)
	}
	p := ci.Params
	wc.Write(chdr.Bytes())
	wd.Write(hdr.Bytes())
	for _, m := range startup {
		WriteMessage(wd, p, m)
	}
	wd.Uint64(StderrLast)

	for {
		if b, _ := rc.Peek(8); len(b) == 8 && !Op(binary.LittleEndian.Uint64(b)).Known() {
			// An op the daemon does not know: it answers with error frames
			// and hangs up; ReadRequest must refuse it too.
			if _, err := ReadRequest(rc, p); !errors.Is(err, ErrUnknownOp) {
				return nil, fmt.Errorf("unknown op: %v", err)
			}
			wc.Write(b)
			res.ops = append(res.ops, Op(binary.LittleEndian.Uint64(b)))
			break
		}
		req, err := ReadRequest(rc, p)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("op %d: %w", len(res.ops), err)
		}
		op := req.Op()
		res.ops = append(res.ops, op)
		WriteRequest(wc, p, req)
		switch op {
		case OpAddToStore, OpAddToStoreNar, OpAddBuildLog:
			payload, err := copyFrames(rc, wc)
			if err != nil {
				return nil, fmt.Errorf("%v payload: %w", op, err)
			}
			if op == OpAddToStoreNar || (op == OpAddToStore && req.(*AddToStoreRequest).Method.Prefix() == "r:") {
				var out bytes.Buffer
				if err := CopyNAR(&out, bytes.NewReader(payload)); err != nil || out.Len() != len(payload) {
					return nil, fmt.Errorf("%v NAR: %d of %d bytes, %v", op, out.Len(), len(payload), err)
				}
			}
		case OpAddMultipleToStore:
			payload, err := copyFrames(rc, wc)
			if err != nil {
				return nil, fmt.Errorf("%v payload: %w", op, err)
			}
			if err := checkMultiple(payload); err != nil {
				return nil, err
			}
		}
		// The daemon's answer: stderr messages, then LAST and the reply, or ERROR.
		failed := false
		for {
			m, err := ReadMessage(rd, p)
			if err != nil {
				return nil, fmt.Errorf("%v: stderr: %w", op, err)
			}
			WriteMessage(wd, p, m)
			if m.Code == StderrError {
				res.errs = append(res.errs, m.Err)
				failed = true
				break
			}
			if m.Code == StderrLast {
				break
			}
		}
		if failed {
			continue
		}
		if op == OpNarFromPath {
			// Nix 2.8 sends LAST before it opens the path; if that fails, an
			// error frame comes where the NAR should be.
			// (The 2.8 daemon even gets as far as the NAR's magic string.)
			if b, _ := rd.Peek(32); len(b) == 32 && b[0] == 13 && binary.LittleEndian.Uint64(b[24:]) == StderrError {
				wd.String(rd.String(16))
			}
			if b, _ := rd.Peek(8); len(b) == 8 && b[0] != 13 {
				m, err := ReadMessage(rd, p)
				if err != nil || m.Code != StderrError {
					return nil, fmt.Errorf("%v: neither NAR nor error: %v", op, err)
				}
				WriteMessage(wd, p, m)
				res.errs = append(res.errs, m.Err)
				continue
			}
			if err := CopyNAR(wd, rd); err != nil {
				return nil, fmt.Errorf("%v: reply: %w", op, err)
			}
		} else if reply := NewReply(op, p); reply != nil {
			reply.Read(rd, p)
			if rd.Err() != nil {
				return nil, fmt.Errorf("%v: reply: %w", op, rd.Err())
			}
			reply.Write(wd, p)
			res.replies = append(res.replies, reply)
		}
	}
	// Whatever the daemon sent after the client stopped (a second error frame
	// after a failure, say).
	for {
		m, err := ReadMessage(rd, p)
		if errors.Is(err, io.ErrUnexpectedEOF) && rd.Buffered() == 0 {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("trailing: %w", err)
		}
		WriteMessage(wd, p, m)
		if m.Err != nil {
			res.errs = append(res.errs, m.Err)
		}
	}
	if err := wc.Flush(); err != nil {
		return nil, err
	}
	if err := wd.Flush(); err != nil {
		return nil, err
	}
	res.c2d, res.d2c = bc.Bytes(), bd.Bytes()
	return res, nil
}

// checkMultiple decodes an AddMultipleToStore payload and re-encodes it.
func checkMultiple(payload []byte) error {
	mr := NewMultipleReader(bytes.NewReader(payload), "")
	var out bytes.Buffer
	w := wire.NewWriter(&out)
	var infos []*PathInfo
	var nars [][]byte
	for {
		info, nr, err := mr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		b, err := io.ReadAll(nr)
		if err != nil {
			return err
		}
		infos = append(infos, info)
		nars = append(nars, b)
	}
	WriteMultipleCount(w, len(infos))
	for i, info := range infos {
		if err := AddMultiple(w, info, bytes.NewReader(nars[i])); err != nil {
			return err
		}
	}
	w.Flush()
	if !bytes.Equal(out.Bytes(), payload) {
		return fmt.Errorf("AddMultipleToStore payload re-encodes differently")
	}
	return nil
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestTranscripts(t *testing.T) {
	for _, tr := range loadTranscripts(t) {
		t.Run(tr.name, func(t *testing.T) {
			res, err := replay(tr)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(tr.d2c, res.daemonHdr) {
				t.Errorf("ServerHandshake wrote %x, nix-daemon %x", res.daemonHdr, tr.d2c[:min(len(tr.d2c), len(res.daemonHdr))])
			}
			if !bytes.HasPrefix(tr.c2d, res.clientHdr) {
				t.Errorf("ClientHandshake wrote %x, nix client %x", res.clientHdr, tr.c2d[:min(len(tr.c2d), len(res.clientHdr))])
			}
			if !bytes.Equal(res.c2d, tr.c2d) {
				i := firstDiff(res.c2d, tr.c2d)
				t.Errorf("client stream re-encodes differently at %d of %d (ops %v)", i, len(tr.c2d), res.ops)
			}
			if !bytes.Equal(res.d2c, tr.d2c) {
				i := firstDiff(res.d2c, tr.d2c)
				t.Errorf("daemon stream re-encodes differently at %d of %d/%d (ops %v)\n got %q\nwant %q", i, len(res.d2c), len(tr.d2c), res.ops,
					res.d2c[i:min(i+64, len(res.d2c))], tr.d2c[i:min(i+64, len(tr.d2c))])
			}
			t.Logf("ops %v, errors %d", res.ops, len(res.errs))
		})
	}
}
