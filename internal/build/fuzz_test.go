package build

import (
	"strings"
	"testing"

	"cairn/internal/derivation"
)

// FuzzLineWriter: any builder output splits into bounded lines, keeps at
// most max tail lines, and never panics.
func FuzzLineWriter(f *testing.F) {
	for _, s := range []string{"", "a\nb\n", "abc\rx\n", "@nix {\"action\":\"setPhase\",\"phase\":\"build\"}\n", "@nix {bad\n", strings.Repeat("x", MaxLogLine+5)} {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		n := 0
		w := newLineWriter(3, func(line string, msg bool) {
			n++
			if len(line) > MaxLogLine {
				t.Fatalf("line of %d bytes", len(line))
			}
			if msg && !strings.HasPrefix(line, "@nix ") {
				t.Fatalf("message %q", line)
			}
		})
		step := int(chunk)%17 + 1
		for len(data) > 0 {
			k := min(step, len(data))
			w.Write(data[:k])
			data = data[k:]
		}
		w.Flush()
		if len(w.Tail()) > 3 || len(w.Tail()) > n {
			t.Fatalf("tail %d lines of %d", len(w.Tail()), n)
		}
	})
}

// FuzzStructuredAttrs: any __json either fails cleanly or gives both files.
func FuzzStructuredAttrs(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":1,"b":[1,"x",null,true],"c":{"d":"e"},"f":1.5}`, `[]`, `{"outputs":1}`, `{"x":1e400}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, js string) {
		d := &derivation.Derivation{Name: "f", Outputs: map[string]derivation.Output{"out": derivation.DeferredOutput()}, Env: map[string]string{"__json": js}}
		e, err := MakeEnv(d, EnvParams{StoreDir: "/nix/store", BuildTop: "/build"})
		if err != nil {
			return
		}
		if _, ok := e.Files[".attrs.json"]; !ok {
			t.Fatal("no .attrs.json")
		}
		if _, ok := e.Files[".attrs.sh"]; !ok {
			t.Fatal("no .attrs.sh")
		}
	})
}

// FuzzPreBuildHook: pre-build-hook's output either is refused or gives one
// bind per path line of its blocks, the text after the last newline ignored.
func FuzzPreBuildHook(f *testing.F) {
	for _, s := range []string{"", "extra-sandbox-paths\n/a\n/b=/c\n\nextra-chroot-dirs\n/d\n", "bogus\n", "extra-sandbox-paths\n/a", "\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, out string) {
		binds, err := parsePreBuildHook(out)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "unknown pre-build hook command '") {
				t.Fatalf("error %v", err)
			}
			return
		}
		if len(binds) > strings.Count(out, "\n") {
			t.Fatalf("%d binds from %d lines", len(binds), strings.Count(out, "\n"))
		}
		for _, b := range binds {
			if b.Target == "" && b.Source == "" {
				t.Fatalf("an empty bind from %q", out)
			}
		}
	})
}
