package fsnar

import (
	"testing"
	"golang.org/x/sys/unix"
	"os"
	"path/filepath"
)

func TestDbgRing(t *testing.T) {
	r, err := newRing(ringEntries)
	if err != nil { t.Fatal(err) }
	defer r.close()
	d := t.TempDir()
	os.WriteFile(filepath.Join(d, "f"), []byte("hello"), 0o644)
	dfd, _ := unix.Open(d, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	name := []byte("f\x00")
	var st unix.Statx_t
	r.push(statxEntry(dfd, &name[0], &st, 7))
	r.wait(1, func(ud uint64, res int32) { t.Logf("statx ud %d res %d size %d mode %o", ud, res, st.Size, st.Mode) })
	buf := make([]byte, 5)
	for _, e := range readChain(dfd, &name[0], 3, buf, 12) { r.push(e) }
	r.wait(3, func(ud uint64, res int32) { t.Logf("chain ud %d res %d", ud, res) })
	t.Logf("buf %q", buf)
}
