package fsnar

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"cairn/internal/nar"
)

// withNewRing replaces newRing for one test, counting the rings it sets up.
func withNewRing(t *testing.T, f func(uint32) (*ring, error)) *int {
	t.Helper()
	closeIdleRings()
	old := newRing
	t.Cleanup(func() { newRing = old })
	calls := new(int)
	newRing = func(n uint32) (*ring, error) { *calls++; return f(n) }
	return calls
}

// closeIdleRings empties idleRings, so that the next dump sets up its ring.
func closeIdleRings() {
	for {
		select {
		case r := <-idleRings:
			r.close()
		default:
			return
		}
	}
}

func requireRing(t *testing.T) {
	t.Helper()
	r, err := setupRing(ringEntries)
	if err != nil {
		t.Skip("no io_uring here:", err)
	}
	r.close()
}

func narDump(t *testing.T, path string) []byte {
	t.Helper()
	var want bytes.Buffer
	if err := nar.Dump(&want, path, nar.DumpOptions{}); err != nil {
		t.Fatal(err)
	}
	return want.Bytes()
}

// Where io_uring is missing or refused, the walker falls back to plain system
// calls and writes the same archive.
func TestDumpWithoutRing(t *testing.T) {
	root := makeTree(t)
	want := narDump(t, root)
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"ENOSYS", unix.ENOSYS},               // a kernel without io_uring
		{"EPERM", unix.EPERM},                 // io_uring_disabled=2, or a seccomp filter
		{"EACCES", unix.EACCES},               // io_uring_disabled=1 outside io_uring_group
		{"ENOMEM", unix.ENOMEM},               // locked-memory limit
		{"mmap", errors.New("io_uring mmap")}, // set up, but the rings cannot be mapped
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := withNewRing(t, func(uint32) (*ring, error) { return nil, tc.err })
			if got := dump(t, root); !bytes.Equal(got, want) {
				t.Errorf("dump without io_uring differs from nar.Dump (%d vs %d bytes)", len(got), len(want))
			}
			if *calls != 1 {
				t.Errorf("newRing called %d times in one dump, want once", *calls)
			}
		})
	}
}

func TestDumpWithRing(t *testing.T) {
	requireRing(t)
	calls := withNewRing(t, setupRing)
	root := makeTree(t)
	if got, want := dump(t, root), narDump(t, root); !bytes.Equal(got, want) {
		t.Errorf("dump through io_uring differs from nar.Dump (%d vs %d bytes)", len(got), len(want))
	}
	if *calls != 1 {
		t.Errorf("newRing called %d times, want once", *calls)
	}
}

// A dump leaves its ring for the next one.
func TestRingReused(t *testing.T) {
	requireRing(t)
	calls := withNewRing(t, setupRing)
	root := makeTree(t)
	want := narDump(t, root)
	for i := 0; i < 3; i++ {
		if got := dump(t, root); !bytes.Equal(got, want) {
			t.Fatalf("dump %d differs from nar.Dump", i)
		}
	}
	if *calls != 1 {
		t.Errorf("newRing called %d times in three dumps, want once", *calls)
	}
	closeIdleRings()
}

// A file that the ring cannot open takes the plain path, which reports it; the
// files opened around it are closed.
func TestRingFileVanished(t *testing.T) {
	requireRing(t)
	dir := t.TempDir()
	for _, name := range []string{"a", "c"} {
		must(t, os.WriteFile(filepath.Join(dir, name), []byte(name), 0o644))
	}
	before := openFiles(t)
	w := &walker{ctx: context.Background(), free: make(chan *batch, ringBuffers), full: make(chan *batch, ringBuffers)}
	if !w.useRing() || !w.take() {
		t.Fatal("no ring or no batch")
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	must(t, err)
	defer unix.Close(fd)
	names := "a\x00b\x00c\x00"
	entries := []dirent{{names[0:1], unix.DT_REG}, {names[2:3], unix.DT_REG}, {names[4:5], unix.DT_REG}}
	err = w.files(fd, dir, "", entries)
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), filepath.Join(dir, "b")) {
		t.Errorf("run with a missing file: %v, want ErrNotExist naming it", err)
	}
	w.closeRing()
	closeIdleRings()
	unix.Close(fd)
	if after := openFiles(t); after != before {
		t.Errorf("%d open files after the run, %d before", after, before)
	}
}

// seccompEnv names the environment variable that makes the test binary, re-run
// by TestDumpUnderSeccomp, refuse io_uring_setup before dumping.
const seccompEnv = "CAIRN_FSNAR_SECCOMP_CHILD"

// A seccomp filter that refuses io_uring_setup with EPERM, as container runtimes'
// default profiles do: the real kernel refusal, in a re-run of the test binary.
func TestDumpUnderSeccomp(t *testing.T) {
	if dir := os.Getenv(seccompEnv); dir != "" {
		if err := denyIOURing(); err != nil {
			t.Fatal("seccomp:", err)
		}
		if _, err := setupRing(ringEntries); !errors.Is(err, unix.EPERM) {
			t.Fatalf("io_uring_setup under the filter: %v, want EPERM", err)
		}
		if got, want := dump(t, dir), narDump(t, dir); !bytes.Equal(got, want) {
			t.Fatalf("dump under seccomp differs from nar.Dump (%d vs %d bytes)", len(got), len(want))
		}
		return
	}
	requireRing(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestDumpUnderSeccomp$", "-test.v")
	cmd.Env = append(os.Environ(), seccompEnv+"="+makeTree(t))
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: TestDumpUnderSeccomp")) {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

// denyIOURing installs, on every thread of the process, a filter that fails
// io_uring_setup with EPERM and allows everything else.
func denyIOURing() error {
	const (
		ldAbsW   = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeqK     = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		retK     = unix.BPF_RET | unix.BPF_K
		retErrno = 0x00050000 // SECCOMP_RET_ERRNO
		retAllow = 0x7fff0000 // SECCOMP_RET_ALLOW
	)
	filter := []unix.SockFilter{
		{Code: ldAbsW, K: 0}, // seccomp_data.nr
		{Code: jeqK, Jt: 0, Jf: 1, K: unix.SYS_IO_URING_SETUP},
		{Code: retK, K: retErrno | uint32(unix.EPERM)},
		{Code: retK, K: retAllow},
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return err
	}
	if _, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER,
		unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&prog))); errno != 0 {
		return errno
	}
	return nil
}

// BenchmarkDumpSmallTree dumps a build output's worth of files (a directory of
// 12 small files), through a kept ring and through plain calls.
func BenchmarkDumpSmallTree(b *testing.B) {
	root := b.TempDir()
	var size countWriter
	for i := 0; i < 12; i++ {
		data := bytes.Repeat([]byte{'a' + byte(i)}, 100*i)
		if err := os.WriteFile(filepath.Join(root, string(rune('a'+i))), data, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	if err := Dump(context.Background(), &size, root); err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name    string
		newRing func(uint32) (*ring, error)
	}{
		{"ring", setupRing},
		{"plain", func(uint32) (*ring, error) { return nil, unix.ENOSYS }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			old := newRing
			defer func() { newRing = old }()
			newRing = bc.newRing
			closeIdleRings()
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				if err := Dump(context.Background(), io.Discard, root); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	closeIdleRings()
}

// Runs of files of every size the ring treats differently: empty, small, filling
// the rest of a batch, larger than the room left, larger than a batch; executable
// or not; more files than one round takes.
func TestRingRuns(t *testing.T) {
	requireRing(t)
	withNewRing(t, setupRing)
	for _, tc := range []struct {
		name  string
		sizes []int
	}{
		{"empty files", []int{0, 0, 0}},
		{"small", []int{1, 7, 8, 9, 100, 4096}},
		{"fill a batch", []int{bufferSize / 2, bufferSize/2 - 200, 10, 0, 5}},
		{"larger than the room", []int{100, bufferSize - 50, 300, 2 * bufferSize, 1}},
		{"larger than a batch", []int{3*bufferSize + 7, 3, 3*bufferSize + 7}},
		{"more than a round", slices.Repeat([]int{10, 1000}, ringSlots)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for i, size := range tc.sizes {
				data := bytes.Repeat([]byte{byte(i)}, size)
				must(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%03d", i)), data, os.FileMode(0o644|(i%3/2)*0o111)))
			}
			if got, want := dump(t, dir), narDump(t, dir); !bytes.Equal(got, want) {
				t.Errorf("dump differs from nar.Dump (%d vs %d bytes)", len(got), len(want))
			}
		})
	}
	closeIdleRings()
}
