package gc

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"cairn/internal/protocol"
	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/storepath"
	"cairn/internal/testutil/nixtest"
)

// TestAddRacesCollect adds paths (with a temporary root, as a daemon
// connection does, and without one, as the CLI does) and, when Nix is
// there, runs nix-store --add, all while collections run back to back. No
// add may end with a registered path whose files were deleted, and every
// path a live temporary root names must survive.
func TestAddRacesCollect(t *testing.T) {
	root := filepath.Join(t.TempDir(), "root")
	st, roots := openStore(t, root)
	tr, err := roots.OpenTemp()
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	const n = 150
	var wg sync.WaitGroup
	var mu sync.Mutex
	var rooted []storepath.StorePath
	errs := make(chan error, 8)
	// Adds with a temporary root.
	wg.Add(1)
	go func() {
		defer wg.Done()
		rctx := store.WithTempRooter(ctx, tempRooter{tr})
		for i := range n {
			info, err := st.AddText(rctx, fmt.Sprintf("rooted-%d", i), fmt.Sprintf("rooted %d\n", i), nil)
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			rooted = append(rooted, info.Path)
			mu.Unlock()
		}
	}()
	// Adds without one (shared GC lock): garbage as soon as they are in.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range n {
			if _, err := st.AddText(ctx, fmt.Sprintf("plain-%d", i), fmt.Sprintf("plain %d\n", i), nil); err != nil {
				errs <- err
				return
			}
		}
	}()
	// Nix's adds, through its own temp roots and the collector's socket.
	var nixDone chan struct{}
	if _, err := exec.LookPath("nix-store"); err == nil {
		nixDone = make(chan struct{})
		files := t.TempDir()
		go func() {
			defer close(nixDone)
			for i := range 15 {
				f := filepath.Join(files, fmt.Sprintf("nix-%d", i))
				os.WriteFile(f, []byte(fmt.Sprintf("from nix %d\n", i)), 0o644)
				if _, err := nixtest.Output(nil, "nix-store", "--store", "local?root="+root, "--add", f); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	stop := make(chan struct{})
	collected := make(chan int)
	go func() {
		k := 0
		for {
			select {
			case <-stop:
				collected <- k
				return
			default:
			}
			if _, err := Collect(ctx, st, roots, Options{Action: protocol.GCDeleteDead, MaxFreed: NoLimit, KeepDerivations: true}); err != nil {
				errs <- err
			}
			k++
			time.Sleep(time.Millisecond)
		}
	}()
	wg.Wait()
	if nixDone != nil {
		<-nixDone
	}
	close(stop)
	t.Logf("%d collections", <-collected)
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	// One more, now that nothing else runs.
	if _, err := Collect(ctx, st, roots, Options{Action: protocol.GCDeleteDead, MaxFreed: NoLimit}); err != nil {
		t.Fatal(err)
	}
	for _, p := range rooted {
		if ok, err := st.IsValidPath(ctx, p); err != nil || !ok {
			t.Errorf("%s: valid %v (%v), but a live temporary root names it", p, ok, err)
		}
	}
	res, err := st.Verify(ctx, local.VerifyOptions{CheckContents: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors || len(res.Invalidated) > 0 || len(res.Modified) > 0 {
		t.Errorf("verify after the race: %+v", res)
	}
	if _, err := exec.LookPath("nix-store"); err == nil {
		if out, err := nixtest.Output(nil, "nix-store", "--store", "local?root="+root, "--verify", "--check-contents"); err != nil {
			t.Errorf("nix-store --verify --check-contents: %v: %s", err, out)
		}
	}
}

type tempRooter struct {
	t interface {
		Add(context.Context, storepath.StorePath) error
	}
}

func (r tempRooter) AddTempRoot(ctx context.Context, p storepath.StorePath) error {
	return r.t.Add(ctx, p)
}
