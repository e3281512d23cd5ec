package protocol

import (
	"bytes"
	"encoding/binary"
	"flag"
	"os"
	"slices"
	"testing"

	"cairn/internal/wire"
)

var update = flag.Bool("update", false, "rewrite the handshake golden files")

// Byte builders written from the fact sheet, independent of package wire.
func le(vs ...uint64) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint64(b, v)
	}
	return b
}

func wstr(s string) []byte {
	b := append(le(uint64(len(s))), s...)
	for len(b)%8 != 0 {
		b = append(b, 0)
	}
	return b
}

func wstrs(ss ...string) []byte {
	b := le(uint64(len(ss)))
	for _, s := range ss {
		b = append(b, wstr(s)...)
	}
	return b
}

func join(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// Our daemon in these goldens: 1.38 with the newest features, "2.8.0", trusted.
var goldenServer = ServerInfo{Version: Latest, Features: LatestFeatures, NixVersion: "2.8.0", Trusted: Trusted}

var handshakeGoldens = []struct {
	name     string
	client   ClientConfig // for ClientHandshake; zero Version: server side only
	c2d, d2c []byte
	want     Params
}{
	{
		// Nix 2.3: 1.21, sent after reading ours; cpu affinity 0, reserveSpace 0;
		// below 1.33 no version string, below 1.35 no trusted flag.
		name:   "nix-2.3",
		client: ClientConfig{Version: Nix23},
		c2d:    le(WorkerMagic1, 0x115, 0, 0),
		d2c:    join(le(WorkerMagic2, 0x126), le(StderrLast)),
		want:   Params{Version: 0x115},
	},
	{
		// Lix: the magic alone, then after reading ours 1.35, 0, 0 in one packet
		// (lix/libstore/remote-store.cc); reads the version string and trusted
		// flag unconditionally.
		name:   "lix",
		client: ClientConfig{Version: LixVersion},
		c2d:    le(WorkerMagic1, 0x123, 0, 0),
		d2c:    join(le(WorkerMagic2, 0x126), wstr("2.8.0"), le(1, StderrLast)),
		want:   Params{Version: 0x123},
	},
	{
		// Nix 2.35: 1.38 early, then its feature set (sorted); we answer ours.
		name:   "nix-2.35",
		client: ClientConfig{Version: Latest, Features: LatestClientFeatures, Early: true},
		c2d: join(le(WorkerMagic1, 0x126),
			wstrs("add-to-store-scanning", "delete-dead-specific-referrers", "disable-set-options",
				"realisation-with-path-not-hash", "submit-output"),
			le(0, 0)),
		d2c: join(le(WorkerMagic2, 0x126), wstrs("delete-dead-specific-referrers", "realisation-with-path-not-hash"),
			wstr("2.8.0"), le(1, StderrLast)),
		want: Params{Version: 0x126, Features: []string{"delete-dead-specific-referrers", "realisation-with-path-not-hash"}},
	},
	{
		// Guix: 0x163, cpu affinity 0, reserveSpace 1 (guix/store.scm's default);
		// no version string, no trusted flag.
		name: "guix",
		c2d:  le(WorkerMagic1, 0x163, 0, 1),
		d2c:  join(le(WorkerMagic2, 0x126), le(StderrLast)),
		want: Params{Version: 0x126, Guix: true},
	},
}

func TestHandshakeGoldens(t *testing.T) {
	for _, g := range handshakeGoldens {
		t.Run(g.name, func(t *testing.T) {
			base := "testdata/handshake-" + g.name
			if *update {
				os.WriteFile(base+".c2d.bin", g.c2d, 0o644)
				os.WriteFile(base+".d2c.bin", g.d2c, 0o644)
			}
			c2d, err := os.ReadFile(base + ".c2d.bin")
			if err != nil {
				t.Fatal(err)
			}
			d2c, err := os.ReadFile(base + ".d2c.bin")
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(c2d, g.c2d) || !bytes.Equal(d2c, g.d2c) {
				t.Fatal("golden files differ from the fact sheet's bytes (run with -update)")
			}

			// Server side.
			var out bytes.Buffer
			w := wire.NewWriter(&out)
			r := wire.NewReader(bytes.NewReader(c2d))
			ci, err := ServerHandshake(r, w, goldenServer)
			if err != nil {
				t.Fatal(err)
			}
			NewLogger(w, ci.Params).Last()
			if !bytes.Equal(out.Bytes(), d2c) {
				t.Errorf("server wrote\n %x\nwant\n %x", out.Bytes(), d2c)
			}
			if ci.Version != g.want.Version || ci.Guix != g.want.Guix || !slices.Equal(ci.Features, g.want.Features) {
				t.Errorf("server params %+v, want %+v", ci.Params, g.want)
			}
			if r.Buffered() != 0 {
				t.Errorf("server left %d bytes unread", r.Buffered())
			}

			// Client side.
			if g.client.Version == 0 {
				return
			}
			out.Reset()
			di, err := ClientHandshake(wire.NewReader(bytes.NewReader(d2c)), wire.NewWriter(&out), g.client, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.Bytes(), c2d) {
				t.Errorf("client wrote\n %x\nwant\n %x", out.Bytes(), c2d)
			}
			if di.Version != g.want.Version || !slices.Equal(di.Features, g.want.Features) {
				t.Errorf("client params %+v, want %+v", di.Params, g.want)
			}
		})
	}
}

func TestHandshakeRefused(t *testing.T) {
	tests := []struct {
		name string
		c2d  []byte
	}{
		{"bad magic", le(0x12345678, 0x122)},
		{"too old", le(WorkerMagic1, 0x109)},
		{"major 2", le(WorkerMagic1, 0x222)},
		{"huge", le(WorkerMagic1, 1<<40|0x122)},
		{"too many features", join(le(WorkerMagic1, 0x126), le(wire.MaxListCount+1))},
		{"empty", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			if _, err := ServerHandshake(wire.NewReader(bytes.NewReader(tt.c2d)), wire.NewWriter(&out), goldenServer); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	// A full golden cut at every offset fails cleanly on both sides.
	for _, g := range handshakeGoldens {
		for i := range len(g.c2d) {
			var out bytes.Buffer
			if _, err := ServerHandshake(wire.NewReader(bytes.NewReader(g.c2d[:i])), wire.NewWriter(&out), goldenServer); err == nil {
				t.Fatalf("%s: server accepted c2d cut at %d", g.name, i)
			}
		}
		if g.client.Version == 0 {
			continue
		}
		for i := range len(g.d2c) {
			var out bytes.Buffer
			if _, err := ClientHandshake(wire.NewReader(bytes.NewReader(g.d2c[:i])), wire.NewWriter(&out), g.client, nil); err == nil {
				t.Fatalf("%s: client accepted d2c cut at %d", g.name, i)
			}
		}
	}
}
