package sandbox

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"syscall"
	"testing"
)

func TestReports(t *testing.T) {
	tests := []struct {
		name  string
		in    []byte
		execd bool
		err   string
	}{
		{"exec", []byte{msgExec}, true, ""},
		{"nothing", nil, false, ""},
		{"error", encodeReport(&SetupError{Step: "mount /proc", Err: syscall.EPERM}), false, "sandbox: mount /proc: operation not permitted"},
		{"exec then error", append([]byte{msgExec}, encodeReport(&SetupError{Step: "exec /x", Err: syscall.ENOENT})...), true, "sandbox: exec /x: no such file or directory"},
		{"plain error", encodeReport(errors.New("sandbox: spec: bad")), false, "sandbox: init: sandbox: spec: bad"},
		{"junk", []byte{'?'}, false, "sandbox: read from init: unexpected byte 0x3f"},
		{"huge", []byte{msgError, 0xff, 0xff, 0xff, 0xff}, false, "sandbox: read from init: report of 4294967295 bytes"},
		{"truncated", []byte{msgError, 0, 0, 0, 9, '{'}, false, "sandbox: read from init: unexpected EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			execd, err := readReports(bytes.NewReader(tt.in))
			got := ""
			if err != nil {
				got = err.Error()
			}
			if execd != tt.execd || got != tt.err {
				t.Errorf("readReports = %v, %q; want %v, %q", execd, got, tt.execd, tt.err)
			}
		})
	}
	_, err := readReports(bytes.NewReader(encodeReport(&SetupError{Step: "bind /x", Err: syscall.ENOENT})))
	if !errors.Is(err, syscall.ENOENT) {
		t.Errorf("errno lost on the way: %v", err)
	}
}

func FuzzReports(f *testing.F) {
	f.Add([]byte{msgExec})
	f.Add(encodeReport(&SetupError{Step: "mount /proc", Err: syscall.EPERM}))
	f.Fuzz(func(t *testing.T, data []byte) {
		readReports(bytes.NewReader(data)) // must not panic or allocate beyond MaxMessageLen
	})
}

// FuzzSpec: whatever decodes and validates encodes back to the same Spec.
func FuzzSpec(f *testing.F) {
	f.Add([]byte(`{"root":"/r","uid":1000,"gid":100,"uid_map":[{"inside":1000,"outside":5,"count":1}],` +
		`"gid_map":[{"inside":100,"outside":5,"count":1}],"command":{"path":"/bin/sh","args":["sh"]},` +
		`"binds":[{"source":"/nix/store","target":"/nix/store"}],"files":[{"path":"/etc/hosts","content":"MTI3"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var s Spec
		if json.Unmarshal(data, &s) != nil || s.Validate() != nil {
			return
		}
		again, err := json.Marshal(&s)
		if err != nil {
			t.Fatal(err)
		}
		var s2 Spec
		if err := json.Unmarshal(again, &s2); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(normal(&s), normal(&s2)) {
			t.Fatalf("round trip:\n%+v\n%+v", s, s2)
		}
	})
}

// normal makes empty and nil slices alike.
func normal(s *Spec) *Spec {
	c := *s
	for _, f := range c.Files {
		if len(f.Content) == 0 {
			f.Content = nil
		}
	}
	data, _ := json.Marshal(&c)
	var out Spec
	json.Unmarshal(data, &out)
	return &out
}
