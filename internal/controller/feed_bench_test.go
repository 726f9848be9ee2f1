package controller

import (
	"context"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/identity"
	"github.com/trellis-c2c/trellis/internal/ipam"
	"github.com/trellis-c2c/trellis/internal/policy"
	"github.com/trellis-c2c/trellis/internal/store"
	"github.com/trellis-c2c/trellis/internal/store/storetest"
)

// BenchmarkCellFeedCompile measures what one policy add costs the cells'
// feed at Cloud Foundry's validated scale — 50 cells, 20,000 apps, 60,000
// policies, 1,000 attached instances — against 1,000 policies, from the
// write to every cell's state encoded (what a policy add waits for before
// any cell hears of it): "snapshot" is the feed before it kept a model (one
// snapshot of the store and one compile of every cell), "model" the feed
// now (the changes since the model's revision, applied, and the affected
// cells compiled), on the same store in the same run:
//
//	TRELLIS_TEST_POSTGRES=postgres://… go test -run '^$' -bench CellFeedCompile -benchtime 10x ./internal/controller/
func BenchmarkCellFeedCompile(b *testing.B) {
	for _, engine := range storetest.Engines {
		for _, nPolicies := range []int{1000, 60000} {
			b.Run(fmt.Sprintf("%s/policies=%d", engine, nPolicies), func(b *testing.B) {
				benchFeed(b, storetest.Open(b, engine), nPolicies)
			})
		}
	}
}

// compileFromSnapshot is what the feed did on every change before it kept
// a model: one snapshot, one compile of every cell, every cell encoded.
func compileFromSnapshot(ctx context.Context, s *Server) error {
	snap, err := s.store.Snapshot(ctx, store.SnapshotFilter{})
	if err != nil {
		return err
	}
	in, err := s.compileInput(ctx, snap)
	if err != nil {
		return err
	}
	enc := newStateEncoder()
	for _, st := range policy.Compile(in) {
		if _, err := enc.encode(snap.Revision, &st); err != nil {
			return err
		}
	}
	return nil
}

// scaleFeed loads st with Cloud Foundry's validated scale (50 cells,
// 20,000 apps, nPolicies policies, 1,000 instances: 20 per cell, of the
// first 1,000 apps) and returns a server whose feed compiled it, the apps
// and the cells.
func scaleFeed(b *testing.B, st *store.Store, nPolicies int) (*Server, []string, []store.Cell) {
	ctx := context.Background()
	const nCells, nApps, nInstances = 50, 20000, 1000
	pool, _ := ipam.NewPool(ipam.DefaultOverlay, ipam.DefaultSubnetPrefix)
	if err := st.OverlaySettings(ctx, pool); err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if _, err := ensureInstanceCA(ctx, st, log); err != nil {
		b.Fatal(err)
	}
	apps := loadApps(b, st, nApps, nPolicies)
	cells := make([]store.Cell, nCells)
	for i := range cells {
		hash := []byte(fmt.Sprintf("join-%d", i))
		if err := st.CreateJoinToken(ctx, hash, time.Now().Add(time.Hour)); err != nil {
			b.Fatal(err)
		}
		c, err := st.JoinCell(ctx, hash, fmt.Sprintf("cell%d", i), netip.AddrFrom4([4]byte{198, 51, 100, byte(10 + i)}), pool)
		if err != nil {
			b.Fatal(err)
		}
		cells[i] = c
	}
	// 20 instances per cell, of the first 1,000 apps (each in policies).
	for i := range nInstances {
		c := cells[i%nCells]
		ip := c.Subnet.Addr().Next().Next()
		for range i / nCells {
			ip = ip.Next()
		}
		if err := st.RegisterInstance(ctx, c.GUID, store.Instance{GUID: uuid.NewString(), AppGUID: apps[i], IP: ip, ContainerID: fmt.Sprint(i)}); err != nil {
			b.Fatal(err)
		}
	}
	ca, err := identity.LoadOrCreateCA(b.TempDir(), "bench CA")
	if err != nil {
		b.Fatal(err)
	}
	s := NewServer(st, ca, pool, InstanceIdentity{}, log)
	if err := s.feed.compileAtLeast(ctx, 0); err != nil {
		b.Fatal(err)
	}
	return s, apps, cells
}

func benchFeed(b *testing.B, st *store.Store, nPolicies int) {
	ctx := context.Background()
	const nInstances = 1000
	s, apps, _ := scaleFeed(b, st, nPolicies)
	port := 1000
	for _, mode := range []string{"snapshot", "model"} {
		b.Run(mode, func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				port++
				p := store.Policy{SourceApp: apps[i%nInstances], DestApp: apps[(i+7)%nInstances], Protocol: "udp", StartPort: port, EndPort: port}
				if err := st.CreatePolicies(ctx, []store.Policy{p}, store.CreatePoliciesOptions{}); err != nil {
					b.Fatal(err)
				}
				rev, err := st.Revision(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if mode == "snapshot" {
					err = compileFromSnapshot(ctx, s)
				} else {
					err = s.feed.compileAtLeast(ctx, rev)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			if mode == "model" {
				b.ReportMetric(testutil.ToFloat64(s.feed.rebuilds), "rebuilds")
			}
		})
	}
}

// BenchmarkAPIWriteWatched measures an API write through HTTPS (a policy
// create between two apps running on one cell; an app create, which
// touches no cell) until every cell's state is brought to its revision,
// with 0, 10 and 40 cells (each running 10 instances) watching the feed,
// on 1,000 apps and 3,000 policies: "snapshot" compiles every cell from a
// snapshot on every change, as the feed did before it kept a model;
// "model" is the feed now. Same store, same run:
//
//	TRELLIS_TEST_POSTGRES=postgres://… go test -run '^$' -bench APIWriteWatched ./internal/controller/
func BenchmarkAPIWriteWatched(b *testing.B) {
	for _, engine := range storetest.Engines {
		for _, nCells := range []int{0, 10, 40} {
			b.Run(fmt.Sprintf("%s/cells=%d", engine, nCells), func(b *testing.B) {
				benchAPIWatched(b, storetest.Open(b, engine), nCells)
			})
		}
	}
}

func benchAPIWatched(b *testing.B, st *store.Store, nCells int) {
	ctx := context.Background()
	pool, _ := ipam.NewPool(ipam.DefaultOverlay, ipam.DefaultSubnetPrefix)
	if err := st.OverlaySettings(ctx, pool); err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if _, err := ensureInstanceCA(ctx, st, log); err != nil {
		b.Fatal(err)
	}
	apps := loadApps(b, st, 1000, 3000)
	for i := range nCells {
		hash := []byte(fmt.Sprintf("join-%d", i))
		if err := st.CreateJoinToken(ctx, hash, time.Now().Add(time.Hour)); err != nil {
			b.Fatal(err)
		}
		c, err := st.JoinCell(ctx, hash, fmt.Sprintf("cell%d", i), netip.AddrFrom4([4]byte{198, 51, 100, byte(10 + i)}), pool)
		if err != nil {
			b.Fatal(err)
		}
		ip := c.Subnet.Addr().Next()
		for j := range 10 {
			ip = ip.Next()
			if err := st.RegisterInstance(ctx, c.GUID, store.Instance{GUID: uuid.NewString(), AppGUID: apps[10*i+j], IP: ip, ContainerID: fmt.Sprint(i, j)}); err != nil {
				b.Fatal(err)
			}
		}
	}
	ca, err := identity.LoadOrCreateCA(b.TempDir(), "bench CA")
	if err != nil {
		b.Fatal(err)
	}
	s := NewServer(st, ca, pool, InstanceIdentity{}, log)
	srv := httptest.NewUnstartedServer(s)
	srv.StartTLS()
	defer srv.Close()
	value, hash := NewToken()
	if _, err := st.CreateToken(ctx, store.Token{Scope: ScopeAdmin}, hash); err != nil {
		b.Fatal(err)
	}
	client := srv.Client()
	call := func(b *testing.B, path, body string) {
		req, _ := http.NewRequest("POST", srv.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+value)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 && resp.StatusCode != 201 {
			b.Fatalf("POST %s = %d", path, resp.StatusCode)
		}
	}
	if nCells > 0 {
		s.feed.join() // the cells' polls keep the watch running
		defer s.feed.leave()
	}
	spaces, _ := st.Spaces(ctx, store.SpaceFilter{Names: []string{"default"}})
	n := 0
	for _, mode := range []string{"snapshot", "model"} {
		for _, write := range []string{"CreatePolicy", "CreateApp"} {
			b.Run(mode+"/"+write, func(b *testing.B) {
				s.feed.compiling.Lock()
				s.feed.alwaysRebuild = mode == "snapshot"
				s.feed.compiling.Unlock()
				for b.Loop() {
					n++
					if write == "CreatePolicy" {
						src, dst := apps[n%max(1, 10*nCells)], apps[(n+1)%max(1, 10*nCells)]
						call(b, policiesPath, policyBody([5]any{src, dst, "udp", 1000 + n, 1000 + n}))
					} else {
						call(b, "/v3/apps", fmt.Sprintf(`{"name":"new-%d","relationships":{"space":{"data":{"guid":%q}}}}`, n, spaces[0].GUID))
					}
					if nCells == 0 {
						continue // no cell watches: nothing compiles
					}
					rev, err := st.Revision(ctx)
					if err != nil {
						b.Fatal(err)
					}
					if err := s.feed.compileAtLeast(ctx, rev); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkRouteChange measures what a route change costs the controller
// at Cloud Foundry's validated scale (50 cells, 20,000 apps, 60,000
// policies, 1,000 attached instances): an internal route mapped to and
// unmapped from a running app, each change brought into the feed and
// answered to every cell's poll as a delta from the state it had (what
// the 50 agents' long polls cost it: every cell's DNS answers every
// route, so every cell is woken). Per op: one change and its 50 answers.
//
//	go test -run '^$' -bench 'RouteChange/sqlite' -benchtime 40x ./internal/controller/
func BenchmarkRouteChange(b *testing.B) {
	for _, engine := range storetest.Engines {
		b.Run(engine, func(b *testing.B) {
			benchRouteChange(b, storetest.Open(b, engine))
		})
	}
}

func benchRouteChange(b *testing.B, st *store.Store) {
	ctx := context.Background()
	s, apps, cells := scaleFeed(b, st, 60000)
	spaces, _ := st.Spaces(ctx, store.SpaceFilter{Names: []string{"default"}})
	domains, err := st.Domains(ctx, store.DomainFilter{Names: []string{store.DefaultDomain}})
	if err != nil || len(domains) == 0 {
		b.Fatalf("domain %s: %v", store.DefaultDomain, err)
	}
	route, err := st.CreateRoute(ctx, spaces[0].GUID, domains[0].GUID, "bench")
	if err != nil {
		b.Fatal(err)
	}
	// What each cell's agent holds: the entry it was last answered with.
	held := map[string]*feedEntry{}
	update := func() {
		rev, err := st.Revision(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := s.feed.compileAtLeast(ctx, rev); err != nil {
			b.Fatal(err)
		}
		s.feed.mu.Lock()
		entries := s.feed.cells
		s.feed.mu.Unlock()
		for _, c := range cells {
			e, old := entries[c.GUID], held[c.GUID]
			if old != nil && old != e {
				var n countWriter
				delta, err := e.answer(&n, &s.feed.differ, old.rev, hex.EncodeToString(old.sum[:]), true)
				if err != nil || !delta {
					b.Fatalf("answer cell %s: delta %v, %v", c.Name, delta, err)
				}
			}
			held[c.GUID] = e
		}
	}
	update()
	for i := 0; b.Loop(); i++ {
		b.StopTimer() // the store's write is not the feed's
		if i%2 == 0 {
			_, err = st.AddRouteDestinations(ctx, route.GUID, []string{apps[1]})
		} else {
			err = st.RemoveRouteDestination(ctx, route.GUID, apps[1])
		}
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		update()
	}
}

// countWriter counts what is written to it.
type countWriter int64

func (w *countWriter) Write(p []byte) (int, error) {
	*w += countWriter(len(p))
	return len(p), nil
}

// BenchmarkRouteChangePolled measures a route change as 50 cells' agents
// see it: 50 api.CellClients long-poll the controller over mutual TLS
// with deltas, as agents do; per op, one route change written to the
// store and the time until every cell holds its revision (the
// controller's whole path: the feed, the 50 answers, the 50 polls that
// follow, each with its handler's own work). A small store: the cost
// measured is the per-poll one.
//
//	go test -run '^$' -bench RouteChangePolled -benchtime 100x ./internal/controller/
func BenchmarkRouteChangePolled(b *testing.B) {
	const nCells = 50
	e := newEnv(b, "sqlite")
	ctx := b.Context()
	space := e.defaultSpace()
	app := e.createApp(space, "backend")
	serverCA := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.srv.Certificate().Raw}))
	held := make(chan int64, nCells)
	var polls sync.WaitGroup
	defer polls.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for i := range nCells {
		_, c := e.joinCell(fmt.Sprintf("cell%d", i), fmt.Sprintf("198.51.100.%d", 10+i))
		if i == 0 {
			e.register(c, uuid.NewString(), app, 0, "10.255.1.2")
		}
		agent, err := api.NewCellClient([]string{e.srv.URL}, serverCA, c.Transport.(*http.Transport).TLSClientConfig.Certificates[0])
		if err != nil {
			b.Fatal(err)
		}
		polls.Go(func() {
			var have *api.CellState
			for ctx.Err() == nil {
				st, err := agent.CellStateFrom(ctx, have, 30*time.Second)
				if err != nil {
					continue
				}
				if have == nil || st.Revision > have.Revision {
					select {
					case held <- st.Revision:
					case <-ctx.Done():
					}
				}
				have = &st
			}
		})
	}
	rt := e.createRoute(e.admin, space, "bench", "apps.internal")
	for i := 0; b.Loop(); i++ {
		var err error
		if i%2 == 0 {
			_, err = e.store.AddRouteDestinations(ctx, rt.GUID, []string{app})
		} else {
			err = e.store.RemoveRouteDestination(ctx, rt.GUID, app)
		}
		if err != nil {
			b.Fatal(err)
		}
		rev, err := e.store.Revision(ctx)
		if err != nil {
			b.Fatal(err)
		}
		for n := 0; n < nCells; { // each cell's first revision at or after rev
			if <-held >= rev {
				n++
			}
		}
	}
}
