package cli

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// markerSynced returns the row id the durability marker of the chroot store
// at root records, from the slot with the highest sequence number.
func markerSynced(t *testing.T, root string) int64 {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "nix/var/nix/db/cairn-durable"))
	if err != nil {
		t.Fatal(err)
	}
	var seq, synced int64 = -1, -1
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) != 6 || f[0] != "cairn-durable" {
			continue
		}
		s, err1 := strconv.ParseInt(f[2], 10, 64)
		n, err2 := strconv.ParseInt(f[4], 10, 64)
		if err1 == nil && err2 == nil && s > seq {
			seq, synced = s, n
		}
	}
	return synced
}

// TestSyncBehindBinary: `cairn store add` of a tree bigger than a small
// round starts a process to sync behind it (no warning that it could not)
// which makes the add durable: the marker reaches the path's row. A small
// add syncs in Close.
func TestSyncBehindBinary(t *testing.T) {
	tmp := t.TempDir()
	bin := cairnBinary(t, tmp)
	src := filepath.Join(tmp, "tree")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if err := os.WriteFile(filepath.Join(src, fmt.Sprintf("f%d", i)), []byte(fmt.Sprintf("file %d\n", i)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	root := filepath.Join(tmp, "root")
	url := "local?root=" + root
	for i, args := range [][]string{{"store", "add", src}, {"store", "add", filepath.Join(src, "f1")}} {
		cmd := exec.Command(bin, append([]string{"--store", url}, args...)...)
		cmd.Env = append(os.Environ(), "NIX_CONFIG=")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", args, err, out)
		}
		// A process that could not be started would be warned of
		// (and Close would sync itself).
		if strings.Contains(string(out), "warning") {
			t.Errorf("%s: %s", args, out)
		}
		want := int64(i + 1)
		// Not a timing assertion: the deadline only keeps a lost round
		// from hanging the test.
		for deadline := time.Now().Add(30 * time.Second); markerSynced(t, root) < want; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("after %s the marker stays at %d, want %d", args, markerSynced(t, root), want)
			}
		}
	}
}
