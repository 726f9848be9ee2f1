package controller

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/identity"
	"github.com/trellis-c2c/trellis/internal/store"
)

// TestRouteHijackAcrossSpaces is the attack of issue 14: a network.write
// token of space A maps a route of space B's app to one of A's apps, so that
// B's name resolves to A's app too and A's instance certificates carry it.
// Routes belong to a space: A cannot see, map, unmap or delete B's route,
// nor create one in B; nothing changes (B's route, the cell's state, A's
// certificate); B still manages its route.
func TestRouteHijackAcrossSpaces(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		spaceA, spaceB := e.createSpace("a"), e.createSpace("b")
		appA, appB := e.createApp(spaceA, "attacker"), e.createApp(spaceB, "bsvc")
		tokA, tokB := e.token(ScopeWrite, []string{spaceA}), e.token(ScopeWrite, []string{spaceB})
		_, cell := e.joinCell("cell1", "198.51.100.11")
		const instA = "6f1b0c52-1d7e-4b6a-9d59-2b0f8f1f0a01"
		e.register(cell, instA, appA, 0, "10.255.1.5")

		routeB := e.createRoute(tokB, spaceB, "bsvc", "apps.internal")
		if routeB.Relationships.Space.Data.GUID != spaceB {
			t.Fatalf("B's route space = %q, want %s", routeB.Relationships.Space.Data.GUID, spaceB)
		}
		e.must(tokB, "POST", "/v3/routes/"+routeB.GUID+"/destinations", destinationsBody(appB), 200, nil)

		var before api.CellState
		cellGet(t, cell, e.srv.URL+"/trellis/v1/cell/state", &before)
		rev := e.revision()

		var ds api.List[api.Domain]
		e.must(e.admin, "GET", "/v3/domains?names=apps.internal", "", 200, &ds)
		domain := ds.Resources[0].GUID
		// As A: every way to B's route is refused, as if it did not exist.
		for _, tt := range []struct {
			method, path, body string
			want               int
		}{
			{"POST", "/v3/routes/" + routeB.GUID + "/destinations", destinationsBody(appA), 404},
			{"POST", "/v3/routes/" + routeB.GUID + "/destinations", destinationsBody(appB), 404},
			{"GET", "/v3/routes/" + routeB.GUID, "", 404},
			{"DELETE", "/v3/routes/" + routeB.GUID + "/destinations/" + appB, "", 404},
			{"DELETE", "/v3/routes/" + routeB.GUID, "", 404},
			{"POST", "/v3/routes", routeBody("other", domain, spaceB), 422},
			{"POST", "/v3/routes", routeBody("bsvc", domain, spaceA), 422}, // taken
		} {
			code, got := e.do(tokA, tt.method, tt.path, tt.body)
			if code != tt.want {
				t.Errorf("as A: %s %s %s = %d %s, want %d", tt.method, tt.path, tt.body, code, got, tt.want)
			}
		}
		var l api.List[api.Route]
		for _, q := range []string{"", "?space_guids=" + spaceB, "?app_guids=" + appB, "?hosts=bsvc"} {
			e.must(tokA, "GET", "/v3/routes"+q, "", 200, &l)
			if len(l.Resources) != 0 {
				t.Errorf("as A: GET /v3/routes%s = %+v, want none", q, l.Resources)
			}
		}

		// Nothing changed: B's route, the revision, the cell's state.
		rts, err := e.store.Routes(t.Context(), store.RouteFilter{GUIDs: []string{routeB.GUID}})
		if err != nil || len(rts) != 1 || !slices.Equal(rts[0].AppGUIDs, []string{appB}) {
			t.Errorf("B's route after the attack = %+v, %v; want it to send to %s only", rts, err, appB)
		}
		if got := e.revision(); got != rev {
			t.Errorf("revision after the attack = %d, want %d", got, rev)
		}
		var after api.CellState
		cellGet(t, cell, e.srv.URL+"/trellis/v1/cell/state", &after)
		if diff := cmp.Diff(before.Routes, after.Routes); diff != "" {
			t.Errorf("cell state routes after the attack (-before +after):\n%s", diff)
		}
		// A's instance certificate names only A's routes.
		routeA := e.createRoute(tokA, spaceA, "attacker", "apps.internal")
		e.must(tokA, "POST", "/v3/routes/"+routeA.GUID+"/destinations", destinationsBody(appA), 200, nil)
		code, body := e.cellCall(cell, "POST", "/trellis/v1/cell/instances/"+instA+"/certificate", certRequest(newCSR(t, identity.KeyECDSAP256, instA)))
		if code != 201 {
			t.Fatalf("A's instance certificate = %d %s", code, body)
		}
		var ic api.InstanceCertificate
		if err := json.Unmarshal([]byte(body), &ic); err != nil {
			t.Fatal(err)
		}
		if got, want := parsePEMChain(t, ic.Certificate)[0].DNSNames, []string{instA, "attacker.apps.internal"}; !slices.Equal(got, want) {
			t.Errorf("A's certificate DNS SANs = %v, want %v", got, want)
		}

		// Destinations are apps of the route's space, even for an admin.
		code, got := e.do(e.admin, "POST", "/v3/routes/"+routeA.GUID+"/destinations", destinationsBody(appB))
		if code != 422 || !strings.Contains(got, "Routes destinations must be in the route's space") {
			t.Errorf("admin maps B's app to A's route = %d %s, want 422", code, got)
		}
		// A cannot map B's app to its own route either.
		if code, got := e.do(tokA, "POST", "/v3/routes/"+routeA.GUID+"/destinations", destinationsBody(appB)); code != 422 {
			t.Errorf("as A: map B's app to A's route = %d %s, want 422", code, got)
		}

		// B still sees and manages its route.
		var rt api.Route
		e.must(tokB, "GET", "/v3/routes/"+routeB.GUID, "", 200, &rt)
		e.must(tokB, "GET", "/v3/routes", "", 200, &l)
		if len(l.Resources) != 1 || l.Resources[0].GUID != routeB.GUID {
			t.Errorf("as B: GET /v3/routes = %+v, want B's route only", l.Resources)
		}
		e.must(tokB, "DELETE", "/v3/routes/"+routeB.GUID+"/destinations/"+appB, "", 204, nil)
		e.must(tokB, "POST", "/v3/routes/"+routeB.GUID+"/destinations", destinationsBody(appB), 200, nil)
		e.must(tokB, "DELETE", "/v3/routes/"+routeB.GUID, "", 204, nil)
		e.must(e.admin, "GET", "/v3/routes/"+routeB.GUID, "", 404, nil)
		// The admin sees every space's routes.
		e.must(e.admin, "GET", "/v3/routes?space_guids="+spaceA, "", 200, &l)
		if len(l.Resources) != 1 || l.Resources[0].GUID != routeA.GUID {
			t.Errorf("as admin: GET /v3/routes?space_guids=A = %+v, want A's route", l.Resources)
		}
	})
}

func destinationsBody(apps ...string) string {
	var req api.RouteDestinations
	for _, a := range apps {
		req.Destinations = append(req.Destinations, api.RouteDestination{App: api.Ref{GUID: a}})
	}
	b, _ := json.Marshal(req)
	return string(b)
}

func TestLogRouteMigrations(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}}))
	logRouteMigrations(log, []store.RouteMigration{
		{RouteGUID: "r1", URL: "shared.apps.internal", SpaceGUID: "s1", RemovedAppGUIDs: []string{"a1", "a2"}},
		{RouteGUID: "r2", URL: "lost.apps.internal", Deleted: true},
	})
	want := `level=WARN msg="migration: route's apps spanned spaces: kept in its oldest app's space, unmapped the others" route=shared.apps.internal route_guid=r1 space=s1 removed_apps="[a1 a2]"
level=WARN msg="migration: deleted a route no space could own" route=lost.apps.internal route_guid=r2
`
	if got := buf.String(); got != want {
		t.Errorf("logRouteMigrations logged\n%s\nwant\n%s", got, want)
	}
}
