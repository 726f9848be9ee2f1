package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/identity"
	"github.com/trellis-c2c/trellis/internal/store"
)

// authzKind is who sends a request of the authorization table, relative to
// the space whose resources the request names (the target).
type authzKind int

const (
	kindNone      authzKind = iota // no Authorization header, no client certificate
	kindAdmin                      // a network.admin token
	kindOwn                        // a network.write token of the target space
	kindOther                      // a network.write token of the other space
	kindRevoked                    // a write token of the target space, revoked through the API
	kindExpired                    // a write token of the target space, past its expires_at
	kindCell                       // the target space's cell (mutual TLS, no bearer token)
	kindCellOther                  // the other space's cell
	numKinds
)

var kindNames = [numKinds]string{"none", "admin", "write-own", "write-other", "revoked", "expired", "cell", "cell-other"}

func (k authzKind) String() string { return kindNames[k] }

// authzWant is the expected status for each kind.
type authzWant [numKinds]int

// userWant is an endpoint for tokens: 401 without a valid token (none,
// revoked, expired) and for cells, which present no token.
func userWant(admin, own, other int) authzWant {
	return authzWant{kindNone: 401, kindAdmin: admin, kindOwn: own, kindOther: other, kindRevoked: 401, kindExpired: 401, kindCell: 401, kindCellOther: 401}
}

// adminWant is an endpoint for network.admin alone: 403 for write tokens.
func adminWant(admin int) authzWant { return userWant(admin, 403, 403) }

// cellWant is an endpoint for cells alone: 401 for every token.
func cellWant(cell, cellOther int) authzWant {
	return authzWant{401, 401, 401, 401, 401, 401, cell, cellOther}
}

// allWant answers every kind alike.
func allWant(code int) authzWant {
	var w authzWant
	for i := range w {
		w[i] = code
	}
	return w
}

// authzSpace is the fixtures of one space: an org of its own, two apps, a
// route mapped to the first, a policy between them (and one to the other
// space's first app), a cell with an instance of the first, its tokens,
// and a flow.
type authzSpace struct {
	name                                string
	org, space, app, app2, route        string
	cell                                api.Cell
	cellClient                          *http.Client
	instance                            string // of app, on cell, at instanceIP
	instanceIP                          string
	write, revoked, expired             string // token values
	writeGUID, revokedGUID, expiredGUID string
	nextIP                              netip.Addr
}

// guids are what no token of another space may see.
func (sp *authzSpace) guids() []string {
	return []string{sp.org, sp.space, sp.app, sp.app2, sp.route, sp.instance, sp.writeGUID, sp.revokedGUID, sp.expiredGUID}
}

// authzFixtures are the two spaces and a counter for fresh names.
type authzFixtures struct {
	e      *env
	domain string // apps.internal
	a, b   *authzSpace
	seq    int
	// admin is the admin kind's credential: e.admin, or an admin user's
	// JWT when the table is replayed with user JWTs.
	admin string
}

func (f *authzFixtures) next() int { f.seq++; return f.seq }

// uuid returns a fresh instance GUID.
func (f *authzFixtures) uuid() string {
	return fmt.Sprintf("00000000-0000-4000-8000-%012d", f.next())
}

// ip returns a fresh usable address of sp's cell subnet.
func (f *authzFixtures) ip(sp *authzSpace) string {
	sp.nextIP = sp.nextIP.Next()
	return sp.nextIP.String()
}

// tokenGUID is the GUID of a token value.
func (f *authzFixtures) tokenGUID(value string) string {
	f.e.t.Helper()
	t, err := f.e.store.TokenByHash(context.Background(), HashToken(value))
	if err != nil {
		f.e.t.Fatalf("token by hash: %v", err)
	}
	return t.GUID
}

func newAuthzFixtures(t *testing.T, e *env) *authzFixtures {
	f := &authzFixtures{e: e, admin: e.admin}
	var ds api.List[api.Domain]
	e.must(e.admin, "GET", "/v3/domains?names=apps.internal", "", 200, &ds)
	f.domain = ds.Resources[0].GUID
	for i, name := range []string{"a", "b"} {
		sp := &authzSpace{name: name}
		var org api.Organization
		e.must(e.admin, "POST", "/v3/organizations", fmt.Sprintf(`{"name":"org-%s"}`, name), 201, &org)
		sp.org = org.GUID
		var space api.Space
		e.must(e.admin, "POST", "/v3/spaces", fmt.Sprintf(`{"name":"space-%s","relationships":{"organization":{"data":{"guid":%q}}}}`, name, sp.org), 201, &space)
		sp.space = space.GUID
		sp.app, sp.app2 = e.createApp(sp.space, "app-"+name), e.createApp(sp.space, "app2-"+name)
		sp.route = e.createRoute(e.admin, sp.space, "svc-"+name, "apps.internal").GUID
		e.must(e.admin, "POST", "/v3/routes/"+sp.route+"/destinations", destinationsBody(sp.app), 200, nil)
		e.must(e.admin, "POST", policiesPath, policyBody([5]any{sp.app, sp.app2, "tcp", 8080, 8080}), 200, nil)

		var join api.JoinResponse
		join, sp.cellClient = e.joinCell("cell-"+name, fmt.Sprintf("198.51.100.%d", 11+i))
		sp.cell = join.Cell
		sp.nextIP = sp.cell.Subnet.Addr().Next().Next().Next().Next() // past the network, gateway and VTEP addresses
		sp.instance, sp.instanceIP = f.uuid(), f.ip(sp)
		e.register(sp.cellClient, sp.instance, sp.app, 0, sp.instanceIP)
		flows, _ := json.Marshal(api.FlowEvents{Events: []api.FlowEvent{{Time: time.Now(), Verdict: "denied", Protocol: "tcp",
			SrcIP: sp.instanceIP, DstIP: sp.instanceIP, DstPort: 9999, SrcApp: sp.app, DstApp: sp.app2, Reason: "no policy"}}})
		if code, got := e.cellCall(sp.cellClient, "POST", "/trellis/v1/cell/flows", string(flows)); code != 204 {
			t.Fatalf("report flows = %d %s", code, got)
		}

		sp.write = e.token(ScopeWrite, []string{sp.space})
		sp.writeGUID = f.tokenGUID(sp.write)
		// Revoked by itself, through the API.
		sp.revoked = e.token(ScopeWrite, []string{sp.space})
		sp.revokedGUID = f.tokenGUID(sp.revoked)
		e.must(sp.revoked, "DELETE", tokensPath+"/"+sp.revokedGUID, "", 204, nil)
		// Expired: its expires_at in the past, set through the store.
		value, hash := NewToken()
		tok, err := e.store.CreateToken(context.Background(), store.Token{Name: "expired", Scope: ScopeWrite, SpaceGUIDs: []string{sp.space},
			ExpiresAt: time.Now().Add(-time.Second)}, hash)
		if err != nil {
			t.Fatal(err)
		}
		sp.expired, sp.expiredGUID = value, tok.GUID
		if name == "a" {
			f.a = sp
		} else {
			f.b = sp
		}
	}
	// A policy across the spaces, which neither write token may see.
	e.must(e.admin, "POST", policiesPath, policyBody([5]any{f.a.app, f.b.app, "tcp", 7000, 7000}), 200, nil)
	return f
}

// freshApp creates an app in sp, for a request that may delete or change it.
func (f *authzFixtures) freshApp(sp *authzSpace) string {
	return f.e.createApp(sp.space, fmt.Sprintf("fresh-%d", f.next()))
}

// freshRoute creates a route in sp mapped to apps.
func (f *authzFixtures) freshRoute(sp *authzSpace, apps ...string) string {
	rt := f.e.createRoute(f.e.admin, sp.space, fmt.Sprintf("fresh-%d", f.next()), "apps.internal")
	if len(apps) > 0 {
		f.e.must(f.e.admin, "POST", "/v3/routes/"+rt.GUID+"/destinations", destinationsBody(apps...), 200, nil)
	}
	return rt.GUID
}

// freshCell joins a cell that a request may delete.
func (f *authzFixtures) freshCell() (api.Cell, *http.Client) {
	n := f.next()
	j, c := f.e.joinCell(fmt.Sprintf("fresh-%d", n), fmt.Sprintf("198.18.%d.%d", n/250, n%250+1))
	return j.Cell, c
}

// state is what the store holds, for comparing before and after a
// request: a snapshot, the orgs, the tokens and the flows, without the
// times a read records (a token's last use, a cell's last poll).
func (f *authzFixtures) state() string {
	f.e.t.Helper()
	ctx := context.Background()
	snap, err := f.e.store.Snapshot(ctx, store.SnapshotFilter{})
	if err != nil {
		f.e.t.Fatal(err)
	}
	for i := range snap.Cells {
		snap.Cells[i].LastSeen = time.Time{}
	}
	orgs, err := f.e.store.Orgs(ctx, store.OrgFilter{})
	if err != nil {
		f.e.t.Fatal(err)
	}
	toks, err := f.e.store.Tokens(ctx, store.TokenFilter{})
	if err != nil {
		f.e.t.Fatal(err)
	}
	for i := range toks {
		toks[i].LastUsedAt = time.Time{}
	}
	flows, err := f.e.store.Flows(ctx, store.FlowFilter{Limit: 10000})
	if err != nil {
		f.e.t.Fatal(err)
	}
	users, err := f.e.store.Users(ctx, store.UserFilter{})
	if err != nil {
		f.e.t.Fatal(err)
	}
	b, err := json.MarshalIndent(map[string]any{"snapshot": snap, "orgs": orgs, "tokens": toks, "flows": flows, "users": users}, "", " ")
	if err != nil {
		f.e.t.Fatal(err)
	}
	return string(b)
}

// authzReq is one request of the table.
type authzReq struct {
	method, path, body string
	// cell, if set, is the client the cell kinds send as, instead of
	// their space's cell.
	cell *http.Client
}

// authzRow is one endpoint (pattern) tried one way by every kind.
type authzRow struct {
	pattern string
	what    string // which way, when a pattern has several rows
	// spaced rows run twice: on space A's resources and on space B's.
	// Others (foundation-wide) run once, with A as the target.
	spaced bool
	// req builds the request of kind k on target's resources; it may
	// create fresh fixtures first (as the admin, before the state is read).
	req  func(f *authzFixtures, target, other *authzSpace, k authzKind) authzReq
	want authzWant
	// changes are the kinds whose successful request may change the
	// store; every other request must leave it as it was.
	changes []authzKind
}

func get(path string) func(*authzFixtures, *authzSpace, *authzSpace, authzKind) authzReq {
	return func(*authzFixtures, *authzSpace, *authzSpace, authzKind) authzReq {
		return authzReq{method: "GET", path: path}
	}
}

// authzRows is the authorization table: every endpoint the server
// registers, with who may do what today. TestAuthorization fails when a
// registered pattern has no row.
func authzRows() []authzRow {
	admin, adminOwn := []authzKind{kindAdmin}, []authzKind{kindAdmin, kindOwn}
	return []authzRow{
		{pattern: "GET /health", req: get("/health"), want: allWant(200)},
		// NOTE: issue 14 makes /metrics admin-only in another branch:
		// then write tokens get 403 here.
		{pattern: "GET /metrics", req: get("/metrics"), want: adminWant(200)},

		// Cloud Foundry networking API.
		{pattern: "GET /networking/{version}/external/policies", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: policiesPath + "?id=" + t.app}
			}, want: userWant(200, 200, 200)},
		{pattern: "POST /networking/{version}/external/policies", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "POST", path: policiesPath, body: policyBody([5]any{t.app, t.app2, "tcp", 9000 + f.next(), 9000 + f.seq})}
			}, want: userWant(200, 200, 403), changes: adminOwn},
		{pattern: "POST /networking/{version}/external/policies", what: "to the other space's app", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "POST", path: policiesPath, body: policyBody([5]any{t.app, o.app, "tcp", 9000 + f.next(), 9000 + f.seq})}
			}, want: userWant(200, 403, 403), changes: admin},
		{pattern: "POST /networking/{version}/external/policies/delete", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				body := policyBody([5]any{t.app, t.app2, "tcp", 9000 + f.next(), 9000 + f.seq})
				f.e.must(f.e.admin, "POST", policiesPath, body, 200, nil)
				return authzReq{method: "POST", path: policiesPath + "/delete", body: body}
			}, want: userWant(200, 200, 403), changes: adminOwn},
		{pattern: "GET /networking/{version}/external/tags", req: get("/networking/v1/external/tags"), want: adminWant(200)},

		// v3 platform resources.
		{pattern: "GET /v3/organizations", req: get("/v3/organizations"), want: userWant(200, 200, 200)},
		{pattern: "POST /v3/organizations",
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "POST", path: "/v3/organizations", body: fmt.Sprintf(`{"name":"org-%d"}`, f.next())}
			}, want: adminWant(201), changes: admin},
		{pattern: "GET /v3/spaces", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/v3/spaces?organization_guids=" + t.org}
			}, want: userWant(200, 200, 200)},
		{pattern: "POST /v3/spaces", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "POST", path: "/v3/spaces",
					body: fmt.Sprintf(`{"name":"space-%d","relationships":{"organization":{"data":{"guid":%q}}}}`, f.next(), t.org)}
			}, want: adminWant(201), changes: admin},
		{pattern: "GET /v3/apps", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/v3/apps?space_guids=" + t.space}
			}, want: userWant(200, 200, 200)},
		{pattern: "GET /v3/apps", what: "unfiltered", req: get("/v3/apps"), want: userWant(200, 200, 200)},
		{pattern: "GET /v3/apps/{guid}", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/v3/apps/" + t.app}
			}, want: userWant(200, 200, 404)},
		{pattern: "POST /v3/apps", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "POST", path: "/v3/apps",
					body: fmt.Sprintf(`{"name":"new-%d","relationships":{"space":{"data":{"guid":%q}}}}`, f.next(), t.space)}
			}, want: userWant(201, 201, 422), changes: adminOwn},
		{pattern: "DELETE /v3/apps/{guid}", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "DELETE", path: "/v3/apps/" + f.freshApp(t)}
			}, want: userWant(204, 204, 404), changes: adminOwn},
		{pattern: "PATCH /v3/apps/{guid}", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "PATCH", path: "/v3/apps/" + t.app2, body: fmt.Sprintf(`{"command":["sleep","%d"]}`, f.next())}
			}, want: userWant(200, 200, 404), changes: adminOwn},
		{pattern: "PATCH /v3/apps/{guid}", what: "pin to a cell", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "PATCH", path: "/v3/apps/" + f.freshApp(t), body: fmt.Sprintf(`{"cell_guid":%q}`, t.cell.GUID)}
			}, want: userWant(200, 403, 404), changes: admin},
		{pattern: "POST /v3/apps/{guid}/actions/{action}", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "POST", path: "/v3/apps/" + f.freshApp(t) + "/actions/start"}
			}, want: userWant(200, 200, 404), changes: adminOwn},
		{pattern: "POST /v3/apps/{guid}/processes/web/actions/scale", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "POST", path: "/v3/apps/" + f.freshApp(t) + "/processes/web/actions/scale", body: `{"instances":2}`}
			}, want: userWant(200, 200, 404), changes: adminOwn},
		// Cloud Controller v3 as the cf CLI reads it (v3_routes.go).
		{pattern: "GET /{$}", req: get("/"), want: allWant(200)},
		{pattern: "GET /v3/organizations/{guid}", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/v3/organizations/" + t.org}
			}, want: userWant(200, 200, 404)},
		{pattern: "DELETE /v3/organizations/{guid}", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				var org api.Organization
				f.e.must(f.e.admin, "POST", "/v3/organizations", fmt.Sprintf(`{"name":"del-%d"}`, f.next()), 201, &org)
				return authzReq{method: "DELETE", path: "/v3/organizations/" + org.GUID}
			}, want: adminWant(202), changes: admin},
		{pattern: "GET /v3/organizations/{guid}/domains", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/v3/organizations/" + t.org + "/domains"}
			}, want: userWant(200, 200, 404)},
		{pattern: "GET /v3/organizations/{guid}/relationships/default_isolation_segment", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/v3/organizations/" + t.org + "/relationships/default_isolation_segment"}
			}, want: userWant(200, 200, 404)},
		{pattern: "GET /v3/spaces/{guid}/relationships/isolation_segment", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/v3/spaces/" + t.space + "/relationships/isolation_segment"}
			}, want: userWant(200, 200, 404)},
		{pattern: "GET /v3/spaces/{guid}/running_security_groups", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/v3/spaces/" + t.space + "/running_security_groups"}
			}, want: userWant(200, 200, 404)},
		{pattern: "GET /v3/spaces/{guid}/staging_security_groups", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/v3/spaces/" + t.space + "/staging_security_groups"}
			}, want: userWant(200, 200, 404)},
		{pattern: "GET /v3/spaces/{guid}", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/v3/spaces/" + t.space}
			}, want: userWant(200, 200, 404)},
		// An admin deletes a fresh space of the target's org (with an app
		// in it); a write token may not delete even its own space.
		{pattern: "DELETE /v3/spaces/{guid}", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				var sp api.Space
				f.e.must(f.e.admin, "POST", "/v3/spaces", fmt.Sprintf(`{"name":"del-%d","relationships":{"organization":{"data":{"guid":%q}}}}`, f.next(), t.org), 201, &sp)
				f.e.createApp(sp.GUID, "doomed")
				return authzReq{method: "DELETE", path: "/v3/spaces/" + sp.GUID}
			}, want: adminWant(202), changes: admin},
		{pattern: "DELETE /v3/spaces/{guid}", what: "the target's own space", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "DELETE", path: "/v3/spaces/" + t.space}
			}, want: adminWant(422)},
		{pattern: "GET /v3/jobs/{guid}", req: get("/v3/jobs/00000000-0000-4000-8000-000000000000"), want: userWant(200, 200, 200)},
		{pattern: "GET /v3/domains/{guid}", req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
			return authzReq{method: "GET", path: "/v3/domains/" + f.domain}
		}, want: userWant(200, 200, 200)},
		{pattern: "GET /v3/domains/{guid}/route_reservations", req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
			return authzReq{method: "GET", path: "/v3/domains/" + f.domain + "/route_reservations?host=svc-a"}
		}, want: userWant(200, 200, 200)},
		{pattern: "GET /v3/routes/{guid}/destinations", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/v3/routes/" + t.route + "/destinations"}
			}, want: userWant(200, 200, 404)},
		{pattern: "GET /v3/apps/{guid}/routes", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/v3/apps/" + t.app + "/routes"}
			}, want: userWant(200, 200, 404)},
		{pattern: "GET /v3/apps/{guid}/droplets/current", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/v3/apps/" + t.app + "/droplets/current"}
			}, want: userWant(404, 404, 404)},
		{pattern: "GET /v3/processes", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/v3/processes?embed=process_instances&space_guids=" + t.space}
			}, want: userWant(200, 200, 200)},
		{pattern: "GET /v3/processes", what: "unfiltered", req: get("/v3/processes?embed=process_instances"), want: userWant(200, 200, 200)},
		{pattern: "GET /v3/processes/{guid}", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/v3/processes/" + t.app + "?embed=process_instances"}
			}, want: userWant(200, 200, 404)},
		{pattern: "GET /v3/processes/{guid}/stats", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/v3/processes/" + t.app + "/stats"}
			}, want: userWant(200, 200, 404)},
		{pattern: "GET /v3/processes/{guid}/sidecars", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/v3/processes/" + t.app + "/sidecars"}
			}, want: userWant(200, 200, 404)},
		{pattern: "GET /v3/apps/{guid}/processes", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/v3/apps/" + t.app + "/processes"}
			}, want: userWant(200, 200, 404)},
		{pattern: "GET /v3/apps/{guid}/processes/{type}", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/v3/apps/" + t.app + "/processes/web"}
			}, want: userWant(200, 200, 404)},
		{pattern: "GET /v3/apps/{guid}/processes/{type}/stats", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/v3/apps/" + t.app + "/processes/web/stats"}
			}, want: userWant(200, 200, 404)},
		{pattern: "POST /v3/roles", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "POST", path: "/v3/roles", body: fmt.Sprintf(`{"type":"space_developer","relationships":{"user":{"data":{"guid":"u-1"}},"space":{"data":{"guid":%q}}}}`, t.space)}
			}, want: adminWant(201)},
		{pattern: "GET /v3/service_route_bindings", req: get("/v3/service_route_bindings"), want: userWant(200, 200, 200)},
		{pattern: "GET /v3/deployments", req: get("/v3/deployments"), want: userWant(200, 200, 200)},
		{pattern: "GET /v3/packages", req: get("/v3/packages"), want: userWant(200, 200, 200)},
		{pattern: "GET /v3/droplets", req: get("/v3/droplets"), want: userWant(200, 200, 200)},
		{pattern: "GET /v3/roles", req: get("/v3/roles"), want: userWant(200, 200, 200)},
		{pattern: "GET /v3/organization_quotas", req: get("/v3/organization_quotas"), want: userWant(200, 200, 200)},
		{pattern: "GET /v3/space_quotas", req: get("/v3/space_quotas"), want: userWant(200, 200, 200)},
		{pattern: "GET /v3/service_instances", req: get("/v3/service_instances"), want: userWant(200, 200, 200)},
		{pattern: "GET /v3/isolation_segments", req: get("/v3/isolation_segments"), want: userWant(200, 200, 200)},
		{pattern: "/v3/", req: get("/v3/no-such-thing"), want: allWant(404)},
		{pattern: "/v3/", what: "a method the path is not served with", req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
			return authzReq{method: "PUT", path: "/v3/apps"}
		}, want: allWant(405)},
		{pattern: "GET /v3/domains", req: get("/v3/domains"), want: userWant(200, 200, 200)},
		{pattern: "POST /v3/domains",
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "POST", path: "/v3/domains", body: fmt.Sprintf(`{"name":"d%d.internal","internal":true}`, f.next())}
			}, want: adminWant(201), changes: admin},
		{pattern: "GET /v3/routes", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/v3/routes?space_guids=" + t.space}
			}, want: userWant(200, 200, 200)},
		{pattern: "GET /v3/routes", what: "unfiltered", req: get("/v3/routes"), want: userWant(200, 200, 200)},
		{pattern: "POST /v3/routes", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "POST", path: "/v3/routes", body: routeBody(fmt.Sprintf("new-%d", f.next()), f.domain, t.space)}
			}, want: userWant(201, 201, 422), changes: adminOwn},
		{pattern: "GET /v3/routes/{guid}", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/v3/routes/" + t.route}
			}, want: userWant(200, 200, 404)},
		{pattern: "DELETE /v3/routes/{guid}", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "DELETE", path: "/v3/routes/" + f.freshRoute(t, t.app)}
			}, want: userWant(204, 204, 404), changes: adminOwn},
		{pattern: "POST /v3/routes/{guid}/destinations", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "POST", path: "/v3/routes/" + f.freshRoute(t) + "/destinations", body: destinationsBody(t.app2)}
			}, want: userWant(200, 200, 404), changes: adminOwn},
		// The route hijack of issue 14, both ways: the other space's
		// app on the target's route.
		{pattern: "POST /v3/routes/{guid}/destinations", what: "the other space's app", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "POST", path: "/v3/routes/" + t.route + "/destinations", body: destinationsBody(o.app)}
			}, want: userWant(422, 422, 404)},
		{pattern: "DELETE /v3/routes/{guid}/destinations/{app}", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "DELETE", path: "/v3/routes/" + f.freshRoute(t, t.app2) + "/destinations/" + t.app2}
			}, want: userWant(204, 204, 404), changes: adminOwn},

		// Tokens.
		{pattern: "POST /trellis/v1/tokens", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "POST", path: tokensPath, body: fmt.Sprintf(`{"scope":"network.write","space_guids":[%q]}`, t.space)}
			}, want: adminWant(201), changes: admin},
		{pattern: "GET /trellis/v1/tokens", req: get(tokensPath), want: userWant(200, 200, 200)},
		// Another token of the target space: a write token revokes only
		// itself (the revoked kind was revoked so, through the API).
		{pattern: "DELETE /trellis/v1/tokens/{guid}", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "DELETE", path: tokensPath + "/" + f.tokenGUID(f.e.token(ScopeWrite, []string{t.space}))}
			}, want: userWant(204, 404, 404), changes: admin},
		{pattern: "POST /trellis/v1/admin-token/rotation", req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
			return authzReq{method: "POST", path: "/trellis/v1/admin-token/rotation"}
		}, want: adminWant(201), changes: admin},
		{pattern: "GET /trellis/v1/instances", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/trellis/v1/instances?app_guids=" + t.app}
			}, want: userWant(200, 200, 200)},
		{pattern: "GET /trellis/v1/instances", what: "unfiltered", req: get("/trellis/v1/instances"), want: userWant(200, 200, 200)},

		// Cells, as the operator sees them.
		{pattern: "POST /trellis/v1/join-tokens", req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
			return authzReq{method: "POST", path: "/trellis/v1/join-tokens", body: `{"ttl_seconds":60}`}
		}, want: adminWant(201), changes: admin},
		{pattern: "GET /trellis/v1/cells", req: get("/trellis/v1/cells"), want: adminWant(200)},
		{pattern: "DELETE /trellis/v1/cells/{guid}", req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
			c, _ := f.freshCell()
			return authzReq{method: "DELETE", path: "/trellis/v1/cells/" + c.GUID}
		}, want: adminWant(204), changes: admin},
		// Joining takes a join token; no other credential joins.
		{pattern: "POST /trellis/v1/cells/join", req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
			n := f.next()
			_, csr, err := identity.NewKeyAndCSR(fmt.Sprintf("join-%d", n))
			if err != nil {
				f.e.t.Fatal(err)
			}
			body, _ := json.Marshal(api.JoinRequest{Name: fmt.Sprintf("join-%d", n), UnderlayIP: "198.51.100.250", CSR: string(csr)})
			return authzReq{method: "POST", path: "/trellis/v1/cells/join", body: string(body)}
		}, want: allWant(401)},

		// Encryption between cells (issue 18): anyone who reads the
		// foundation reads the switch, the admin sets it and rotates keys;
		// a cell registers its own WireGuard key (its certificate names
		// it), never another cell's.
		{pattern: "GET /trellis/v1/encryption", req: get("/trellis/v1/encryption"), want: userWant(200, 200, 200)},
		{pattern: "PUT /trellis/v1/encryption", req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
			return authzReq{method: "PUT", path: "/trellis/v1/encryption", body: `{"mode":"wireguard"}`}
		}, want: adminWant(200), changes: admin},
		{pattern: "POST /trellis/v1/cells/rotate-keys", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "POST", path: "/trellis/v1/cells/rotate-keys", body: fmt.Sprintf(`{"cells":[%q]}`, t.cell.Name)}
			}, want: adminWant(200), changes: admin},
		{pattern: "PUT /trellis/v1/cell/wireguard-key", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "PUT", path: "/trellis/v1/cell/wireguard-key", body: fmt.Sprintf(`{"public_key":%q,"listen_port":51820,"generation":1}`, testWireGuardKey())}
			}, want: cellWant(204, 204), changes: []authzKind{kindCell, kindCellOther}},
		// The target cell's registered key, sent again: the same by the
		// target cell (nothing changes), refused for another.
		{pattern: "PUT /trellis/v1/cell/wireguard-key", what: "the target cell's key", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				body := fmt.Sprintf(`{"public_key":%q,"listen_port":51820,"generation":1}`, testWireGuardKey())
				if code, got := f.e.cellCall(t.cellClient, "PUT", "/trellis/v1/cell/wireguard-key", body); code != 204 {
					f.e.t.Fatalf("register the target cell's key: %d %s", code, got)
				}
				return authzReq{method: "PUT", path: "/trellis/v1/cell/wireguard-key", body: body}
			}, want: cellWant(204, 409)},

		// Cells, as themselves (mutual TLS).
		{pattern: "GET /trellis/v1/cell/state", req: get("/trellis/v1/cell/state"), want: cellWant(200, 200)},
		// A cell registers instances of any space's apps (it runs what
		// the scheduler or its runtime places on it), on its own subnet.
		{pattern: "PUT /trellis/v1/cell/instances/{guid}", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				on := t
				if k == kindCellOther {
					on = o
				}
				return authzReq{method: "PUT", path: "/trellis/v1/cell/instances/" + f.uuid(),
					body: fmt.Sprintf(`{"app_guid":%q,"index":0,"ip":%q}`, t.app, f.ip(on))}
			}, want: cellWant(204, 204), changes: []authzKind{kindCell, kindCellOther}},
		// Not another cell's instance: 409.
		{pattern: "PUT /trellis/v1/cell/instances/{guid}", what: "the target cell's instance", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				ip := t.instanceIP
				if k == kindCellOther {
					ip = f.ip(o)
				}
				return authzReq{method: "PUT", path: "/trellis/v1/cell/instances/" + t.instance,
					body: fmt.Sprintf(`{"app_guid":%q,"index":0,"ip":%q}`, t.app, ip)}
			}, want: cellWant(204, 409)},
		// Another cell's instance is left alone (204: deregistering is
		// idempotent, and the store does not change).
		{pattern: "DELETE /trellis/v1/cell/instances/{guid}", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				guid := f.uuid()
				f.e.register(t.cellClient, guid, t.app, 1, f.ip(t))
				return authzReq{method: "DELETE", path: "/trellis/v1/cell/instances/" + guid}
			}, want: cellWant(204, 204), changes: []authzKind{kindCell}},
		{pattern: "DELETE /trellis/v1/cell", req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
			_, c := f.freshCell()
			return authzReq{method: "DELETE", path: "/trellis/v1/cell", cell: c}
		}, want: cellWant(204, 204), changes: []authzKind{kindCell, kindCellOther}},
		// A cell reports the flows its rules logged, which name apps of
		// any space (a peer on another cell): the controller does not
		// check that the instances are on the reporting cell.
		{pattern: "POST /trellis/v1/cell/flows", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				b, _ := json.Marshal(api.FlowEvents{Events: []api.FlowEvent{{Time: time.Now(), Verdict: "allowed", Protocol: "tcp",
					SrcIP: t.instanceIP, DstIP: t.instanceIP, DstPort: 8080, SrcApp: t.app, DstApp: t.app2, Reason: "policy"}}})
				return authzReq{method: "POST", path: "/trellis/v1/cell/flows", body: string(b)}
			}, want: cellWant(204, 204), changes: []authzKind{kindCell, kindCellOther}},
		{pattern: "POST /trellis/v1/cell/instances/{guid}/certificate", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				_, csr, err := identity.NewInstanceKeyAndCSR(identity.KeyECDSAP256, t.instance)
				if err != nil {
					f.e.t.Fatal(err)
				}
				return authzReq{method: "POST", path: "/trellis/v1/cell/instances/" + t.instance + "/certificate", body: certRequest(csr)}
			}, want: cellWant(201, 403)},

		// Instance identity.
		{pattern: "GET /trellis/v1/instance-ca", req: get("/trellis/v1/instance-ca"),
			want: authzWant{401, 200, 200, 200, 401, 401, 200, 200}},
		{pattern: "POST /trellis/v1/instance-ca/rotation", req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
			return authzReq{method: "POST", path: "/trellis/v1/instance-ca/rotation", body: `{"action":"begin"}`}
		}, want: adminWant(200), changes: admin},
		{pattern: "GET /trellis/v1/apps/{guid}/tls", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/trellis/v1/apps/" + t.app + "/tls"}
			}, want: userWant(200, 200, 404)},
		{pattern: "PUT /trellis/v1/apps/{guid}/tls", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "PUT", path: "/trellis/v1/apps/" + f.freshApp(t) + "/tls", body: `{"require_client_cert":true}`}
			}, want: userWant(200, 200, 404), changes: adminOwn},

		// Policy tools.
		{pattern: "GET /trellis/v1/flows", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/trellis/v1/flows?app_guids=" + t.app}
			}, want: userWant(200, 200, 200)},
		{pattern: "GET /trellis/v1/flows", what: "unfiltered", req: get("/trellis/v1/flows"), want: userWant(200, 200, 200)},
		{pattern: "GET /trellis/v1/explain", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/trellis/v1/explain?source=" + t.app + "&destination=" + t.app2 + "&port=8080"}
			}, want: userWant(200, 200, 403)},
		{pattern: "GET /trellis/v1/enforcement", req: get("/trellis/v1/enforcement"), want: userWant(200, 200, 200)},
		{pattern: "PUT /trellis/v1/enforcement", req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
			return authzReq{method: "PUT", path: "/trellis/v1/enforcement", body: `{"enabled":true}`}
		}, want: adminWant(200), changes: admin},

		// The cf CLI's way in (issue 15): public documents, and a token
		// endpoint that takes a grant, not a bearer token or a cell's
		// certificate (a JSON body is no grant: 400 for everyone).
		{pattern: "GET /{$}", req: get("/"), want: allWant(200)},
		{pattern: "GET /v3/info", req: get("/v3/info"), want: allWant(200)},
		{pattern: "GET /v2/info", req: get("/v2/info"), want: allWant(200)},
		{pattern: "GET /login", req: get("/login"), want: allWant(200)},
		{pattern: "GET /token_keys", req: get("/token_keys"), want: allWant(200)},
		{pattern: "POST /oauth/token", req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
			return authzReq{method: "POST", path: "/oauth/token", body: `{"grant_type":"client_credentials"}`}
		}, want: allWant(400)},
		// Users.
		{pattern: "POST /trellis/v1/users", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "POST", path: "/trellis/v1/users",
					body: fmt.Sprintf(`{"name":"user-%d","password":"password-%d","spaces":[{"space_guid":%q,"role":"developer"}]}`, f.next(), f.seq, t.space)}
			}, want: adminWant(201), changes: admin},
		{pattern: "GET /trellis/v1/users", req: get("/trellis/v1/users"), want: adminWant(200)},
		{pattern: "DELETE /trellis/v1/users/{guid}", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				u := f.e.createUser(fmt.Sprintf("fresh-%d", f.next()), false, t.space)
				return authzReq{method: "DELETE", path: "/trellis/v1/users/" + u.GUID}
			}, want: adminWant(204), changes: admin},
		// Another user of the target space: a user sets only its own
		// password (TestUserPassword), others' are not found.
		{pattern: "PUT /trellis/v1/users/{guid}/password", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				u := f.e.createUser(fmt.Sprintf("fresh-%d", f.next()), false, t.space)
				return authzReq{method: "PUT", path: "/trellis/v1/users/" + u.GUID + "/password", body: `{"password":"another-password"}`}
			}, want: userWant(204, 404, 404), changes: admin},
		// Application security groups (issue 17): the admin writes; a
		// write token sees the groups bound to its spaces.
		{pattern: "GET /v3/security_groups", req: get("/v3/security_groups"), want: userWant(200, 200, 200)},
		{pattern: "POST /v3/security_groups", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "POST", path: "/v3/security_groups", body: fmt.Sprintf(`{"name":"asg-%d","rules":[{"protocol":"tcp","destination":"203.0.113.10","ports":"80"}],"relationships":{"running_spaces":{"data":[{"guid":%q}]}}}`, f.next(), t.space)}
			}, want: adminWant(201), changes: admin},
		{pattern: "GET /v3/security_groups/{guid}", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "GET", path: "/v3/security_groups/" + f.freshGroup(t)}
			}, want: userWant(200, 200, 404)},
		{pattern: "PATCH /v3/security_groups/{guid}", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "PATCH", path: "/v3/security_groups/" + f.freshGroup(t), body: `{"rules":[{"protocol":"all","destination":"203.0.113.0/24"}]}`}
			}, want: adminWant(200), changes: admin},
		{pattern: "DELETE /v3/security_groups/{guid}", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "DELETE", path: "/v3/security_groups/" + f.freshGroup(t)}
			}, want: adminWant(202), changes: admin},
		{pattern: "POST /v3/security_groups/{guid}/relationships/{lifecycle}", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "POST", path: "/v3/security_groups/" + f.freshGroup(o) + "/relationships/running_spaces", body: fmt.Sprintf(`{"data":[{"guid":%q}]}`, t.space)}
			}, want: adminWant(200), changes: admin},
		{pattern: "DELETE /v3/security_groups/{guid}/relationships/{lifecycle}/{space}", spaced: true,
			req: func(f *authzFixtures, t, o *authzSpace, k authzKind) authzReq {
				return authzReq{method: "DELETE", path: "/v3/security_groups/" + f.freshGroup(t) + "/relationships/running_spaces/" + t.space}
			}, want: adminWant(204), changes: admin},
	}
}

// freshGroup creates a security group bound to sp for running.
func (f *authzFixtures) freshGroup(sp *authzSpace) string {
	var g api.SecurityGroup
	f.e.must(f.e.admin, "POST", "/v3/security_groups", fmt.Sprintf(`{"name":"fresh-asg-%d","rules":[{"protocol":"tcp","destination":"203.0.113.10","ports":"443"}],"relationships":{"running_spaces":{"data":[{"guid":%q}]}}}`, f.next(), sp.space), 201, &g)
	return g.GUID
}

// TestAuthorization is issue 14's authorization table: every endpoint the
// controller registers, sent by every kind of caller (no credential, the
// admin, a write token of the resource's space and one of another space,
// a revoked and an expired token, the resource's cell and another cell),
// on the resources of two spaces (each the other's "other space"). Each
// answer must be the row's status; a request may change the store only
// when it succeeds for a kind the row says may change it; and nothing a
// write token is answered holds a GUID of a space it is not scoped to.
// A registered pattern without a row, or a row for a pattern not
// registered, fails the test.
func TestAuthorization(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) { runAuthorization(t, e, false) })
}

// TestAuthorizationUserJWTs replays the authorization table with the JWTs
// of users (issue 15) in place of trellis tokens: an admin user's, those
// of space developers of the target and the other space, a deleted user's
// and an expired one. Users get what tokens of the same scope and spaces
// get, on every route.
func TestAuthorizationUserJWTs(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) { runAuthorization(t, e, true) })
}

// runAuthorization runs the authorization table, with user JWTs if jwts.
func runAuthorization(t *testing.T, e *env, jwts bool) {
	{
		srv := e.srv.Config.Handler.(*Server)
		rows := authzRows()
		covered := map[string]bool{}
		for _, r := range rows {
			covered[r.pattern] = true
			if !slices.Contains(srv.patterns, r.pattern) {
				t.Errorf("row for %q: no such pattern is registered", r.pattern)
			}
		}
		for _, p := range srv.patterns {
			if !covered[p] {
				t.Errorf("endpoint %q has no row in the authorization table (authzRows): add one for every kind of caller", p)
			}
		}
		if t.Failed() {
			return
		}

		f := newAuthzFixtures(t, e)
		if jwts {
			f.useUserJWTs()
		}
		for _, row := range rows {
			targets := [][2]*authzSpace{{f.a, f.b}}
			if row.spaced {
				targets = append(targets, [2]*authzSpace{f.b, f.a})
			}
			for _, tg := range targets {
				target, other := tg[0], tg[1]
				for k := range numKinds {
					name := row.pattern
					if row.what != "" {
						name += " (" + row.what + ")"
					}
					name += " on " + target.name + " as " + k.String()
					f.check(t, srv, row, name, target, other, k)
				}
			}
		}
	}
}

// useUserJWTs replaces the credentials of the token kinds by users' JWTs:
// an admin user's; for each space, a developer of the space's (write),
// a user's deleted after it logged in (revoked), and one past its exp
// (expired), signed by the controller's key.
func (f *authzFixtures) useUserJWTs() {
	e := f.e
	e.t.Helper()
	f.admin = e.login(e.createUser("jwt-admin", true), testPassword)
	for _, sp := range []*authzSpace{f.a, f.b} {
		dev := e.createUser("dev-"+sp.name, false, sp.space)
		sp.write, sp.writeGUID = e.login(dev, testPassword), dev.GUID
		gone := e.createUser("gone-"+sp.name, false, sp.space)
		sp.revoked, sp.revokedGUID = e.login(gone, testPassword), gone.GUID
		e.must(e.admin, "DELETE", "/trellis/v1/users/"+gone.GUID, "", 204, nil)
		sp.expired, sp.expiredGUID = e.userJWT(dev, time.Now().Add(-time.Second)), dev.GUID
	}
}

// check sends one request of the table and checks its answer.
func (f *authzFixtures) check(t *testing.T, srv *Server, row authzRow, name string, target, other *authzSpace, k authzKind) {
	t.Helper()
	req := row.req(f, target, other, k)
	probe := httptest.NewRequest(req.method, req.path, nil)
	if _, p := srv.mux.Handler(probe); p != row.pattern {
		t.Fatalf("%s: the request %s %s is served by %q, not the row's pattern", name, req.method, req.path, p)
	}
	before := f.state()
	var code int
	var body string
	switch k {
	case kindCell, kindCellOther:
		c := target.cellClient
		if k == kindCellOther {
			c = other.cellClient
		}
		if req.cell != nil {
			c = req.cell
		}
		code, body = f.e.cellCall(c, req.method, req.path, req.body)
	default:
		token := map[authzKind]string{kindAdmin: f.admin, kindOwn: target.write, kindOther: other.write,
			kindRevoked: target.revoked, kindExpired: target.expired}[k]
		code, body = f.e.do(token, req.method, req.path, req.body)
	}
	if want := row.want[k]; code != want {
		t.Errorf("%s: %s %s = %d %s, want %d", name, req.method, req.path, code, strings.TrimSpace(body), want)
	}
	if code < 200 || code > 299 || !slices.Contains(row.changes, k) {
		if after := f.state(); after != before {
			t.Errorf("%s: %s %s answered %d and changed the store (-before +after):\n%s", name, req.method, req.path, code, cmp.Diff(strings.Split(before, "\n"), strings.Split(after, "\n")))
		}
	}
	// A write token sees nothing of a space it is not scoped to.
	if (k == kindOwn || k == kindOther) && code >= 200 && code <= 299 {
		hidden := other
		if k == kindOther {
			hidden = target
		}
		for _, g := range hidden.guids() {
			// A GUID the request names may be echoed (pagination links).
			if strings.Contains(body, g) && !strings.Contains(req.path, g) {
				t.Errorf("%s: %s %s shows %s of space %s to a token of another space: %s", name, req.method, req.path, g, hidden.name, body)
			}
		}
	}
}
