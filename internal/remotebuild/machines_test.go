package remotebuild

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

const thisSystem = "x86_64-linux"

// def is a machine with Nix's defaults for uri (already with its scheme).
func def(uri string) *Machine {
	return &Machine{StoreURI: uri, Systems: []string{thisSystem}, MaxJobs: 1, SpeedFactor: 1}
}

// with returns a copy of def(uri) changed by f.
func with(uri string, f func(*Machine)) *Machine {
	m := def(uri)
	f(m)
	return m
}

// normal makes empty and nil slices alike, so that expectations need not
// know which one a split gives.
func normal(ms []*Machine) []Machine {
	out := []Machine{}
	for _, m := range ms {
		c := *m
		for _, s := range []*[]string{&c.Systems, &c.SupportedFeatures, &c.MandatoryFeatures} {
			if len(*s) == 0 {
				*s = nil
			}
		}
		out = append(out, c)
	}
	return out
}

var parseTests = []struct {
	name, in string
	want     []*Machine
}{
	{"empty", "", nil},
	{"only blanks and comments", "# all off\n\n   \n;;\t;\r\n  # x", nil},
	{"bare host", "host", []*Machine{def("ssh://host")}},
	{"all columns", "root@build x86_64-linux,i686-linux /root/.ssh/id 4 2 kvm,big-parallel,kvm benchmark,,big-parallel c3NoLWVkMjU1MTkgQUFBQQ==",
		[]*Machine{{
			StoreURI: "ssh://root@build", Systems: []string{"x86_64-linux", "i686-linux"}, SSHKey: "/root/.ssh/id",
			MaxJobs: 4, SpeedFactor: 2, SupportedFeatures: []string{"big-parallel", "kvm"},
			MandatoryFeatures: []string{"benchmark", "big-parallel"}, SSHPublicHostKey: "c3NoLWVkMjU1MTkgQUFBQQ==",
		}}},
	{"split at newline and semicolon", "a;b\nc ; d", []*Machine{def("ssh://a"), def("ssh://b"), def("ssh://c"), def("ssh://d")}},
	{"comment after host", "  host  # the big one", []*Machine{def("ssh://host")}},
	{"comment cuts a word", "ho#st x86_64-darwin", []*Machine{def("ssh://ho")}},
	{"comment in one line only", "a # b\nc", []*Machine{def("ssh://a"), def("ssh://c")}},
	{"tab and CR separate fields", "host\taarch64-linux\r-\r2", []*Machine{with("ssh://host", func(m *Machine) {
		m.Systems = []string{"aarch64-linux"}
		m.MaxJobs = 2
	})}},
	{"dashes are defaults", "host - - - - - - -", []*Machine{def("ssh://host")}},
	{"extra columns ignored", "host - - - - - - - extra more", []*Machine{def("ssh://host")}},
	{"systems keep order, empty items dropped", "host b-sys,,a-sys,", []*Machine{with("ssh://host", func(m *Machine) {
		m.Systems = []string{"b-sys", "a-sys"}
	})}},
	{"systems all empty", "host ,", []*Machine{with("ssh://host", func(m *Machine) { m.Systems = nil })}},
	{"features all empty", "host - - - - , ,,", []*Machine{def("ssh://host")}},
	{"speed factor 0 is 1", "host - - 3 0", []*Machine{with("ssh://host", func(m *Machine) { m.MaxJobs = 3 })}},
	{"max jobs 0", "host - - 0", []*Machine{with("ssh://host", func(m *Machine) { m.MaxJobs = 0 })}},
	{"plus sign and leading zero", "host - - +3 007", []*Machine{with("ssh://host", func(m *Machine) {
		m.MaxJobs, m.SpeedFactor = 3, 7
	})}},
	{"unsigned int max", "host - - 4294967295 4294967295", []*Machine{with("ssh://host", func(m *Machine) {
		m.MaxJobs, m.SpeedFactor = 4294967295, 4294967295
	})}},
	{"base64 without padding", "host - - - - - - c3NoLWVkMjU1MTkgQUFBQQ", []*Machine{with("ssh://host", func(m *Machine) {
		m.SSHPublicHostKey = "c3NoLWVkMjU1MTkgQUFBQQ"
	})}},
	{"base64 ends at =", "host - - - - - - YQ==!!", []*Machine{with("ssh://host", func(m *Machine) { m.SSHPublicHostKey = "YQ==!!" })}},
	// Store URIs: only a bare host gets ssh://.
	{"uris", strings.Join([]string{
		"ssh://h", "ssh-ng://h", "auto", "daemon", "local", "auto?a=1", "daemon?b", "local?c", "?root",
		"/path/store", "h/x", "user@host", "host:22", "localhost?remote-program=x", "autox", "local2", "daemonic",
	}, "\n"), []*Machine{
		def("ssh://h"), def("ssh-ng://h"), def("auto"), def("daemon"), def("local"), def("auto?a=1"), def("daemon?b"),
		def("local?c"), def("?root"), def("/path/store"), def("h/x"), def("ssh://user@host"), def("ssh://host:22"),
		def("ssh://localhost?remote-program=x"), def("ssh://autox"), def("ssh://local2"), def("ssh://daemonic"),
	}},
}

func TestParse(t *testing.T) {
	for _, tt := range parseTests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in, thisSystem)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if g, w := normal(got), normal(tt.want); !reflect.DeepEqual(g, w) {
				t.Errorf("Parse(%q)\n got %+v\nwant %+v", tt.in, g, w)
			}
		})
	}
}

var parseErrorTests = []struct{ in, want string }{
	{"host - - x", "bad machine specification: failed to convert column #3 in a row: 'host - - x' to 'unsigned int'"},
	{"host - - 1 -2", "bad machine specification: failed to convert column #4 in a row: 'host - - 1 -2' to 'unsigned int'"},
	{"host - - 4294967296", "bad machine specification: failed to convert column #3 in a row: 'host - - 4294967296' to 'unsigned int'"},
	{"host - - -1", "bad machine specification: failed to convert column #3 in a row: 'host - - -1' to 'unsigned int'"},
	{"host - - +", "bad machine specification: failed to convert column #3 in a row: 'host - - +' to 'unsigned int'"},
	{"host - - ++1", "bad machine specification: failed to convert column #3 in a row: 'host - - ++1' to 'unsigned int'"},
	{"host - - 1.5", "bad machine specification: failed to convert column #3 in a row: 'host - - 1.5' to 'unsigned int'"},
	{"host - - 0x10", "bad machine specification: failed to convert column #3 in a row: 'host - - 0x10' to 'unsigned int'"},
	// The row is the line after the comment is cut, not trimmed again.
	{"  host - - x # note", "bad machine specification: failed to convert column #3 in a row: 'host - - x ' to 'unsigned int'"},
	// One bad row fails the whole setting.
	{"good\nhost - - 1 1 - - bad*key", "bad machine specification: a column #7 in a row: 'host - - 1 1 - - bad*key' is not valid base64 string: invalid character in Base64 string: '*'"},
	// The only row without a URL: a "-" in the first column.
	{"- x86_64-linux", "bad machine specification: store URL was not found at the first column of a row: '- x86_64-linux'"},
	{"-", "bad machine specification: store URL was not found at the first column of a row: '-'"},
}

func TestParseErrors(t *testing.T) {
	for _, tt := range parseErrorTests {
		ms, err := Parse(tt.in, thisSystem)
		if err == nil {
			t.Errorf("Parse(%q) = %v, want error %q", tt.in, normal(ms), tt.want)
			continue
		}
		if err.Error() != tt.want {
			t.Errorf("Parse(%q) error\n got %q\nwant %q", tt.in, err, tt.want)
		}
	}
}

func TestDecodeBase64(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"", ""},
		{"aGVsbG8=", "hello"},
		{"aGVsbG8", "hello"},
		{"aGVs\nbG8=", "hello"},
		{"aGVsbG8=*not read*", "hello"},
		{"YQ", "a"},
		{"+/+/", "\xfb\xff\xbf"},
	} {
		got, err := decodeBase64(tt.in)
		if err != nil || string(got) != tt.want {
			t.Errorf("decodeBase64(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	for _, in := range []string{"a b", "a-b", "a_b", "ab\r"} {
		if got, err := decodeBase64(in); err == nil {
			t.Errorf("decodeBase64(%q) = %q, want error", in, got)
		}
	}
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func uris(ms []*Machine) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.StoreURI)
	}
	return out
}

func TestParseIncludes(t *testing.T) {
	dir := t.TempDir()
	inner := filepath.Join(dir, "inner")
	outer := filepath.Join(dir, "outer")
	writeFile(t, inner, "c x86_64-darwin # in inner\n")
	writeFile(t, outer, "b; @"+inner+"\n@"+filepath.Join(dir, "missing")+"\nd\n")

	// Includes expand in place; the include line may be padded and commented.
	got, err := Parse("a\n  @ "+outer+"  # machines\ne", thisSystem)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"ssh://a", "ssh://b", "ssh://c", "ssh://d", "ssh://e"}; !slices.Equal(uris(got), want) {
		t.Errorf("machines %v, want %v", uris(got), want)
	}
	if !slices.Equal(got[2].Systems, []string{"x86_64-darwin"}) {
		t.Errorf("included machine's systems %v", got[2].Systems)
	}

	// A missing file is no machine, as in Nix.
	got, err = Parse("@"+filepath.Join(dir, "nope"), thisSystem)
	if err != nil || len(got) != 0 {
		t.Errorf("missing file: %v, %v; want no machines", uris(got), err)
	}

	// Reading a directory fails (EISDIR, which Nix rethrows).
	_, err = Parse("@"+dir, thisSystem)
	if err == nil || !strings.Contains(err.Error(), "read machines file") || !strings.Contains(err.Error(), "is a directory") {
		t.Errorf("directory: error %v", err)
	}

	// A bad row in an included file fails the parse.
	bad := filepath.Join(dir, "bad")
	writeFile(t, bad, "h - - many\n")
	if _, err = Parse("@"+bad, thisSystem); err == nil || !strings.Contains(err.Error(), "column #3 in a row: 'h - - many'") {
		t.Errorf("bad included row: error %v", err)
	}
}

// chain writes files f1..fn where fi includes fi+1 and fn names one machine,
// and returns the builders setting that includes f1.
func chain(t *testing.T, n int) string {
	dir := t.TempDir()
	name := func(i int) string { return filepath.Join(dir, fmt.Sprintf("f%d", i)) }
	for i := 1; i < n; i++ {
		writeFile(t, name(i), "@"+name(i+1)+"\n")
	}
	writeFile(t, name(n), "deep\n")
	return "@" + name(1)
}

func TestParseIncludeDepth(t *testing.T) {
	// maxMachinesDepth files deep is allowed, one more is not.
	got, err := Parse(chain(t, maxMachinesDepth), thisSystem)
	if err != nil || !slices.Equal(uris(got), []string{"ssh://deep"}) {
		t.Errorf("%d deep: %v, %v", maxMachinesDepth, uris(got), err)
	}
	_, err = Parse(chain(t, maxMachinesDepth+1), thisSystem)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("included more than %d deep", maxMachinesDepth)) {
		t.Errorf("%d deep: error %v", maxMachinesDepth+1, err)
	}

	// A file that includes itself ends with the error, not a stack overflow.
	self := filepath.Join(t.TempDir(), "self")
	writeFile(t, self, "h\n@"+self+"\n")
	if _, err := Parse("@"+self, thisSystem); err == nil || !strings.Contains(err.Error(), "included more than") {
		t.Errorf("self include: error %v", err)
	}
}

func TestFeatures(t *testing.T) {
	m := &Machine{Systems: []string{"x86_64-linux", "i686-linux"}, SupportedFeatures: []string{"big", "kvm"}, MandatoryFeatures: []string{"bench"}}
	for _, tt := range []struct {
		features                 []string
		all, mandatory, canBuild bool
	}{
		{nil, true, false, false},
		{[]string{"kvm"}, true, false, false},
		{[]string{"bench"}, true, true, true}, // a mandatory feature is supported too
		{[]string{"bench", "big", "kvm"}, true, true, true},
		{[]string{"bench", "nixos-test"}, false, true, false},
		{[]string{"nixos-test"}, false, false, false},
	} {
		if got := m.AllSupported(tt.features); got != tt.all {
			t.Errorf("AllSupported(%v) = %v", tt.features, got)
		}
		if got := m.MandatoryMet(tt.features); got != tt.mandatory {
			t.Errorf("MandatoryMet(%v) = %v", tt.features, got)
		}
		for _, sys := range []string{"i686-linux", "builtin"} {
			if got := m.canBuild(sys, tt.features); got != tt.canBuild {
				t.Errorf("canBuild(%s, %v) = %v", sys, tt.features, got)
			}
		}
	}
	if m.canBuild("aarch64-linux", []string{"bench"}) {
		t.Error("canBuild of another system")
	}
	// "builtin" matches whatever the machine's systems, even none.
	none := &Machine{}
	if !none.canBuild("builtin", nil) || none.canBuild("x86_64-linux", nil) {
		t.Error("machine without systems: builtin must match, nothing else")
	}
	if !none.AllSupported(nil) || !none.MandatoryMet([]string{"x"}) {
		t.Error("machine without features: no features needed and none mandatory")
	}
}

// sortedUnique reports whether s is strictly increasing with no empty item.
func sortedUnique(s []string) bool {
	for i, x := range s {
		if x == "" || i > 0 && s[i-1] >= x {
			return false
		}
	}
	return true
}

// includes reports whether builders has a line that Parse would read as a
// file include (the fuzzer must not open arbitrary files such as /dev/stdin).
func includes(builders string) bool {
	for _, line := range strings.FieldsFunc(builders, func(r rune) bool { return r == '\n' || r == ';' }) {
		if strings.HasPrefix(strings.Trim(line, " \t\n\r"), "@") {
			return true
		}
	}
	return false
}

func FuzzParse(f *testing.F) {
	for _, tt := range parseTests {
		f.Add(tt.in)
	}
	for _, tt := range parseErrorTests {
		f.Add(tt.in)
	}
	f.Fuzz(func(t *testing.T, in string) {
		if includes(in) {
			t.Skip()
		}
		got, err := Parse(in, thisSystem)
		again, err2 := Parse(in, thisSystem)
		if !reflect.DeepEqual(got, again) || fmt.Sprint(err) != fmt.Sprint(err2) {
			t.Fatalf("Parse(%q) not deterministic: %v, %v / %v, %v", in, got, err, again, err2)
		}
		if err != nil {
			if !strings.HasPrefix(err.Error(), "bad machine specification: ") {
				t.Fatalf("Parse(%q): unexpected error %v", in, err)
			}
			return
		}
		if len(got) > strings.Count(in, "\n")+strings.Count(in, ";")+1 {
			t.Fatalf("Parse(%q): %d machines from fewer lines", in, len(got))
		}
		for _, m := range got {
			if m.SpeedFactor < 1 {
				t.Errorf("Parse(%q): speed factor %d", in, m.SpeedFactor)
			}
			if m.StoreURI == "" || strings.ContainsAny(m.StoreURI, " \t\r\n#;") {
				t.Errorf("Parse(%q): store URI %q", in, m.StoreURI)
			}
			if !sortedUnique(m.SupportedFeatures) || !sortedUnique(m.MandatoryFeatures) {
				t.Errorf("Parse(%q): features %q, %q", in, m.SupportedFeatures, m.MandatoryFeatures)
			}
			if slices.Contains(m.Systems, "") {
				t.Errorf("Parse(%q): empty system in %q", in, m.Systems)
			}
			if m.MaxJobs > 1<<32-1 {
				t.Errorf("Parse(%q): max jobs %d over unsigned int", in, m.MaxJobs)
			}
			if m.SSHPublicHostKey != "" {
				if _, err := decodeBase64(m.SSHPublicHostKey); err != nil {
					t.Errorf("Parse(%q): host key %q: %v", in, m.SSHPublicHostKey, err)
				}
			}
		}
	})
}
