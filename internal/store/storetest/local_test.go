package storetest_test

import (
	"context"
	"path/filepath"
	"testing"

	"cairn/internal/store"
	"cairn/internal/store/local"
	"cairn/internal/store/storetest"
)

// TestLocal runs the suite against a local chroot store (the local store's
// own tests are in package local; this keeps the suite honest).
func TestLocal(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		cfg, err := store.ParseURL("local?root="+filepath.Join(t.TempDir(), "root"), func(string) string { return "" })
		if err != nil {
			t.Fatal(err)
		}
		opts := local.DefaultOptions()
		opts.NoFsync = true
		s, err := local.Open(context.Background(), cfg, opts)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}
