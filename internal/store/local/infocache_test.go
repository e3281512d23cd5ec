package local

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"cairn/internal/nixhash"
	"cairn/internal/store"
	"cairn/internal/storepath"
	"cairn/internal/testutil/nixtest"
)

// queryTwice asks for p's info twice (the second answer from the cache) and
// checks both agree.
func queryTwice(t *testing.T, s *Store, p storepath.StorePath) *store.PathInfo {
	t.Helper()
	ctx := context.Background()
	a, err := s.QueryPathInfo(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.QueryPathInfo(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if a.NarHash != b.NarHash || !slices.Equal(a.Signatures, b.Signatures) || !slices.Equal(a.References, b.References) {
		t.Fatalf("second QueryPathInfo(%s) = %+v, first %+v", p, b, a)
	}
	return b
}

// wantInvalid checks that QueryPathInfo and IsValidPath say p is not valid.
func wantInvalid(t *testing.T, s *Store, p storepath.StorePath) {
	t.Helper()
	ctx := context.Background()
	if info, err := s.QueryPathInfo(ctx, p); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("QueryPathInfo(%s) = %v, %v; want not valid", p, info, err)
	}
	if ok, err := s.IsValidPath(ctx, p); ok || err != nil {
		t.Errorf("IsValidPath(%s) = %v, %v; want false", p, ok, err)
	}
}

func addFiles(t *testing.T, s *Store, files map[string]string) []storepath.StorePath {
	t.Helper()
	src := t.TempDir()
	writeTree(t, src, files)
	var names []string
	for name := range files {
		names = append(names, filepath.Join(src, name))
	}
	slices.Sort(names)
	infos, err := s.AddPaths(context.Background(), names, nixhash.Recursive, nixhash.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	var out []storepath.StorePath
	for _, info := range infos {
		out = append(out, info.Path)
	}
	return out
}

// TestInfoCacheCoherent changes the database behind cached infos in every
// way this process can (its own delete and re-registration, another Store
// on the same database, a caller changing the info it got) and checks no
// stale answer comes out.
func TestInfoCacheCoherent(t *testing.T) {
	ctx := context.Background()
	s, root := newStore(t)
	other := openRoot(t, root) // its own connections, as another process has
	ps := addFiles(t, s, map[string]string{"a": "a\n", "b": "b\n", "c": "c\n", "d": "d\n"})
	a, b, c, d := ps[0], ps[1], ps[2], ps[3]

	tests := []struct {
		name  string
		check func(t *testing.T)
	}{
		{"delete", func(t *testing.T) {
			queryTwice(t, s, a)
			if _, err := s.Delete(ctx, []storepath.StorePath{a}, DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			wantInvalid(t, s, a)
		}},
		{"delete by another store", func(t *testing.T) {
			queryTwice(t, s, b)
			if _, err := other.Delete(ctx, []storepath.StorePath{b}, DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			wantInvalid(t, s, b)
		}},
		{"invalid, then added by another store", func(t *testing.T) {
			wantInvalid(t, s, b)
			if got := addFiles(t, other, map[string]string{"b": "b\n"}); got[0] != b {
				t.Fatalf("re-added %s as %s", b, got[0])
			}
			if ok, err := s.IsValidPath(ctx, b); !ok || err != nil {
				t.Errorf("IsValidPath(%s) after its add = %v, %v", b, ok, err)
			}
			queryTwice(t, s, b)
		}},
		{"signatures", func(t *testing.T) {
			info := queryTwice(t, s, c)
			info.Signatures = []string{"a.example:YQ==", "b.example:Yg==", "c.example:Yw=="} // cap 4 when read back
			if err := other.RegisterValidPaths(ctx, []*store.PathInfo{info}); err != nil {
				t.Fatal(err)
			}
			if got := queryTwice(t, s, c); !slices.Equal(got.Signatures, info.Signatures) {
				t.Errorf("signatures after AddSignatures = %q, want %q", got.Signatures, info.Signatures)
			}
		}},
		{"caller changes its copy", func(t *testing.T) {
			info := queryTwice(t, s, c)
			want := slices.Clone(info.Signatures)
			more := append(info.Signatures, "a.example:YQ==")
			slices.Reverse(more)
			info.Signatures = more
			info.NarSize = 0
			got := queryTwice(t, s, c)
			if !slices.Equal(got.Signatures, want) || got.NarSize == 0 {
				t.Errorf("cached info changed by a caller: %+v", got)
			}
		}},
		{"closed other store", func(t *testing.T) {
			queryTwice(t, s, d)
			if err := other.Close(); err != nil {
				t.Fatal(err)
			}
			third := openRoot(t, root)
			if _, err := third.Delete(ctx, []storepath.StorePath{d}, DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			third.Close()
			wantInvalid(t, s, d)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, tt.check)
	}
	if s.infos.shm == nil {
		t.Error("the store had no cache")
	}
}

// TestInfoCacheNix has Nix 2.8 change the database behind cached infos:
// nix-store --delete, --gc, --add of a path found invalid before, and
// nix store sign.
func TestInfoCacheNix(t *testing.T) {
	nixtest.Require(t, "nix-store", "nix")
	ctx := context.Background()
	s, root := newStore(t)
	url := storeURL(root)
	src := t.TempDir()
	writeTree(t, src, map[string]string{"one": "1\n", "two": "2\n"})
	nixAdd := func(name string) storepath.StorePath {
		p, err := storepath.Parse(nixtest.Run(t, nil, "nix-store", "--store", url, "--add", filepath.Join(src, name)))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	one, two := nixAdd("one"), nixAdd("two")
	keys := t.TempDir()
	sk, pk := filepath.Join(keys, "sk"), filepath.Join(keys, "pk")
	nixtest.Run(t, nil, "nix-store", "--generate-binary-cache-key", "test.example", sk, pk)

	tests := []struct {
		name  string
		check func(t *testing.T)
	}{
		{"nix-store --delete", func(t *testing.T) {
			queryTwice(t, s, one)
			nixtest.Run(t, nil, "nix-store", "--store", url, "--delete", one.String())
			wantInvalid(t, s, one)
		}},
		{"nix-store --add", func(t *testing.T) {
			wantInvalid(t, s, one)
			nixAdd("one")
			if ok, err := s.IsValidPath(ctx, one); !ok || err != nil {
				t.Errorf("IsValidPath(%s) after nix-store --add = %v, %v", one, ok, err)
			}
			queryTwice(t, s, one)
		}},
		{"nix store sign", func(t *testing.T) {
			if info := queryTwice(t, s, two); len(info.Signatures) != 0 {
				t.Fatalf("signatures before signing: %q", info.Signatures)
			}
			nixtest.Run(t, nil, "nix", "--extra-experimental-features", "nix-command", "store", "sign",
				"--store", url, "--key-file", sk, two.String())
			if info := queryTwice(t, s, two); len(info.Signatures) != 1 || !strings.HasPrefix(info.Signatures[0], "test.example:") {
				t.Errorf("signatures after nix store sign: %q", info.Signatures)
			}
		}},
		{"nix-store --gc", func(t *testing.T) {
			queryTwice(t, s, one)
			queryTwice(t, s, two)
			nixtest.Run(t, nil, "nix-store", "--store", url, "--gc")
			wantInvalid(t, s, one)
			wantInvalid(t, s, two)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, tt.check)
	}
	if s.infos.shm == nil {
		t.Error("the store had no cache")
	}
}

// TestInfoCacheWriteThrough adds paths of every shape and checks that the
// infos the commit put in the cache are the ones the database gives back,
// and that a commit followed by another's is not put.
func TestInfoCacheWriteThrough(t *testing.T) {
	ctx := context.Background()
	s, root := newStore(t)
	if ok, err := s.IsValidPath(ctx, d0(s.StoreDir())); ok || err != nil { // starts the cache
		t.Fatal(ok, err)
	}
	src := t.TempDir()
	writeTree(t, src, map[string]string{"dep": "dep\n", "main/x": "x\n", "drv": "drv\n", "plain": "plain\n"})
	dep := addFiles(t, s, map[string]string{"dep2": "dep2\n"})[0]
	narDep, narMain := narOf(t, filepath.Join(src, "dep")), narOf(t, filepath.Join(src, "main"))
	infoDep := infoFor(t, s.StoreDir(), "dep", narDep)
	infoMain := infoFor(t, s.StoreDir(), "main", narMain, dep, infoDep.Path, dep) // unsorted, a duplicate
	infoMain.References = append(infoMain.References, infoMain.Path)              // self-reference
	infoMain.Deriver = infoFor(t, s.StoreDir(), "main.drv", narMain).Path
	infoMain.Signatures = []string{"b.example:Yg==", "a.example:YQ==", "b.example:Yg=="}
	infoMain.Ultimate = true
	batch := s.NewBatch()
	for _, x := range []struct {
		info *store.PathInfo
		nar  []byte
	}{{infoDep, narDep}, {infoMain, narMain}} {
		if err := batch.AddNar(ctx, x.info, bytes.NewReader(x.nar), store.AddNarOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := batch.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	added := []storepath.StorePath{dep, infoDep.Path, infoMain.Path}
	added = append(added, addFiles(t, s, map[string]string{"plain": "plain\n"})...)
	for _, p := range added {
		t.Run(p.Name(), func(t *testing.T) {
			s.infos.mu.Lock()
			cached, ok := s.infos.m[p]
			s.infos.mu.Unlock()
			if !ok || cached == nil {
				t.Fatal("not in the cache after its commit")
			}
			got, err := s.QueryPathInfo(ctx, p)
			if err != nil {
				t.Fatal(err)
			}
			want, err := s.queryPathInfoDB(ctx, p)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("from the cache:\n%+v\nfrom the database:\n%+v", got, want)
			}
		})
	}

	// Two commits between the stamp and the check: nothing is put.
	other := openRoot(t, root)
	before := s.infos.writeStamp()
	addFiles(t, other, map[string]string{"o1": "1\n"})
	addFiles(t, other, map[string]string{"o2": "2\n"})
	ghost := &pending{info: infoFor(t, s.StoreDir(), "ghost", narDep)}
	s.infos.registered(before, []*pending{ghost})
	wantInvalid(t, s, ghost.info.Path)
}

// TestInfoCacheConcurrent has readers hammer a path while another store
// deletes and re-adds it: once a delete has returned, no lookup that starts
// afterwards may find the path, whatever the readers put in the cache
// meanwhile. Run it with -race.
func TestInfoCacheConcurrent(t *testing.T) {
	ctx := context.Background()
	s, root := newStore(t)
	other := openRoot(t, root)
	p := addFiles(t, s, map[string]string{"hot": "hot\n"})[0]
	stop := make(chan struct{})
	done := make(chan struct{})
	for range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for {
				select {
				case <-stop:
					return
				default:
				}
				s.QueryPathInfo(ctx, p)
				s.IsValidPath(ctx, p)
			}
		}()
	}
	for i := range 100 {
		if _, err := other.Delete(ctx, []storepath.StorePath{p}, DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if info, err := s.QueryPathInfo(ctx, p); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("round %d: QueryPathInfo after the delete = %v, %v", i, info, err)
		}
		if ok, err := s.IsValidPath(ctx, p); ok || err != nil {
			t.Fatalf("round %d: IsValidPath after the delete = %v, %v", i, ok, err)
		}
		addFiles(t, other, map[string]string{"hot": "hot\n"})
		if _, err := s.QueryPathInfo(ctx, p); err != nil {
			t.Fatalf("round %d: QueryPathInfo after the add: %v", i, err)
		}
	}
	close(stop)
	for range 4 {
		<-done
	}
}
