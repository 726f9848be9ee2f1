package controller

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/identity"
	"github.com/trellis-c2c/trellis/internal/ipam"
	"github.com/trellis-c2c/trellis/internal/store"
	"github.com/trellis-c2c/trellis/internal/store/storetest"
)

// env is one controller under test: a real HTTPS server on a real store.
type env struct {
	t     testing.TB
	srv   *httptest.Server
	store *store.Store
	dbURL string // the store's database, for tests that set up what the API cannot
	ca    *identity.CA
	admin string
}

func newEnv(t testing.TB, engine string) *env {
	t.Helper()
	return newEnvWith(t, engine, InstanceIdentity{})
}

// newEnvWith is newEnv with instance identity settings; like Run, it
// creates the instance CA before serving.
func newEnvWith(t testing.TB, engine string, id InstanceIdentity) *env {
	t.Helper()
	return newEnvAt(t, storetest.URL(t, engine), id)
}

// newEnvAt is a controller on the database at dbURL, which other
// controllers of the test may share.
func newEnvAt(t testing.TB, dbURL string, id InstanceIdentity) *env {
	t.Helper()
	st := storetest.OpenURL(t, dbURL)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ca, err := identity.LoadOrCreateCA(t.TempDir(), "test CA")
	if err != nil {
		t.Fatal(err)
	}
	pool, _ := ipam.NewPool(ipam.DefaultOverlay, ipam.DefaultSubnetPrefix)
	if err := st.OverlaySettings(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	if _, err := ensureInstanceCA(context.Background(), st, log); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(NewServer(st, ca, pool, id, log))
	srv.TLS = TLSConfig(tls.Certificate{}, ca)
	srv.TLS.Certificates = nil
	srv.StartTLS()
	t.Cleanup(srv.Close)
	e := &env{t: t, srv: srv, store: st, dbURL: dbURL, ca: ca}
	e.admin = e.token(ScopeAdmin, nil)
	return e
}

// forEachEngine runs f against a fresh controller on every store engine.
func forEachEngine(t *testing.T, f func(t *testing.T, e *env)) {
	for _, engine := range storetest.Engines {
		t.Run(engine, func(t *testing.T) { f(t, newEnv(t, engine)) })
	}
}

func (e *env) token(scope string, spaces []string) string {
	e.t.Helper()
	value, hash := NewToken()
	if _, err := e.store.CreateToken(context.Background(), store.Token{Name: scope, Scope: scope, SpaceGUIDs: spaces}, hash); err != nil {
		e.t.Fatalf("CreateToken: %v", err)
	}
	return value
}

// do sends a request and returns status and body.
func (e *env) do(token, method, path, body string) (int, string) {
	e.t.Helper()
	resp := e.send(token, method, path, body, nil)
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// must sends a request that must answer want, and decodes the body into out.
func (e *env) must(token, method, path, body string, want int, out any) {
	e.t.Helper()
	code, got := e.do(token, method, path, body)
	if code != want {
		e.t.Fatalf("%s %s %s = %d %s, want %d", method, path, body, code, got, want)
	}
	if out != nil {
		if err := json.Unmarshal([]byte(got), out); err != nil {
			e.t.Fatalf("%s %s: decode %s: %v", method, path, got, err)
		}
	}
}

func (e *env) defaultSpace() string {
	var l api.List[api.Space]
	e.must(e.admin, "GET", "/v3/spaces?names=default", "", 200, &l)
	if len(l.Resources) != 1 {
		e.t.Fatalf("default space: got %d", len(l.Resources))
	}
	return l.Resources[0].GUID
}

func (e *env) createSpace(name string) string {
	var orgs api.List[api.Organization]
	e.must(e.admin, "GET", "/v3/organizations?names=default", "", 200, &orgs)
	var sp api.Space
	e.must(e.admin, "POST", "/v3/spaces", fmt.Sprintf(`{"name":%q,"relationships":{"organization":{"data":{"guid":%q}}}}`, name, orgs.Resources[0].GUID), 201, &sp)
	return sp.GUID
}

func (e *env) createApp(space, name string) string {
	var a api.App
	e.must(e.admin, "POST", "/v3/apps", fmt.Sprintf(`{"name":%q,"relationships":{"space":{"data":{"guid":%q}}}}`, name, space), 201, &a)
	return a.GUID
}

// createRoute creates host.domain in space as token; the route must be created.
func (e *env) createRoute(token, space, host, domain string) api.Route {
	e.t.Helper()
	var ds api.List[api.Domain]
	e.must(e.admin, "GET", "/v3/domains?names="+domain, "", 200, &ds)
	if len(ds.Resources) != 1 {
		e.t.Fatalf("domain %s: got %d", domain, len(ds.Resources))
	}
	var rt api.Route
	e.must(token, "POST", "/v3/routes", routeBody(host, ds.Resources[0].GUID, space), 201, &rt)
	return rt
}

// routeBody is the body of POST /v3/routes.
func routeBody(host, domain, space string) string {
	return fmt.Sprintf(`{"host":%q,"relationships":{"domain":{"data":{"guid":%q}},"space":{"data":{"guid":%q}}}}`, host, domain, space)
}

func policyBody(ps ...[5]any) string {
	var req api.PoliciesRequest
	for _, p := range ps {
		req.Policies = append(req.Policies, api.Policy{
			Source:      api.Source{ID: p[0].(string)},
			Destination: api.Destination{ID: p[1].(string), Protocol: p[2].(string), Ports: api.Ports{Start: p[3].(int), End: p[4].(int)}},
		})
	}
	b, _ := json.Marshal(req)
	return string(b)
}

const policiesPath = "/networking/v1/external/policies"

func TestPolicyLifecycle(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		space := e.defaultSpace()
		fe, be, db := e.createApp(space, "frontend"), e.createApp(space, "backend"), e.createApp(space, "db")

		body := policyBody([5]any{fe, be, "tcp", 8080, 8080}, [5]any{be, db, "udp", 5000, 5010})
		code, got := e.do(e.admin, "POST", policiesPath, body)
		if code != 200 || got != "{}" {
			t.Fatalf("create = %d %s, want 200 {}", code, got)
		}
		rev1, _ := e.store.Revision(context.Background())
		// Idempotent: the same create again succeeds and changes nothing.
		e.must(e.admin, "POST", policiesPath, body, 200, nil)
		if rev2, _ := e.store.Revision(context.Background()); rev2 != rev1 {
			t.Errorf("revision after idempotent create = %d, want %d", rev2, rev1)
		}

		// Byte-compatible list.
		code, got = e.do(e.admin, "GET", policiesPath+"?id="+fe, "")
		want := `{"total_policies":1,"policies":[{"source":{"id":"` + fe + `"},"destination":{"id":"` + be + `","protocol":"tcp","ports":{"start":8080,"end":8080}}}]}`
		if code != 200 || got != want {
			t.Errorf("GET ?id=frontend = %d %s, want 200 %s", code, got, want)
		}
		filters := []struct {
			query string
			want  int
		}{
			{"", 2},
			{"?id=" + be, 2},
			{"?source_id=" + be, 1},
			{"?dest_id=" + be, 1},
			{"?source_id=" + fe + "&dest_id=" + db, 0},
			{"?source_id=" + be + "&dest_id=" + db, 1},
			{"?id=" + fe + "," + db, 2},
			{"?id=nonexistent", 0},
		}
		for _, f := range filters {
			var l api.PoliciesResponse
			e.must(e.admin, "GET", policiesPath+f.query, "", 200, &l)
			if l.TotalPolicies != f.want || len(l.Policies) != f.want {
				t.Errorf("GET policies%s = %d policies, want %d", f.query, l.TotalPolicies, f.want)
			}
		}

		// Tags: lowest free first, 4 hex digits, admin only.
		var tags api.TagsResponse
		e.must(e.admin, "GET", "/networking/v1/external/tags", "", 200, &tags)
		wantTags := []api.Tag{{ID: fe, Tag: "0001", Type: "app"}, {ID: be, Tag: "0002", Type: "app"}, {ID: db, Tag: "0003", Type: "app"}}
		if diff := cmp.Diff(wantTags, tags.Tags); diff != "" {
			t.Errorf("tags mismatch (-want +got):\n%s", diff)
		}

		// v0 shows single-port policies only, with "port".
		code, got = e.do(e.admin, "GET", "/networking/v0/external/policies", "")
		wantV0 := `{"total_policies":1,"policies":[{"source":{"id":"` + fe + `"},"destination":{"id":"` + be + `","protocol":"tcp","port":8080}}]}`
		if code != 200 || got != wantV0 {
			t.Errorf("GET v0 = %d %s, want %s", code, got, wantV0)
		}
		code, got = e.do(e.admin, "GET", "/networking/v7/external/policies", "")
		if code != 406 || got != `{"error":"api version 'v7' not supported"}` {
			t.Errorf("GET v7 = %d %s", code, got)
		}

		// Delete one; deleting it again is silently fine.
		del := policyBody([5]any{fe, be, "tcp", 8080, 8080})
		e.must(e.admin, "POST", policiesPath+"/delete", del, 200, nil)
		e.must(e.admin, "POST", policiesPath+"/delete", del, 200, nil)
		var l api.PoliciesResponse
		e.must(e.admin, "GET", policiesPath, "", 200, &l)
		if l.TotalPolicies != 1 {
			t.Errorf("after delete: %d policies, want 1", l.TotalPolicies)
		}
		// frontend is in no policy now: its tag 0001 is free, but
		// quarantined (store.TagQuarantine) while cells may still apply
		// frontend's rules: a new app gets the next.
		other := e.createApp(space, "worker")
		e.must(e.admin, "POST", policiesPath, policyBody([5]any{other, db, "tcp", 1, 65535}), 200, nil)
		e.must(e.admin, "GET", "/networking/v1/external/tags", "", 200, &tags)
		if got := tagOf(tags, other); got != "0004" {
			t.Errorf("tag for worker = %q, want 0004 (0001 was freed just now)", got)
		}

		// Deleting an app deletes every policy that names it.
		e.must(e.admin, "DELETE", "/v3/apps/"+db, "", 204, nil)
		e.must(e.admin, "GET", policiesPath, "", 200, &l)
		if l.TotalPolicies != 0 {
			t.Errorf("after deleting app db: %d policies, want 0", l.TotalPolicies)
		}
	})
}

func tagOf(tags api.TagsResponse, id string) string {
	for _, t := range tags.Tags {
		if t.ID == id {
			return t.Tag
		}
	}
	return ""
}

func TestPolicyBadInput(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		space := e.defaultSpace()
		a, b := e.createApp(space, "a"), e.createApp(space, "b")
		tests := []struct {
			name, body string
			code       int
			want       string
		}{
			{"icmp", policyBody([5]any{a, b, "icmp", 80, 80}), 400, `{"error":"mapper: validate policies: invalid destination protocol, specify either udp or tcp"}`},
			{"port 0", policyBody([5]any{a, b, "tcp", 0, 0}), 400, `{"error":"mapper: validate policies: missing start port"}`},
			{"port 65536", policyBody([5]any{a, b, "tcp", 65536, 65536}), 400, `{"error":"mapper: validate policies: invalid end port 65536, must be in range 1-65535"}`},
			{"start > end", policyBody([5]any{a, b, "tcp", 9, 8}), 400, `{"error":"mapper: validate policies: invalid port range 9-8, start must be less than or equal to end"}`},
			{"truncated", `{"policies":[`, 400, `{"error":"mapper: unmarshal json: unexpected EOF"}`},
			{"unknown field", `{"policies":[],"x":1}`, 400, `{"error":"mapper: unmarshal json: json: unknown field \"x\""}`},
			{"unknown app", policyBody([5]any{a, "4b0c2bd1-0000-4000-8000-000000000000", "tcp", 80, 80}), 403, `{"error":"one or more applications cannot be found or accessed"}`},
		}
		for _, tt := range tests {
			code, got := e.do(e.admin, "POST", policiesPath, tt.body)
			if code != tt.code || got != tt.want {
				t.Errorf("%s: POST = %d %s, want %d %s", tt.name, code, got, tt.code, tt.want)
			}
		}

		// A batch of 100 with one bad policy creates none, at validation or at the store.
		var batch [][5]any
		for i := 1; i <= 100; i++ {
			batch = append(batch, [5]any{a, b, "tcp", i, i})
		}
		bad := append([][5]any(nil), batch...)
		bad[50] = [5]any{a, b, "tcp", 0, 0}
		e.must(e.admin, "POST", policiesPath, policyBody(bad...), 400, nil)
		bad[50] = [5]any{a, "9c5e7f00-0000-4000-8000-000000000000", "tcp", 51, 51}
		e.must(e.admin, "POST", policiesPath, policyBody(bad...), 403, nil)
		var l api.PoliciesResponse
		e.must(e.admin, "GET", policiesPath, "", 200, &l)
		if l.TotalPolicies != 0 {
			t.Errorf("after rejected batches: %d policies, want 0", l.TotalPolicies)
		}

		// Wrong content type.
		req, _ := http.NewRequest("POST", e.srv.URL+policiesPath, strings.NewReader(policyBody([5]any{a, b, "tcp", 80, 80})))
		req.Header.Set("Authorization", "Bearer "+e.admin)
		req.Header.Set("Content-Type", "text/plain")
		resp, err := e.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 415 || string(body) != `{"error":"unsupported content type \"text/plain\": use application/json"}` {
			t.Errorf("text/plain POST = %d %s", resp.StatusCode, body)
		}
	})
}

func TestPolicyBodyLimit(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		space := e.defaultSpace()
		a, b := e.createApp(space, "a"), e.createApp(space, "b")

		// 10,000 policies fit in the limit and are created in one request.
		var ps [][5]any
		for i := 1; i <= 10000; i++ {
			ps = append(ps, [5]any{a, b, "tcp", i, i})
		}
		body := policyBody(ps...)
		if len(body) > 10<<20 {
			t.Fatalf("test body is %d bytes, over the limit", len(body))
		}
		e.must(e.admin, "POST", policiesPath, body, 200, nil)
		var l api.PoliciesResponse
		e.must(e.admin, "GET", policiesPath, "", 200, &l)
		if l.TotalPolicies != 10000 {
			t.Errorf("after 10k create: %d policies", l.TotalPolicies)
		}

		// Over 10 MB: 413 (trellis's answer: cf-c2c.md gives CF's limit,
		// not its answer), nothing read further, nothing changed. Valid
		// policies in the body do not help it through.
		rev := e.revision()
		big := policyBody([5]any{a, b, "tcp", 10001, 10001})
		big = big[:len(big)-2] + strings.Repeat(" ", 10<<20) + "]}"
		code, got := e.do(e.admin, "POST", policiesPath, big)
		if code != 413 || got != `{"error":"request body too large: limit is 10485760 bytes"}` {
			t.Errorf("11 MB POST = %d %s", code, got)
		}
		if got := e.revision(); got != rev {
			t.Errorf("revision after refused 11 MB POST = %d, want %d", got, rev)
		}
		e.must(e.admin, "GET", policiesPath, "", 200, &l)
		if l.TotalPolicies != 10000 {
			t.Errorf("after refused 11 MB POST: %d policies, want 10000", l.TotalPolicies)
		}
	})
}

// revision is the store's revision now.
func (e *env) revision() int64 {
	e.t.Helper()
	rev, err := e.store.Revision(context.Background())
	if err != nil {
		e.t.Fatalf("Revision: %v", err)
	}
	return rev
}

func TestAuth(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		mine, theirs := e.defaultSpace(), e.createSpace("other")
		a, b := e.createApp(mine, "a"), e.createApp(mine, "b")
		x := e.createApp(theirs, "x")
		writer := e.token(ScopeWrite, []string{mine})

		// No token, wrong token, wrong scheme: 401 with WWW-Authenticate.
		for _, h := range []string{"", "Bearer trls_nope", "Basic YTpi", "Bearer"} {
			req, _ := http.NewRequest("GET", e.srv.URL+policiesPath, nil)
			if h != "" {
				req.Header.Set("Authorization", h)
			}
			resp, err := e.srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			want := `{"error":"failed to verify token with uaa"}`
			if h == "" {
				want = `{"error":"missing authorization header"}`
			}
			if resp.StatusCode != 401 || string(body) != want || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("Authorization %q: %d %s (WWW-Authenticate %q), want 401 %s", h, resp.StatusCode, body, resp.Header.Get("WWW-Authenticate"), want)
			}
		}
		code, got := e.do("", "GET", "/v3/apps", "")
		if code != 401 || !strings.Contains(got, `"title":"CF-NotAuthenticated"`) {
			t.Errorf("v3 without token = %d %s", code, got)
		}

		// network.write: tags are admin only.
		code, got = e.do(writer, "GET", "/networking/v1/external/tags", "")
		if code != 403 || got != `{"error":"provided scopes [network.write] do not include allowed scopes [network.admin]"}` {
			t.Errorf("writer GET tags = %d %s", code, got)
		}
		// Within its space: allowed. Across spaces: 403, as for an unknown app.
		e.must(writer, "POST", policiesPath, policyBody([5]any{a, b, "tcp", 8080, 8080}), 200, nil)
		for _, p := range [][5]any{{a, x, "tcp", 80, 80}, {x, a, "tcp", 80, 80}} {
			code, got = e.do(writer, "POST", policiesPath, policyBody(p))
			if code != 403 || got != `{"error":"one or more applications cannot be found or accessed"}` {
				t.Errorf("writer cross-space create = %d %s", code, got)
			}
			code, _ = e.do(writer, "POST", policiesPath+"/delete", policyBody(p))
			if code != 403 {
				t.Errorf("writer cross-space delete = %d, want 403", code)
			}
		}
		// The writer sees only policies between its own apps.
		e.must(e.admin, "POST", policiesPath, policyBody([5]any{a, x, "tcp", 80, 80}), 200, nil)
		var l api.PoliciesResponse
		e.must(writer, "GET", policiesPath, "", 200, &l)
		if l.TotalPolicies != 1 || l.Policies[0].Destination.ID != b {
			t.Errorf("writer GET policies = %+v, want only a->b", l)
		}
		e.must(e.admin, "GET", policiesPath, "", 200, &l)
		if l.TotalPolicies != 2 {
			t.Errorf("admin GET policies = %d, want 2", l.TotalPolicies)
		}
		// Writers cannot see or create apps elsewhere, nor make tokens.
		var apps api.List[api.App]
		e.must(writer, "GET", "/v3/apps", "", 200, &apps)
		if len(apps.Resources) != 2 {
			t.Errorf("writer sees %d apps, want 2", len(apps.Resources))
		}
		e.must(writer, "GET", "/v3/apps/"+x, "", 404, nil)
		e.must(writer, "POST", "/v3/apps", fmt.Sprintf(`{"name":"y","relationships":{"space":{"data":{"guid":%q}}}}`, theirs), 422, nil)
		e.must(writer, "POST", "/trellis/v1/tokens", `{"scope":"network.admin"}`, 403, nil)
		e.must(writer, "DELETE", "/v3/apps/"+x, "", 404, nil)
	})
}

func TestQuota(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		space := e.defaultSpace()
		a, b := e.createApp(space, "a"), e.createApp(space, "b")
		writer := e.token(ScopeWrite, []string{space})
		var ps [][5]any
		for i := 1; i <= MaxPoliciesPerSource; i++ {
			ps = append(ps, [5]any{a, b, "tcp", i, i})
		}
		e.must(writer, "POST", policiesPath, policyBody(ps...), 200, nil)
		rev := e.revision()
		code, got := e.do(writer, "POST", policiesPath, policyBody([5]any{a, b, "tcp", 9999, 9999}))
		if code != 403 || got != `{"error":"policy quota exceeded"}` {
			t.Errorf("151st policy = %d %s, want 403 policy quota exceeded", code, got)
		}
		if got := e.revision(); got != rev {
			t.Errorf("revision after refused 151st policy = %d, want %d", got, rev)
		}
		// Admins are not held to the quota.
		e.must(e.admin, "POST", policiesPath, policyBody([5]any{a, b, "tcp", 9999, 9999}), 200, nil)
		var l api.PoliciesResponse
		e.must(e.admin, "GET", policiesPath, "", 200, &l)
		if l.TotalPolicies != MaxPoliciesPerSource+1 {
			t.Errorf("policies = %d, want %d", l.TotalPolicies, MaxPoliciesPerSource+1)
		}
	})
}

func TestV3Resources(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		space := e.defaultSpace()
		app := e.createApp(space, "backend")

		// Duplicates and bad names are 422 and change nothing.
		code, got := e.do(e.admin, "POST", "/v3/apps", fmt.Sprintf(`{"name":"backend","relationships":{"space":{"data":{"guid":%q}}}}`, space))
		if code != 422 || !strings.Contains(got, "App with the name 'backend' already exists.") {
			t.Errorf("duplicate app = %d %s", code, got)
		}
		for _, body := range []string{`{"name":""}`, `{"name":" x"}`, `{"name":"` + strings.Repeat("a", 256) + `"}`} {
			e.must(e.admin, "POST", "/v3/organizations", body, 422, nil)
		}
		e.must(e.admin, "POST", "/v3/organizations", `{"name":"x","extra":true}`, 400, nil)
		e.must(e.admin, "POST", "/v3/organizations", `{"name":`, 400, nil)

		// Domains: apps.internal exists; internal ones can be added.
		var ds api.List[api.Domain]
		e.must(e.admin, "GET", "/v3/domains?names=apps.internal", "", 200, &ds)
		if len(ds.Resources) != 1 || !ds.Resources[0].Internal {
			t.Fatalf("apps.internal = %+v", ds.Resources)
		}
		var d api.Domain
		e.must(e.admin, "POST", "/v3/domains", `{"name":"svc.internal","internal":true}`, 201, &d)
		e.must(e.admin, "POST", "/v3/domains", `{"name":"svc.internal","internal":true}`, 422, nil)
		e.must(e.admin, "POST", "/v3/domains", `{"name":"bad_domain.internal","internal":true}`, 422, nil)

		// Routes: host validation, mapping, listing by app.
		domain := ds.Resources[0].GUID
		for _, host := range []string{"", "-x", "x-", "under_score", strings.Repeat("a", 64), "dot.ted"} {
			code, got := e.do(e.admin, "POST", "/v3/routes", routeBody(host, domain, space))
			if code != 422 || !strings.Contains(got, "invalid hostname") {
				t.Errorf("route host %q = %d %s, want 422 invalid hostname", host, code, got)
			}
		}
		var rt api.Route
		e.must(e.admin, "POST", "/v3/routes", routeBody("Backend", domain, space), 201, &rt)
		if rt.URL != "backend.apps.internal" || rt.Relationships.Space.Data.GUID != space {
			t.Errorf("route = url %q space %q, want backend.apps.internal in %s", rt.URL, rt.Relationships.Space.Data.GUID, space)
		}
		// The space is required, and must exist.
		for _, body := range []string{
			fmt.Sprintf(`{"host":"nospace","relationships":{"domain":{"data":{"guid":%q}}}}`, domain),
			routeBody("nospace", domain, "00000000-0000-4000-8000-000000000000"),
		} {
			if code, got := e.do(e.admin, "POST", "/v3/routes", body); code != 422 || !strings.Contains(got, "pace") {
				t.Errorf("POST /v3/routes %s = %d %s, want 422 naming the space", body, code, got)
			}
		}
		e.must(e.admin, "POST", "/v3/routes/"+rt.GUID+"/destinations", fmt.Sprintf(`{"destinations":[{"app":{"guid":%q}}]}`, app), 200, nil)
		var rts api.List[api.Route]
		e.must(e.admin, "GET", "/v3/routes?app_guids="+app, "", 200, &rts)
		if len(rts.Resources) != 1 || len(rts.Resources[0].Destinations) != 1 || rts.Resources[0].Destinations[0].App.GUID != app {
			t.Errorf("routes of app = %+v", rts.Resources)
		}
		// Deleting the app removes its route.
		e.must(e.admin, "DELETE", "/v3/apps/"+app, "", 204, nil)
		e.must(e.admin, "GET", "/v3/routes", "", 200, &rts)
		if len(rts.Resources) != 0 {
			t.Errorf("routes after app delete = %+v, want none", rts.Resources)
		}
		e.must(e.admin, "DELETE", "/v3/apps/"+app, "", 404, nil)
	})
}

func TestHealthAndMetrics(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		code, got := e.do("", "GET", "/health", "")
		if want := fmt.Sprintf(`{"revision":%d,"status":"ok"}`, e.revision()); code != 200 || got != want {
			t.Errorf("GET /health = %d %s, want 200 %s", code, got, want)
		}
		e.must("", "GET", "/metrics", "", 401, nil)
		e.createApp(e.defaultSpace(), "a")
		code, got = e.do(e.admin, "GET", "/metrics", "")
		for _, want := range []string{
			`trellis_http_requests_total{code="201",route="POST /v3/apps"} 1`,
			`trellis_http_requests_total{code="401",route="GET /metrics"} 1`,
			`trellis_store_objects{kind="apps"} 1`,
			fmt.Sprintf("trellis_store_revision %d\n", e.revision()),
			`trellis_http_request_duration_seconds_bucket{route="POST /v3/apps"`,
		} {
			if code != 200 || !strings.Contains(got, want) {
				t.Errorf("GET /metrics = %d, missing %q", code, want)
			}
		}
	})
}

func TestTokens(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		space := e.defaultSpace()
		var tok api.Token
		e.must(e.admin, "POST", "/trellis/v1/tokens", fmt.Sprintf(`{"scope":"network.write","space_guids":[%q],"name":"ci"}`, space), 201, &tok)
		if !strings.HasPrefix(tok.Value, "trls_") || tok.Scope != ScopeWrite {
			t.Fatalf("created token = %+v", tok)
		}
		e.must(tok.Value, "GET", policiesPath, "", 200, nil)
		rev := e.revision()
		for _, body := range []string{
			`{"scope":"network.read"}`,
			`{"scope":"network.write"}`,
			`{"scope":"network.write","space_guids":["nope"]}`,
			`{"scope":"network.admin","space_guids":["` + space + `"]}`,
		} {
			if code, got := e.do(e.admin, "POST", "/trellis/v1/tokens", body); code < 400 || code >= 500 {
				t.Errorf("POST tokens %s = %d %s, want 4xx", body, code, got)
			}
		}
		if got := e.revision(); got != rev {
			t.Errorf("revision after refused tokens = %d, want %d", got, rev)
		}
		// Only the hash is stored.
		if _, err := e.store.TokenByHash(context.Background(), []byte(tok.Value)); err == nil {
			t.Error("token found by its plain value; want only by hash")
		}
		if got, err := e.store.TokenByHash(context.Background(), HashToken(tok.Value)); err != nil || got.GUID != tok.GUID {
			t.Errorf("TokenByHash(hash of new token) = %+v, %v, want token %s", got, err, tok.GUID)
		}
	})
}

func TestAppendPoliciesMatchesEncodingJSON(t *testing.T) {
	ps := []store.Policy{
		{SourceApp: "a", DestApp: "b", Protocol: "tcp", StartPort: 1, EndPort: 65535},
		{SourceApp: `we"ird<>&\` + "\x01é", DestApp: "c", Protocol: "udp", StartPort: 8080, EndPort: 8080},
	}
	for _, in := range [][]store.Policy{nil, ps[:1], ps} {
		want := api.PoliciesResponse{TotalPolicies: len(in), Policies: []api.Policy{}}
		for _, p := range in {
			want.Policies = append(want.Policies, api.Policy{Source: api.Source{ID: p.SourceApp},
				Destination: api.Destination{ID: p.DestApp, Protocol: p.Protocol, Ports: api.Ports{Start: p.StartPort, End: p.EndPort}}})
		}
		wantJSON, _ := json.Marshal(want)
		if got := appendPolicies(nil, in); string(got) != string(wantJSON) {
			t.Errorf("appendPolicies(%v) =\n%s\nwant\n%s", in, got, wantJSON)
		}
	}
}

func TestSecurityHeaders(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		// Every response carries them: success, 401, 404, 405, 413 and a preflight.
		for _, r := range []struct {
			token, method, path, body string
			code                      int
		}{
			{"", "GET", "/health", "", 200},
			{e.admin, "GET", policiesPath, "", 200},
			{"", "GET", policiesPath, "", 401},
			{e.admin, "GET", "/nope", "", 404},
			{e.admin, "PUT", policiesPath, "", 405},
			{e.admin, "POST", policiesPath, `{"policies":[` + strings.Repeat(" ", 10<<20) + `]}`, 413},
			{"", "OPTIONS", policiesPath, "", 200},
		} {
			resp := e.send(r.token, r.method, r.path, r.body, nil)
			want := map[string]string{
				"X-Content-Type-Options":    "nosniff",
				"X-XSS-Protection":          "1; mode=block",
				"Strict-Transport-Security": "max-age=31536000",
			}
			if resp.StatusCode != r.code {
				t.Errorf("%s %s = %d, want %d", r.method, r.path, resp.StatusCode, r.code)
			}
			for k, v := range want {
				if got := resp.Header.Values(k); len(got) != 1 || got[0] != v {
					t.Errorf("%s %s: header %s = %q, want %q", r.method, r.path, k, got, v)
				}
			}
		}
	})
}

// send sends a request with extra headers and returns the response, its
// body read and closed.
func (e *env) send(token, method, path, body string, header map[string]string) *http.Response {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	resp.Body = io.NopCloser(bytes.NewReader(b))
	return resp
}

func TestCORSPreflight(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		app := e.createApp(e.defaultSpace(), "a")
		rev := e.revision()
		preflight := map[string]string{
			"Origin":                         "https://console.example",
			"Access-Control-Request-Method":  "POST",
			"Access-Control-Request-Headers": "authorization,content-type",
		}
		// No token, a bad token, or a body: a preflight is answered, reads
		// and changes nothing.
		for _, r := range []struct{ token, path, methods string }{
			{"", policiesPath, "GET,POST"},
			{"trls_nope", policiesPath + "?id=" + app, "GET,POST"},
			{"", policiesPath + "/delete", "POST"},
			{"", "/networking/v0/external/tags", "GET"},
			{"", "/v3/apps/" + app, "GET,PATCH,DELETE"},
			{"", "/v3/routes/x/destinations/y", "DELETE"},
			{"", "/health", "GET"},
		} {
			resp := e.send(r.token, "OPTIONS", r.path, "", preflight)
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || len(body) != 0 {
				t.Errorf("OPTIONS %s = %d %q, want 200 and no body", r.path, resp.StatusCode, body)
			}
			if got := resp.Header.Get("Access-Control-Allow-Methods"); got != r.methods {
				t.Errorf("OPTIONS %s: Access-Control-Allow-Methods = %q, want %q", r.path, got, r.methods)
			}
			if got := resp.Header.Get("Access-Control-Allow-Headers"); got != "authorization,content-type" {
				t.Errorf("OPTIONS %s: Access-Control-Allow-Headers = %q, want authorization,content-type", r.path, got)
			}
			if got := resp.Header.Get("WWW-Authenticate"); got != "" {
				t.Errorf("OPTIONS %s: WWW-Authenticate %q, want none", r.path, got)
			}
		}
		if got := e.revision(); got != rev {
			t.Errorf("revision after preflights = %d, want %d", got, rev)
		}
		// OPTIONS on a path the API does not serve is not a preflight.
		if resp := e.send("", "OPTIONS", "/networking/v1/external/nope", "", preflight); resp.StatusCode != 404 || resp.Header.Get("Access-Control-Allow-Methods") != "" {
			t.Errorf("OPTIONS unknown path = %d (Allow-Methods %q), want 404 and none", resp.StatusCode, resp.Header.Get("Access-Control-Allow-Methods"))
		}

		// Only OPTIONS skips authentication: any other method on an API
		// path without a token is 401 if the path serves it, else 405.
		paths := map[string][]string{
			policiesPath:                   {"GET", "HEAD", "POST"},
			policiesPath + "/delete":       {"POST"},
			"/networking/v1/external/tags": {"GET", "HEAD"},
			"/v3/apps":                     {"GET", "HEAD", "POST"},
			"/v3/apps/" + app:              {"GET", "HEAD", "PATCH", "DELETE"},
			"/trellis/v1/tokens":           {"GET", "HEAD", "POST"},
			"/trellis/v1/tokens/x":         {"DELETE"},
			"/metrics":                     {"GET", "HEAD"},
		}
		for path, served := range paths {
			for _, m := range []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "TRACE", "PROPFIND"} {
				resp := e.send("", m, path, "", nil)
				want := 405
				if slices.Contains(served, m) {
					want = 401
				}
				if resp.StatusCode != want {
					t.Errorf("%s %s without a token = %d, want %d", m, path, resp.StatusCode, want)
				}
			}
		}
		if got := e.revision(); got != rev {
			t.Errorf("revision after unauthenticated requests = %d, want %d", got, rev)
		}

		// Preflights are counted under their route.
		_, metrics := e.do(e.admin, "GET", "/metrics", "")
		if want := `trellis_http_requests_total{code="200",route="OPTIONS /networking/{version}/external/policies"} 2`; !strings.Contains(metrics, want) {
			t.Errorf("GET /metrics: missing %q", want)
		}
	})
}

func TestTagsExhausted(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		space := e.defaultSpace()
		a, b, c, d := e.createApp(space, "a"), e.createApp(space, "b"), e.createApp(space, "c"), e.createApp(space, "d")
		e.must(e.admin, "POST", policiesPath, policyBody([5]any{a, b, "tcp", 80, 80}), 200, nil) // tags 1 and 2
		e.takeTags(space, 4)                                                                     // only tag 3 is free

		// c and d need two tags, one is free: 409, and nothing changes.
		rev := e.revision()
		const exhausted = `{"error":"tags exhausted: all 65535 policy tags are in use"}`
		code, got := e.do(e.admin, "POST", policiesPath, policyBody([5]any{c, d, "tcp", 80, 80}))
		if code != 409 || got != exhausted {
			t.Errorf("POST c->d with one free tag = %d %s, want 409 %s", code, got, exhausted)
		}
		if got := e.revision(); got != rev {
			t.Errorf("revision after refused POST = %d, want %d", got, rev)
		}
		var tags api.TagsResponse
		e.must(e.admin, "GET", "/networking/v1/external/tags", "", 200, &tags)
		if len(tags.Tags) != 65534 || tagOf(tags, c) != "" || tagOf(tags, d) != "" {
			t.Errorf("after refused POST: %d tags, c %q, d %q; want 65534, none for c and d", len(tags.Tags), tagOf(tags, c), tagOf(tags, d))
		}
		var l api.PoliciesResponse
		e.must(e.admin, "GET", policiesPath, "", 200, &l)
		if l.TotalPolicies != 1 {
			t.Errorf("after refused POST: %d policies, want 1", l.TotalPolicies)
		}

		// The free tag is still there for an app that needs only one,
		// and then none is left.
		e.must(e.admin, "POST", policiesPath, policyBody([5]any{c, a, "tcp", 80, 80}), 200, nil)
		e.must(e.admin, "GET", "/networking/v1/external/tags", "", 200, &tags)
		if got := tagOf(tags, c); got != "0003" {
			t.Errorf("tag of c = %q, want 0003", got)
		}
		code, got = e.do(e.admin, "POST", policiesPath, policyBody([5]any{d, a, "tcp", 80, 80}))
		if code != 409 || got != exhausted {
			t.Errorf("POST d->a with no free tag = %d %s, want 409 %s", code, got, exhausted)
		}
		// Apps that have tags still get policies.
		e.must(e.admin, "POST", policiesPath, policyBody([5]any{b, c, "udp", 53, 53}), 200, nil)
	})
}

// takeTags gives every tag from first up to 65535 to a filler app of its
// own in space, straight in the database: 65,000 apps through the API
// would take minutes.
func (e *env) takeTags(space string, first int) {
	e.t.Helper()
	driver, dsn, ph := "sqlite", e.dbURL+"?_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)", []any{"?", "?"}
	if strings.HasPrefix(e.dbURL, "postgres") {
		driver, dsn, ph = "pgx", e.dbURL, []any{"$1", "$2"}
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		e.t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, fmt.Sprintf(`INSERT INTO apps (guid, space_guid, name, state, created_at, updated_at)
		SELECT 'filler-' || tag, %s, 'filler-' || tag, 'STOPPED', 0, 0 FROM tags WHERE tag >= %s`, ph...), space, first); err != nil {
		e.t.Fatalf("create filler apps: %v", err)
	}
	if _, err := tx.ExecContext(ctx, fmt.Sprintf(`UPDATE tags SET app_guid = 'filler-' || tag WHERE tag >= %s`, ph[0]), first); err != nil {
		e.t.Fatalf("take tags %d-65535: %v", first, err)
	}
	if err := tx.Commit(); err != nil {
		e.t.Fatal(err)
	}
}

// TestTLSVersions runs the controller and checks that it handshakes with
// TLS 1.2 and 1.3 clients only: TLS 1.0 and 1.1 clients are refused.
func TestTLSVersions(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{StateDir: dir, Listen: "127.0.0.1:0",
			Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Ready: func(url string) { ready <- url }})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	var apiURL string
	select {
	case apiURL = <-ready:
	case err := <-done:
		t.Fatalf("Run = %v before serving", err)
	}
	cfg, err := api.LoadClientConfig(filepath.Join(dir, AdminConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(cfg.CACert)) {
		t.Fatal("admin.json: no CA certificate")
	}
	addr := strings.TrimPrefix(apiURL, "https://")
	for _, tt := range []struct {
		version uint16
		ok      bool
	}{
		{tls.VersionTLS10, false},
		{tls.VersionTLS11, false},
		{tls.VersionTLS12, true},
		{tls.VersionTLS13, true},
	} {
		name := tls.VersionName(tt.version)
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr,
			&tls.Config{RootCAs: roots, MinVersion: tt.version, MaxVersion: tt.version})
		if err == nil {
			got := conn.ConnectionState().Version
			conn.Close()
			if !tt.ok || got != tt.version {
				t.Errorf("%s client: handshake succeeded with %s, want refused", name, tls.VersionName(got))
			}
			continue
		}
		if tt.ok {
			t.Errorf("%s client: %v, want a handshake", name, err)
		} else if !strings.Contains(err.Error(), "protocol version") {
			t.Errorf("%s client: %v, want a protocol version alert", name, err)
		}
	}
}
