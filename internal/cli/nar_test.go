package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cairn/internal/nar"
)

func runNar(t *testing.T, stdin []byte, args ...string) (string, error) {
	t.Helper()
	root := NewRoot()
	var out bytes.Buffer
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetIn(bytes.NewReader(stdin))
	err := root.Execute()
	return out.String(), err
}

func TestNarDumpRestoreLs(t *testing.T) {
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(tree, "sub"), 0o755)
	os.WriteFile(filepath.Join(tree, "sub", "f"), []byte("hello"), 0o755)
	os.Symlink("sub/f", filepath.Join(tree, "l"))

	dumped, err := runNar(t, nil, "nar", "dump", tree)
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	if err := nar.Dump(&want, tree, nar.DumpOptions{}); err != nil {
		t.Fatal(err)
	}
	if dumped != want.String() {
		t.Fatal("cairn nar dump differs from nar.Dump")
	}

	restored := filepath.Join(dir, "restored")
	if _, err := runNar(t, want.Bytes(), "nar", "restore", restored); err != nil {
		t.Fatal(err)
	}
	if again, _ := runNar(t, nil, "nar", "dump", restored); again != dumped {
		t.Fatal("dump of the restored tree differs")
	}
	if _, err := runNar(t, want.Bytes(), "nar", "restore", restored); err == nil {
		t.Fatal("restore over an existing path succeeded")
	}

	narFile := filepath.Join(dir, "t.nar")
	os.WriteFile(narFile, want.Bytes(), 0o644)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"nar", "ls", narFile}, "./l\n./sub\n"},
		{[]string{"nar", "ls", "-R", narFile, "/"}, "./l\n./sub\n./sub/f\n"},
		{[]string{"nar", "ls", "-l", narFile, "/sub/f"}, "-r-xr-xr-x                    5 f\n"},
		{[]string{"nar", "ls", "-ld", narFile, "/l"}, "lrwxrwxrwx                    0 l -> sub/f\n"},
		{[]string{"nar", "ls", "--json", "-R", narFile, "/sub"}, `{"type":"directory","entries":{"f":{"type":"regular","size":5,"executable":true,"narOffset":592}}}`},
	} {
		got, err := runNar(t, nil, tc.args...)
		if err != nil || got != tc.want {
			t.Errorf("cairn %s: %q, %v; want %q", strings.Join(tc.args, " "), got, err, tc.want)
		}
	}
	if got, err := runNar(t, want.Bytes(), "nar", "ls", "-R", "-"); err != nil || got != "./l\n./sub\n./sub/f\n" {
		t.Errorf("ls from stdin: %q, %v", got, err)
	}
	for _, args := range [][]string{
		{"nar", "ls", "--json", "-d", narFile},
		{"nar", "ls", narFile, "/missing"},
		{"nar", "ls", filepath.Join(dir, "nonexistent.nar")},
		{"nar", "dump", filepath.Join(dir, "nonexistent")},
	} {
		if _, err := runNar(t, nil, args...); err == nil {
			t.Errorf("cairn %s succeeded", strings.Join(args, " "))
		}
	}
	if _, err := runNar(t, []byte("garbage"), "nar", "restore", filepath.Join(dir, "x")); err == nil {
		t.Error("restore of garbage succeeded")
	}
}
