package local

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"cairn/internal/nixhash"
	"cairn/internal/store"
	"cairn/internal/storepath"
	"cairn/internal/testutil/nixtest"
)

func drvOutput(t *testing.T, seed, out string) store.DrvOutput {
	t.Helper()
	return store.DrvOutput{DrvHash: nixhash.Sum(nixhash.SHA256, []byte(seed)), Output: out}
}

func TestRealisations(t *testing.T) {
	ctx := context.Background()
	s, root := newStore(t)
	a, err := s.AddText(ctx, "a", "a", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.AddText(ctx, "b", "b", nil)
	if err != nil {
		t.Fatal(err)
	}
	idA, idB := drvOutput(t, "drv a", "out"), drvOutput(t, "drv b", "dev")

	// A store that never had a realisation answers nil and grows no tables.
	if r, err := s.QueryRealisation(ctx, idA); err != nil || r != nil {
		t.Fatalf("query in a fresh store: %v, %v", r, err)
	}
	if _, err := os.Stat(filepath.Join(root, "nix/var/nix/db/ca-schema")); !os.IsNotExist(err) {
		t.Fatalf("ca-schema after a query: %v", err)
	}

	if err := s.RegisterRealisation(ctx, &store.Realisation{ID: idA, OutPath: a.Path, Signatures: []string{"k2:x", "k1:y"}}); err != nil {
		t.Fatal(err)
	}
	// Again with another signature: the signatures merge.
	if err := s.RegisterRealisation(ctx, &store.Realisation{ID: idA, OutPath: a.Path, Signatures: []string{"k3:z", "k1:y"}}); err != nil {
		t.Fatal(err)
	}
	dep := map[store.DrvOutput]storepath.StorePath{idA: a.Path}
	if err := s.RegisterRealisation(ctx, &store.Realisation{ID: idB, OutPath: b.Path, Dependent: dep}); err != nil {
		t.Fatal(err)
	}
	got, err := s.QueryRealisation(ctx, idA)
	if err != nil {
		t.Fatal(err)
	}
	if want := (&store.Realisation{ID: idA, OutPath: a.Path, Signatures: []string{"k1:y", "k2:x", "k3:z"}}); !reflect.DeepEqual(got, want) {
		t.Errorf("realisation of A:\n got %+v\nwant %+v", got, want)
	}
	got, err = s.QueryRealisation(ctx, idB)
	if err != nil {
		t.Fatal(err)
	}
	if want := (&store.Realisation{ID: idB, OutPath: b.Path, Signatures: []string{}, Dependent: dep}); !reflect.DeepEqual(got, want) {
		t.Errorf("realisation of B:\n got %+v\nwant %+v", got, want)
	}
	if b, err := os.ReadFile(filepath.Join(root, "nix/var/nix/db/ca-schema")); err != nil || string(b) != "3" {
		t.Errorf("ca-schema: %q, %v", b, err)
	}

	for _, c := range []struct {
		name string
		r    store.Realisation
		want string
	}{
		{"other path", store.Realisation{ID: idA, OutPath: b.Path}, "but we already have another one locally"},
		{"unknown dependency", store.Realisation{ID: drvOutput(t, "c", "out"), OutPath: b.Path,
			Dependent: map[store.DrvOutput]storepath.StorePath{drvOutput(t, "nowhere", "out"): a.Path}}, "depends on the non existent"},
		{"dependency elsewhere", store.Realisation{ID: drvOutput(t, "d", "out"), OutPath: b.Path,
			Dependent: map[store.DrvOutput]storepath.StorePath{idA: b.Path}}, "doesn't match what we have locally"},
		{"invalid path", store.Realisation{ID: drvOutput(t, "e", "out"),
			OutPath: mustParse(t, "/nix/store/00000000000000000000000000000000-gone")}, "is not valid"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := s.RegisterRealisation(ctx, &c.r)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
			if r, err := s.QueryRealisation(ctx, c.r.ID); err != nil || (r != nil && c.r.ID != idA) {
				t.Errorf("a refused realisation was kept: %+v, %v", r, err)
			}
		})
	}
}

func mustParse(t *testing.T, p string) storepath.StorePath {
	t.Helper()
	sp, err := storepath.Parse(p)
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

// TestCASchemaMatchesNix compares the realisation tables Cairn creates with
// those Nix 2.8 creates under the ca-derivations feature, column by column, and
// checks each opens the other's store with them.
func TestCASchemaMatchesNix(t *testing.T) {
	nixtest.Require(t, "nix-store")
	ctx := context.Background()
	hello := filepath.Join(t.TempDir(), "hello")
	os.WriteFile(hello, []byte("hello\n"), 0o644)
	ca := []string{"--option", "experimental-features", "nix-command ca-derivations"}

	nixRoot := filepath.Join(t.TempDir(), "nix")
	nixtest.Run(t, nil, "nix-store", append([]string{"--store", storeURL(nixRoot), "--add", hello}, ca...)...)
	cairn, cairnRoot := newStore(t)
	p, err := cairn.AddText(ctx, "x", "x", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := cairn.RegisterRealisation(ctx, &store.Realisation{ID: drvOutput(t, "x", "out"), OutPath: p.Path}); err != nil {
		t.Fatal(err)
	}
	want, got := describeCATables(t, nixRoot), describeCATables(t, cairnRoot)
	if want == "" || got != want {
		t.Errorf("realisation tables differ:\n cairn %s\n   nix %s", got, want)
	}

	// Nix with the feature accepts Cairn's tables and version file...
	nixtest.Run(t, nil, "nix-store", append([]string{"--store", storeURL(cairnRoot), "--verify"}, ca...)...)
	// ...and Cairn Nix's.
	s := openRoot(t, nixRoot)
	added := strings.TrimSpace(nixtest.Run(t, nil, "nix-store", "--store", storeURL(nixRoot), "--add", hello))
	id := drvOutput(t, "hello", "out")
	if err := s.RegisterRealisation(ctx, &store.Realisation{ID: id, OutPath: mustParse(t, added)}); err != nil {
		t.Fatal(err)
	}
	if r, err := s.QueryRealisation(ctx, id); err != nil || r == nil || r.OutPath.String() != added {
		t.Errorf("realisation in Nix's store: %+v, %v", r, err)
	}
}

// describeCATables lists the realisation tables' columns, indexes and foreign keys.
func describeCATables(t *testing.T, root string) string {
	t.Helper()
	db, err := sql.Open("sqlite", filepath.Join(root, "nix/var/nix/db/db.sqlite")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var b strings.Builder
	for _, table := range []string{"Realisations", "RealisationsRefs"} {
		for _, q := range []string{"pragma table_info(%s)", "pragma index_list(%s)", "pragma foreign_key_list(%s)"} {
			rows, err := db.Query(fmt.Sprintf(q, table))
			if err != nil {
				t.Fatal(err)
			}
			cols, _ := rows.Columns()
			for rows.Next() {
				vals := make([]any, len(cols))
				ptrs := make([]any, len(cols))
				for i := range vals {
					ptrs[i] = &vals[i]
				}
				rows.Scan(ptrs...)
				fmt.Fprintf(&b, "%s %v; ", table, vals)
			}
			rows.Close()
		}
	}
	return b.String()
}
