package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
)

func TestInstanceCA(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		if _, ok, err := s.InstanceCA(ctx); ok || err != nil {
			t.Fatalf("InstanceCA(new store) = ok %v, %v; want none", ok, err)
		}
		if _, err := s.UpdateInstanceCA(ctx, func(InstanceCA) (string, error) { return "x", nil }); !errors.Is(err, ErrNotFound) {
			t.Errorf("UpdateInstanceCA(no CA) = %v, want ErrNotFound", err)
		}
		rev := revision(t, s)
		ca := must(s.CreateInstanceCA(ctx, "first"))(t)
		if ca != (InstanceCA{State: "first", Generation: 1}) {
			t.Errorf("CreateInstanceCA(first) = %+v, want first at generation 1", ca)
		}
		if got := revision(t, s); got != rev+1 {
			t.Errorf("creating the CA: revision %d → %d, want +1", rev, got)
		}
		// A second create finds the first and changes nothing.
		if ca := must(s.CreateInstanceCA(ctx, "second"))(t); ca != (InstanceCA{State: "first", Generation: 1}) {
			t.Errorf("CreateInstanceCA(second) = %+v, want the first CA", ca)
		}
		if got := revision(t, s); got != rev+1 {
			t.Errorf("finding the CA bumped the revision: %d → %d", rev+1, got)
		}

		rev = revision(t, s)
		next := must(s.UpdateInstanceCA(ctx, func(cur InstanceCA) (string, error) { return cur.State + "+rotated", nil }))(t)
		if next != (InstanceCA{State: "first+rotated", Generation: 2}) {
			t.Errorf("UpdateInstanceCA = %+v, want first+rotated at generation 2", next)
		}
		if got, ok, err := s.InstanceCA(ctx); !ok || err != nil || got != next {
			t.Errorf("InstanceCA() = %+v, %v, %v; want %+v", got, ok, err, next)
		}
		if got := revision(t, s); got != rev+1 {
			t.Errorf("updating the CA: revision %d → %d, want +1", rev, got)
		}
		// A refused update changes nothing.
		refused := errors.New("not now")
		if _, err := s.UpdateInstanceCA(ctx, func(InstanceCA) (string, error) { return "", refused }); !errors.Is(err, refused) {
			t.Errorf("UpdateInstanceCA(refused) = %v, want the update's error", err)
		}
		if got, _, _ := s.InstanceCA(ctx); got != next || revision(t, s) != rev+1 {
			t.Errorf("after a refused update: %+v at revision %d, want %+v at %d", got, revision(t, s), next, rev+1)
		}
	})
}

// TestInstanceCAAcrossControllers: controllers sharing a database that
// create the CA at once all end up with the same one, and rotations they
// run at once take turns.
func TestInstanceCAAcrossControllers(t *testing.T) {
	forEachEngine(t, func(t *testing.T, url string) {
		ctx := t.Context()
		stores := []*Store{openStore(t, url), openStore(t, url), openStore(t, url)}
		const n = 12
		got := make([]InstanceCA, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				var err error
				got[i], err = stores[i%len(stores)].CreateInstanceCA(context.WithoutCancel(ctx), fmt.Sprint("ca-", i))
				if err != nil {
					t.Errorf("CreateInstanceCA #%d = %v", i, err)
				}
			})
		}
		wg.Wait()
		for i := range n {
			if got[i] != got[0] || got[i].Generation != 1 {
				t.Fatalf("CreateInstanceCA #%d = %+v, #0 = %+v; want one CA at generation 1 for all", i, got[i], got[0])
			}
		}
		rev := revision(t, stores[0])
		seen := make(chan int64, n)
		for i := range n {
			wg.Go(func() {
				_, err := stores[i%len(stores)].UpdateInstanceCA(context.WithoutCancel(ctx), func(cur InstanceCA) (string, error) {
					seen <- cur.Generation
					return fmt.Sprintf("%s>%d", cur.State, i), nil
				})
				if err != nil {
					t.Errorf("UpdateInstanceCA #%d = %v", i, err)
				}
			})
		}
		wg.Wait()
		close(seen)
		gens := map[int64]bool{}
		for g := range seen {
			if gens[g] {
				t.Errorf("two updates saw generation %d: they did not take turns", g)
			}
			gens[g] = true
		}
		final, _, _ := stores[2].InstanceCA(ctx)
		if final.Generation != 1+n || revision(t, stores[1]) != rev+n {
			t.Errorf("after %d updates: generation %d, revision +%d; want %d, +%d", n, final.Generation, revision(t, stores[1])-rev, 1+n, n)
		}
	})
}

func TestSetAppRequireClientCert(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		f := newFixture(t, s)
		app := f.apps(t, "backend")["backend"]
		if a := must(s.Apps(ctx, AppFilter{GUIDs: []string{app}}))(t); a[0].RequireClientCert {
			t.Errorf("a new app requires client certificates")
		}
		rev := revision(t, s)
		a := must(s.SetAppRequireClientCert(ctx, app, true))(t)
		if !a.RequireClientCert || a.GUID != app {
			t.Errorf("SetAppRequireClientCert(true) = %+v", a)
		}
		if got := revision(t, s); got != rev+1 {
			t.Errorf("SetAppRequireClientCert(true): revision %d → %d, want +1", rev, got)
		}
		must(s.SetAppRequireClientCert(ctx, app, true))(t)
		if got := revision(t, s); got != rev+1 {
			t.Errorf("setting the same value again bumped the revision: %d → %d", rev+1, got)
		}
		if a := must(s.Apps(ctx, AppFilter{GUIDs: []string{app}}))(t); !a[0].RequireClientCert {
			t.Errorf("Apps() after SetAppRequireClientCert(true): RequireClientCert = false")
		}
		if a := must(s.SetAppRequireClientCert(ctx, app, false))(t); a.RequireClientCert || revision(t, s) != rev+2 {
			t.Errorf("SetAppRequireClientCert(false) = %+v at revision %d, want false at %d", a, revision(t, s), rev+2)
		}
		if _, err := s.SetAppRequireClientCert(ctx, "no-such-app", true); !errors.Is(err, ErrNotFound) {
			t.Errorf("SetAppRequireClientCert(unknown app) = %v, want ErrNotFound", err)
		}
	})
}
