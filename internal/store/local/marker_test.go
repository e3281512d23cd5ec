package local

import (
	"bytes"
	"testing"
)

func TestParseMarkerSlot(t *testing.T) {
	good := markerRecord{seq: 7, boot: "9bef548a-f828-4a17-b419-da9ba4913ff9", synced: 1234}
	enc := good.encode()
	flip := bytes.Clone(enc)
	flip[20] ^= 1
	tests := []struct {
		name string
		slot []byte
		want markerRecord
		ok   bool
	}{
		{"encoded", enc, good, true},
		{"fresh", markerRecord{boot: markerNew}.encode(), markerRecord{boot: markerNew}, true},
		{"a bit flipped", flip, markerRecord{}, false},
		{"torn (cut short)", enc[:30], markerRecord{}, false},
		{"zeros", make([]byte, markerSlot), markerRecord{}, false},
		{"no newline", bytes.Repeat([]byte("x"), markerSlot), markerRecord{}, false},
		{"wrong magic", []byte("cairn-durable 2 7 b 1 00000000\n"), markerRecord{}, false},
		{"negative synced", markerRecord{seq: 1, boot: "b", synced: -1}.encode(), markerRecord{}, false},
		{"boot too long", markerRecord{seq: 1, boot: string(bytes.Repeat([]byte("b"), maxBootID+1))}.encode(), markerRecord{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parseMarkerSlot(tt.slot)
			if ok != tt.ok || ok && got != tt.want {
				t.Errorf("parseMarkerSlot = %+v, %v; want %+v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
	if len(enc) != markerSlot {
		t.Errorf("an encoded slot is %d bytes, want %d", len(enc), markerSlot)
	}
}

// FuzzMarkerSlot: parsing never panics, and whatever parses encodes back to
// a slot that parses the same.
func FuzzMarkerSlot(f *testing.F) {
	f.Add(markerRecord{seq: 7, boot: "9bef548a-f828-4a17-b419-da9ba4913ff9", synced: 1234}.encode())
	f.Add(markerRecord{boot: markerNew}.encode())
	f.Add([]byte("cairn-durable 1 1 b 1 00000000\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, ok := parseMarkerSlot(b)
		if !ok {
			return
		}
		again, ok := parseMarkerSlot(r.encode())
		if !ok || again != r {
			t.Fatalf("round trip of %+v: %+v, %v", r, again, ok)
		}
	})
}
