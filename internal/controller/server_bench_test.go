package controller

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/trellis-c2c/trellis/internal/identity"
	"github.com/trellis-c2c/trellis/internal/ipam"
	"github.com/trellis-c2c/trellis/internal/store"
	"github.com/trellis-c2c/trellis/internal/store/storetest"
)

// BenchmarkAPI measures the policy API end to end — HTTPS, auth, JSON and
// the store, on SQLite and on PostgreSQL — at Cloud Foundry's validated
// scale (20,000 apps, 60,000 policies):
//
//	TRELLIS_TEST_POSTGRES=postgres://… go test -run '^$' -bench API ./internal/controller/
//
// The store's own benchmarks are in internal/store.
func BenchmarkAPI(b *testing.B) {
	for _, engine := range storetest.Engines {
		b.Run(engine, func(b *testing.B) { benchAPI(b, storetest.Open(b, engine)) })
	}
}

func benchAPI(b *testing.B, st *store.Store) {
	ctx := context.Background()
	const nApps, nPolicies = 20000, 60000
	apps := loadApps(b, st, nApps, nPolicies)
	ca, err := identity.LoadOrCreateCA(b.TempDir(), "bench CA")
	if err != nil {
		b.Fatal(err)
	}
	pool, _ := ipam.NewPool(ipam.DefaultOverlay, ipam.DefaultSubnetPrefix)
	srv := httptest.NewUnstartedServer(NewServer(st, ca, pool, InstanceIdentity{}, slog.New(slog.NewTextHandler(io.Discard, nil))))
	srv.StartTLS()
	defer srv.Close()
	value, hash := NewToken()
	if _, err := st.CreateToken(ctx, store.Token{Scope: ScopeAdmin}, hash); err != nil {
		b.Fatal(err)
	}
	client := srv.Client()
	call := func(b *testing.B, method, path, body string) {
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, _ := http.NewRequest(method, srv.URL+path, rd)
		req.Header.Set("Authorization", "Bearer "+value)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("%s %s = %d", method, path, resp.StatusCode)
		}
		b.SetBytes(n)
	}

	b.Run("CreatePolicy", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			call(b, "POST", policiesPath, policyBody([5]any{apps[i%nApps], apps[(i+7)%nApps], "udp", 1000 + i/nApps, 1000 + i/nApps}))
		}
	})
	b.Run("ListAllPolicies", func(b *testing.B) {
		for b.Loop() {
			call(b, "GET", policiesPath, "")
		}
	})
	b.Run("ListAppPolicies", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			call(b, "GET", policiesPath+"?id="+apps[i%nApps], "")
		}
	})
}

// loadApps creates nApps apps in the default space and nPolicies policies
// among them, 3 per app (to the next three apps), and returns the apps'
// GUIDs.
func loadApps(b *testing.B, st *store.Store, nApps, nPolicies int) []string {
	ctx := context.Background()
	spaces, _ := st.Spaces(ctx, store.SpaceFilter{Names: []string{"default"}})
	apps := make([]string, nApps)
	for i := range apps {
		a, err := st.CreateApp(ctx, spaces[0].GUID, fmt.Sprintf("app-%05d", i))
		if err != nil {
			b.Fatal(err)
		}
		apps[i] = a.GUID
	}
	var batch []store.Policy
	for i := range nPolicies {
		batch = append(batch, store.Policy{SourceApp: apps[i/3], DestApp: apps[(i/3+1+i%3)%nApps], Protocol: "tcp", StartPort: 8080, EndPort: 8080})
		if len(batch) == 1000 || i == nPolicies-1 {
			if err := st.CreatePolicies(ctx, batch, store.CreatePoliciesOptions{}); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	return apps
}
