package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-c2c/trellis/internal/api"
)

// v3Err decodes a v3 error body into its first error.
func v3Err(t *testing.T, body string) api.V3Error {
	t.Helper()
	var e api.V3Errors
	if err := json.Unmarshal([]byte(body), &e); err != nil || len(e.Errors) != 1 {
		t.Fatalf("not one v3 error: %s (%v)", body, err)
	}
	return e.Errors[0]
}

// TestV3Pagination checks Cloud Controller's pages: per_page and page
// slice the list, the links are absolute and keep the filters, and bad
// values are CF-BadQueryParameter; without either, one page holds all.
func TestV3Pagination(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		for _, n := range []string{"p1", "p2", "p3"} {
			e.must(e.admin, "POST", "/v3/organizations", fmt.Sprintf(`{"name":%q}`, n), 201, nil)
		}
		type page struct {
			Pagination struct {
				TotalResults int `json:"total_results"`
				TotalPages   int `json:"total_pages"`
				First, Last  api.Link
				Next         *api.Link
				Previous     *api.Link
			}
			Resources []struct{ Name string }
		}
		names := func(p page) []string {
			var out []string
			for _, r := range p.Resources {
				out = append(out, r.Name)
			}
			return out
		}
		var all page
		e.must(e.admin, "GET", "/v3/organizations?names=p1,p2,p3", "", 200, &all)
		if all.Pagination.TotalResults != 3 || all.Pagination.TotalPages != 1 || all.Pagination.Next != nil || len(all.Resources) != 3 {
			t.Errorf("unpaged = %+v, want 3 results on one page", all)
		}
		var p1 page
		e.must(e.admin, "GET", "/v3/organizations?names=p1,p2,p3&per_page=2", "", 200, &p1)
		base := e.srv.URL + "/v3/organizations?names=p1%2Cp2%2Cp3&page="
		if p1.Pagination.TotalResults != 3 || p1.Pagination.TotalPages != 2 || len(p1.Resources) != 2 ||
			p1.Pagination.Next == nil || p1.Pagination.Next.Href != base+"2&per_page=2" ||
			p1.Pagination.First.Href != base+"1&per_page=2" || p1.Pagination.Last.Href != base+"2&per_page=2" || p1.Pagination.Previous != nil {
			t.Errorf("page 1 = %+v", p1)
		}
		var p2 page
		e.must(e.admin, "GET", strings.TrimPrefix(p1.Pagination.Next.Href, e.srv.URL), "", 200, &p2)
		if len(p2.Resources) != 1 || p2.Pagination.Next != nil || p2.Pagination.Previous == nil || p2.Pagination.Previous.Href != base+"1&per_page=2" {
			t.Errorf("page 2 = %+v", p2)
		}
		if got := append(names(p1), names(p2)...); !cmp.Equal(got, names(all)) {
			t.Errorf("pages hold %v, want %v", got, names(all))
		}
		for _, q := range []string{"per_page=0", "per_page=5001", "per_page=x", "page=0", "page=-1"} {
			code, body := e.do(e.admin, "GET", "/v3/organizations?"+q, "")
			if v := v3Err(t, body); code != 400 || v.Title != "CF-BadQueryParameter" || v.Code != 10005 {
				t.Errorf("GET /v3/organizations?%s = %d %s, want 400 CF-BadQueryParameter", q, code, body)
			}
		}
	})
}

// TestV3Shapes checks the fields the cf CLI reads: metadata, absolute
// links, an org's quota relationship, a route's destinations with the web
// process and port 8080, an internal domain.
func TestV3Shapes(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		space := e.defaultSpace()
		app := e.createApp(space, "backend")
		rt := e.createRoute(e.admin, space, "backend", "apps.internal")
		e.must(e.admin, "POST", "/v3/routes/"+rt.GUID+"/destinations",
			fmt.Sprintf(`{"destinations":[{"app":{"guid":%q,"process":{"type":"web"}},"port":8080,"protocol":"http1"}]}`, app), 200, nil)

		var route map[string]any
		e.must(e.admin, "GET", "/v3/routes/"+rt.GUID, "", 200, &route)
		want := map[string]any{"guid": app, "process": map[string]any{"type": "web"}}
		dest := route["destinations"].([]any)[0].(map[string]any)
		if !cmp.Equal(dest["app"], want) || dest["port"] != 8080.0 || dest["protocol"] != "http1" {
			t.Errorf("destination = %v, want app %v on 8080 http1", dest, want)
		}
		if route["url"] != "backend.apps.internal" || route["protocol"] != "http" {
			t.Errorf("route url/protocol = %v/%v", route["url"], route["protocol"])
		}
		links := route["links"].(map[string]any)
		if got := links["self"].(map[string]any)["href"]; got != e.srv.URL+"/v3/routes/"+rt.GUID {
			t.Errorf("route self link = %v", got)
		}

		var orgs api.List[map[string]any]
		e.must(e.admin, "GET", "/v3/organizations?names=default", "", 200, &orgs)
		org := orgs.Resources[0]
		if org["suspended"] != false || org["metadata"] == nil || org["relationships"].(map[string]any)["quota"] == nil {
			t.Errorf("org = %v, want suspended false, metadata, a quota relationship", org)
		}
		var org1 map[string]any
		e.must(e.admin, "GET", "/v3/organizations/"+org["guid"].(string), "", 200, &org1)
		if org1["name"] != "default" {
			t.Errorf("GET org = %v", org1)
		}

		var ds api.List[map[string]any]
		e.must(e.admin, "GET", "/v3/organizations/"+org["guid"].(string)+"/domains", "", 200, &ds)
		if len(ds.Resources) != 1 || ds.Resources[0]["name"] != "apps.internal" || ds.Resources[0]["internal"] != true {
			t.Errorf("org domains = %v, want apps.internal, internal", ds.Resources)
		}
		var res map[string]bool
		e.must(e.admin, "GET", "/v3/domains/"+rt.Relationships.Domain.Data.GUID+"/route_reservations?host=backend", "", 200, &res)
		if !res["matching_route"] {
			t.Errorf("route_reservations backend = %v, want a match", res)
		}
		e.must(e.admin, "GET", "/v3/domains/"+rt.Relationships.Domain.Data.GUID+"/route_reservations?host=nobody", "", 200, &res)
		if res["matching_route"] {
			t.Errorf("route_reservations nobody = %v, want none", res)
		}
	})
}

// TestV3Processes checks an app's web process: its instances are the
// instances cells registered (running) and the desired ones not yet
// placed (starting), in embed=process_instances and in stats, which name
// the cell's address as the host.
func TestV3Processes(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		space := e.defaultSpace()
		app := e.createApp(space, "web")
		e.must(e.admin, "POST", "/v3/apps/"+app+"/processes/web/actions/scale", `{"instances":2}`, 200, nil)
		e.must(e.admin, "POST", "/v3/apps/"+app+"/actions/start", "", 200, nil)
		join, cell := e.joinCell("cell-1", "198.51.100.21")
		ip := join.Cell.Subnet.Addr().Next().Next().Next().Next().Next()
		e.register(cell, "00000000-0000-4000-8000-000000000001", app, 0, ip.String())

		var procs api.List[ccProcess]
		e.must(e.admin, "GET", "/v3/processes?embed=process_instances&space_guids="+space, "", 200, &procs)
		if len(procs.Resources) != 1 {
			t.Fatalf("processes = %+v, want one", procs.Resources)
		}
		p := procs.Resources[0]
		if p.GUID != app || p.Type != "web" || p.Instances != 2 {
			t.Fatalf("process = %+v", p)
		}
		var states []string
		for _, in := range p.ProcessInstances {
			states = append(states, fmt.Sprintf("%d:%s", in.Index, in.State))
		}
		if want := []string{"0:RUNNING", "1:STARTING"}; !cmp.Equal(states, want) {
			t.Errorf("process instances = %v, want %v", states, want)
		}

		var stats struct{ Resources []ccProcessStats }
		e.must(e.admin, "GET", "/v3/processes/"+app+"/stats", "", 200, &stats)
		if len(stats.Resources) != 2 || stats.Resources[0].State != "RUNNING" || stats.Resources[0].InstanceInternalIP != ip.String() ||
			stats.Resources[0].Host != "198.51.100.21" || stats.Resources[1].State != "STARTING" {
			t.Errorf("stats = %+v", stats.Resources)
		}
		var same struct{ Resources []ccProcessStats }
		e.must(e.admin, "GET", "/v3/apps/"+app+"/processes/web/stats", "", 200, &same)
		if len(same.Resources) != 2 {
			t.Errorf("app process stats = %+v", same.Resources)
		}

		// Another space's write token sees no process of this one.
		other := e.token(ScopeWrite, []string{e.createSpace("other")})
		var none api.List[ccProcess]
		e.must(other, "GET", "/v3/processes?app_guids="+app, "", 200, &none)
		if len(none.Resources) != 0 {
			t.Errorf("other space's token sees %+v", none.Resources)
		}
		for _, path := range []string{"/v3/processes/" + app, "/v3/processes/" + app + "/stats"} {
			code, body := e.do(other, "GET", path, "")
			if v := v3Err(t, body); code != 404 || v.Detail != "Process not found" || v.Code != 10010 {
				t.Errorf("GET %s as another space = %d %s, want 404 Process not found", path, code, body)
			}
		}
		code, body := e.do(e.admin, "GET", "/v3/apps/"+app+"/processes/worker", "")
		if v := v3Err(t, body); code != 404 || v.Detail != "Process not found" {
			t.Errorf("worker process = %d %s", code, body)
		}
		code, body = e.do(e.admin, "GET", "/v3/processes?embed=stats", "")
		if v := v3Err(t, body); code != 400 || v.Title != "CF-BadQueryParameter" {
			t.Errorf("embed=stats = %d %s", code, body)
		}
	})
}

// TestV3Errors checks Cloud Controller's error answers where the cf CLI
// reads them: taken names, unknown paths and methods, bad destinations.
func TestV3Errors(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		e.must(e.admin, "POST", "/v3/organizations", `{"name":"o1"}`, 201, nil)
		var orgs api.List[api.Organization]
		e.must(e.admin, "GET", "/v3/organizations?names=o1", "", 200, &orgs)
		spaceBody := fmt.Sprintf(`{"name":"s1","relationships":{"organization":{"data":{"guid":%q}}},"metadata":{"labels":{}}}`, orgs.Resources[0].GUID)
		e.must(e.admin, "POST", "/v3/spaces", spaceBody, 201, nil)
		space := e.defaultSpace()
		app := e.createApp(space, "a")
		rt := e.createRoute(e.admin, space, "a", "apps.internal")
		for _, c := range []struct {
			method, path, body string
			code               int
			title, detail      string
		}{
			{"POST", "/v3/organizations", `{"name":"o1","suspended":false,"metadata":{}}`, 422, "CF-UnprocessableEntity", "Organization 'o1' already exists."},
			{"POST", "/v3/spaces", spaceBody, 422, "CF-UnprocessableEntity", "Name must be unique per organization"},
			{"POST", "/v3/routes/" + rt.GUID + "/destinations", fmt.Sprintf(`{"destinations":[{"app":{"guid":%q,"process":{"type":"worker"}}}]}`, app),
				422, "CF-UnprocessableEntity", `Destinations[0]: process type "worker": trellis apps have one process, web`},
			{"POST", "/v3/routes", fmt.Sprintf(`{"host":"b","path":"/x","relationships":{"domain":{"data":{"guid":%q}},"space":{"data":{"guid":%q}}}}`, rt.Relationships.Domain.Data.GUID, space),
				422, "CF-UnprocessableEntity", "Path is not supported: routes of internal domains have no path"},
			{"GET", "/v3/service_brokers", "", 404, "CF-NotFound", "Unknown request"},
			{"DELETE", "/v3/domains", "", 405, "CF-NotFound", "Method DELETE is not allowed for /v3/domains: use GET, POST"},
			{"GET", "/v3/apps/" + app + "/droplets/current", "", 404, "CF-ResourceNotFound", "Droplet not found"},
			{"GET", "/v3/jobs/not-a-job", "", 404, "CF-ResourceNotFound", "Job not found"},
			{"POST", "/v3/roles", fmt.Sprintf(`{"type":"space_boss","relationships":{"user":{"data":{"guid":"u"}},"space":{"data":{"guid":%q}}}}`, space),
				422, "CF-UnprocessableEntity", "Type must be one of the allowed types [organization_user, organization_auditor, organization_manager, organization_billing_manager, space_developer, space_auditor, space_manager, space_supporter]"},
		} {
			code, body := e.do(e.admin, c.method, c.path, c.body)
			v := v3Err(t, body)
			if code != c.code || v.Title != c.title || v.Detail != c.detail {
				t.Errorf("%s %s = %d %s, want %d %s %q", c.method, c.path, code, body, c.code, c.title, c.detail)
			}
		}
		resp := e.send(e.admin, "PUT", "/v3/apps", "", nil)
		if got := resp.Header.Get("Allow"); got != "GET, POST" {
			t.Errorf("PUT /v3/apps: Allow = %q, want GET, POST", got)
		}
	})
}

// TestV3DeleteSpaceAndOrg checks that deleting a space deletes its apps
// and routes and answers a job that is complete, that a space a token is
// scoped to is refused and left as it was, and that an org goes with its
// spaces.
func TestV3DeleteSpaceAndOrg(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		var org api.Organization
		e.must(e.admin, "POST", "/v3/organizations", `{"name":"gone"}`, 201, &org)
		var sp, kept api.Space
		e.must(e.admin, "POST", "/v3/spaces", fmt.Sprintf(`{"name":"s","relationships":{"organization":{"data":{"guid":%q}}}}`, org.GUID), 201, &sp)
		e.must(e.admin, "POST", "/v3/spaces", fmt.Sprintf(`{"name":"k","relationships":{"organization":{"data":{"guid":%q}}}}`, org.GUID), 201, &kept)
		app := e.createApp(sp.GUID, "a")
		rt := e.createRoute(e.admin, sp.GUID, "gone", "apps.internal")
		e.must(e.admin, "POST", "/v3/routes/"+rt.GUID+"/destinations", destinationsBody(app), 200, nil)
		tok := e.token(ScopeWrite, []string{kept.GUID})

		resp := e.send(e.admin, "DELETE", "/v3/spaces/"+sp.GUID, "", nil)
		if resp.StatusCode != 202 || resp.Header.Get("Location") != e.srv.URL+"/v3/jobs/"+sp.GUID {
			t.Fatalf("DELETE space = %d (Location %q), want 202 and the job", resp.StatusCode, resp.Header.Get("Location"))
		}
		var job ccJob
		e.must(e.admin, "GET", "/v3/jobs/"+sp.GUID, "", 200, &job)
		if job.State != "COMPLETE" {
			t.Errorf("job = %+v, want COMPLETE", job)
		}
		e.must(e.admin, "GET", "/v3/apps/"+app, "", 404, nil)
		e.must(e.admin, "GET", "/v3/routes/"+rt.GUID, "", 404, nil)
		e.must(e.admin, "GET", "/v3/spaces/"+sp.GUID, "", 404, nil)

		// The kept space has a token: neither it nor its org is deleted.
		rev := e.revision()
		code, body := e.do(e.admin, "DELETE", "/v3/organizations/"+org.GUID, "")
		if v := v3Err(t, body); code != 422 || !strings.Contains(v.Detail, "Space 'k' cannot be deleted: token") {
			t.Errorf("DELETE org with a token's space = %d %s, want 422", code, body)
		}
		if e.revision() != rev {
			t.Errorf("a refused delete changed the store")
		}
		e.must(tok, "DELETE", "/v3/spaces/"+kept.GUID, "", 403, nil)
		e.must(tok, "DELETE", "/v3/organizations/"+org.GUID, "", 403, nil)
		e.must(tok, "DELETE", tokensPath+"/"+e.tokenGUIDOf(tok), "", 204, nil)
		e.must(e.admin, "DELETE", "/v3/organizations/"+org.GUID, "", 202, nil)
		e.must(e.admin, "GET", "/v3/organizations/"+org.GUID, "", 404, nil)
		e.must(e.admin, "GET", "/v3/spaces/"+kept.GUID, "", 404, nil)
	})
}

// tokenGUIDOf is the GUID of a token value.
func (e *env) tokenGUIDOf(value string) string {
	e.t.Helper()
	t, err := e.store.TokenByHash(context.Background(), HashToken(value))
	if err != nil {
		e.t.Fatalf("token by hash: %v", err)
	}
	return t.GUID
}

// TestV3RouteFilters checks the route filters the cf CLI sends beyond
// trellis's own: organization_guids, and paths (internal routes have none).
func TestV3RouteFilters(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		var org api.Organization
		e.must(e.admin, "POST", "/v3/organizations", `{"name":"o2"}`, 201, &org)
		var sp api.Space
		e.must(e.admin, "POST", "/v3/spaces", fmt.Sprintf(`{"name":"s","relationships":{"organization":{"data":{"guid":%q}}}}`, org.GUID), 201, &sp)
		mine := e.createRoute(e.admin, sp.GUID, "mine", "apps.internal")
		e.createRoute(e.admin, e.defaultSpace(), "theirs", "apps.internal")
		tok := e.token(ScopeWrite, []string{e.defaultSpace()})
		for _, c := range []struct {
			token, query string
			want         []string
		}{
			{e.admin, "organization_guids=" + org.GUID, []string{mine.GUID}},
			{e.admin, "organization_guids=" + org.GUID + "&paths=", []string{mine.GUID}},
			{e.admin, "organization_guids=" + org.GUID + "&paths=/x", nil},
			{e.admin, "organization_guids=" + org.GUID + "&space_guids=" + e.defaultSpace(), nil},
			{tok, "organization_guids=" + org.GUID, nil},
		} {
			var l api.List[api.Route]
			e.must(c.token, "GET", "/v3/routes?"+c.query, "", 200, &l)
			var got []string
			for _, rt := range l.Resources {
				got = append(got, rt.GUID)
			}
			if !cmp.Equal(got, c.want) {
				t.Errorf("GET /v3/routes?%s = %v, want %v", c.query, got, c.want)
			}
		}
	})
}

// TestV3Roles checks the roles trellis knows: a write token or a user is a
// space developer of its spaces; an admin sees every token's and user's,
// a token or user its own.
func TestV3Roles(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		a, b := e.defaultSpace(), e.createSpace("b")
		ta, tb := e.token(ScopeWrite, []string{a}), e.token(ScopeWrite, []string{a, b})
		ga, gb := e.tokenGUIDOf(ta), e.tokenGUIDOf(tb)
		type role struct {
			Type          string
			Relationships struct {
				User  struct{ Data api.Ref }
				Space struct{ Data *api.Ref }
			}
		}
		roles := func(token, q string) []string {
			var l api.List[role]
			e.must(token, "GET", "/v3/roles?"+q, "", 200, &l)
			var out []string
			for _, r := range l.Resources {
				out = append(out, fmt.Sprintf("%s %s %s", r.Type, r.Relationships.User.Data.GUID, r.Relationships.Space.Data.GUID))
			}
			return out
		}
		dev := func(tok, sp string) string { return "space_developer " + tok + " " + sp }
		// Users: a developer of b (logged in), an admin (no space roles).
		carol, root := e.createUser("carol", false, b), e.createUser("root", true)
		carolJWT := e.login(carol, testPassword)
		for _, c := range []struct {
			token, q string
			want     []string
		}{
			{e.admin, "space_guids=" + b, []string{dev(gb, b), dev(carol.GUID, b)}},
			{e.admin, "user_guids=" + ga, []string{dev(ga, a)}},
			{e.admin, "types=space_manager", nil},
			{ta, "", []string{dev(ga, a)}},
			{tb, "space_guids=" + b, []string{dev(gb, b)}},
			{e.admin, "space_guids=" + b + "&user_guids=" + carol.GUID, []string{dev(carol.GUID, b)}},
			{e.admin, "user_guids=" + root.GUID, nil},
			{carolJWT, "", []string{dev(carol.GUID, b)}},
			{carolJWT, "space_guids=" + a, nil},
		} {
			if got := roles(c.token, c.q); !cmp.Equal(got, c.want) {
				t.Errorf("GET /v3/roles?%s = %v, want %v", c.q, got, c.want)
			}
		}
		// include=user (cf space-users): a user is UAA's, a token a client.
		var inc struct {
			Included struct {
				Users []struct {
					GUID             string
					Username, Origin *string
					PresentationName string `json:"presentation_name"`
				}
			}
		}
		e.must(e.admin, "GET", "/v3/roles?include=user&space_guids="+b, "", 200, &inc)
		got := map[string]string{}
		for _, u := range inc.Included.Users {
			switch {
			case u.Username != nil && u.Origin != nil:
				got[u.GUID] = *u.Username + " (" + *u.Origin + ")"
			case u.Username == nil && u.Origin == nil:
				got[u.GUID] = u.PresentationName + " (client)"
			default:
				got[u.GUID] = "half a user"
			}
		}
		if want := map[string]string{carol.GUID: "carol (uaa)", gb: ScopeWrite + " (client)"}; !cmp.Equal(got, want) {
			t.Errorf("GET /v3/roles?include=user: included users %v, want %v", got, want)
		}
	})
}
