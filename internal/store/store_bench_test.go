package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// The benchmarks run on a store of Cloud Foundry's published scale (20,000
// apps, 60,000 policies), seeded once per engine per process:
//
//	go test -run '^$' -bench . ./internal/store/

const (
	benchApps     = 20000
	benchPolicies = 60000
)

// benchStore is a seeded store shared by the benchmarks of one engine.
type benchStore struct {
	s       *Store
	apps    []string
	created int // policies created by BenchmarkCreatePolicy so far
	cleanup func()
}

var bench struct {
	sync.Mutex
	stores map[string]*benchStore
}

func TestMain(m *testing.M) {
	code := m.Run()
	for _, bs := range bench.stores {
		bs.cleanup()
	}
	os.Exit(code)
}

// seeded returns the seeded store of engine, seeding it on first use.
func seeded(b *testing.B, engine string) *benchStore {
	b.Helper()
	bench.Lock()
	defer bench.Unlock()
	if bs := bench.stores[engine]; bs != nil {
		return bs
	}
	ctx := context.Background()
	var url string
	var drop func() error
	if engine == "sqlite" {
		dir, err := os.MkdirTemp("", "trellis-bench-")
		if err != nil {
			b.Fatal(err)
		}
		url = filepath.Join(dir, "trellis.db")
		drop = func() error { return os.RemoveAll(dir) }
	} else {
		var err error
		if url, drop, err = createPostgresDB(ctx, postgresServer(b)); err != nil {
			b.Fatal(err)
		}
	}
	s, err := Open(ctx, url)
	if err != nil {
		drop()
		b.Fatal(err)
	}
	bs := &benchStore{s: s, cleanup: func() { s.Close(); drop() }}
	if bench.stores == nil {
		bench.stores = make(map[string]*benchStore)
	}
	bench.stores[engine] = bs

	spaces, err := s.Spaces(ctx, SpaceFilter{Names: []string{DefaultSpace}})
	if err != nil {
		b.Fatal(err)
	}
	if bs.apps, err = seedApps(ctx, s, spaces[0].GUID, benchApps); err != nil {
		b.Fatal(err)
	}
	// Policies through the public API, 1000 a transaction: app i is the
	// source of 3 policies, on ports 8080-8082, to scattered destinations.
	const batch = 1000
	for k := 0; k < benchPolicies; k += batch {
		ps := make([]Policy, 0, batch)
		for i := k; i < k+batch; i++ {
			src, dst := bs.apps[i%benchApps], bs.apps[(i*7919+1)%benchApps]
			ps = append(ps, tcp(src, dst, 8080+i/benchApps))
		}
		if err := s.CreatePolicies(ctx, ps, CreatePoliciesOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	return bs
}

// seedApps creates n apps in one transaction, faster than n CreateApp calls.
func seedApps(ctx context.Context, s *Store, space string, n int) ([]string, error) {
	apps := make([]string, n)
	err := s.write(ctx, func(r runner) (bool, error) {
		ins, err := r.prepare(ctx, "INSERT INTO apps (guid, space_guid, name, state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)")
		if err != nil {
			return false, err
		}
		defer ins.Close()
		t := micros(now())
		for i := range apps {
			apps[i] = newGUID()
			if _, err := ins.ExecContext(ctx, apps[i], space, fmt.Sprintf("app-%05d", i), "STOPPED", t, t); err != nil {
				return false, err
			}
		}
		return true, nil
	})
	return apps, err
}

func forEachBenchStore(b *testing.B, bench func(b *testing.B, bs *benchStore)) {
	for _, engine := range engines {
		b.Run(engine, func(b *testing.B) { bench(b, seeded(b, engine)) })
	}
}

// BenchmarkCreatePolicy creates one new policy per iteration, each between
// apps that already have tags.
func BenchmarkCreatePolicy(b *testing.B) {
	forEachBenchStore(b, func(b *testing.B, bs *benchStore) {
		ctx := b.Context()
		b.ReportAllocs()
		for b.Loop() {
			c := bs.created
			bs.created++
			ps := []Policy{{
				SourceApp: bs.apps[c%benchApps],
				DestApp:   bs.apps[(c*31+17)%benchApps],
				Protocol:  "udp",
				StartPort: 1 + c/benchApps,
				EndPort:   1 + c/benchApps,
			}}
			if err := bs.s.CreatePolicies(ctx, ps, CreatePoliciesOptions{MaxPerSource: 150}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkListAllPolicies lists every policy, as an agent's full resync.
func BenchmarkListAllPolicies(b *testing.B) {
	forEachBenchStore(b, func(b *testing.B, bs *benchStore) {
		ctx := b.Context()
		b.ReportAllocs()
		for b.Loop() {
			ps, err := bs.s.Policies(ctx, PolicyFilter{})
			if err != nil {
				b.Fatal(err)
			}
			if len(ps) < benchPolicies {
				b.Fatalf("Policies() = %d policies, want at least %d", len(ps), benchPolicies)
			}
		}
	})
}

// BenchmarkListAppPolicies lists the policies of one app (as source or
// destination), as the API's ?id=APP.
func BenchmarkListAppPolicies(b *testing.B) {
	forEachBenchStore(b, func(b *testing.B, bs *benchStore) {
		ctx := b.Context()
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			app := bs.apps[i%benchApps]
			i++
			ps, err := bs.s.Policies(ctx, PolicyFilter{IDs: []string{app}})
			if err != nil {
				b.Fatal(err)
			}
			if len(ps) == 0 {
				b.Fatalf("Policies(IDs: %s) = none, want some", app)
			}
		}
	})
}
