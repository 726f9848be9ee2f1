package controller

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/identity"
	"github.com/trellis-c2c/trellis/internal/ipam"
	"github.com/trellis-c2c/trellis/internal/store"
	"github.com/trellis-c2c/trellis/internal/store/storetest"
)

// env is one controller under test: a real HTTPS server on a real store.
type env struct {
	t     *testing.T
	srv   *httptest.Server
	store *store.Store
	ca    *identity.CA
	admin string
}

func newEnv(t *testing.T, engine string) *env {
	t.Helper()
	return newEnvWith(t, engine, InstanceIdentity{})
}

// newEnvWith is newEnv with instance identity settings; like Run, it
// creates the instance CA before serving.
func newEnvWith(t *testing.T, engine string, id InstanceIdentity) *env {
	t.Helper()
	st := storetest.Open(t, engine)
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
	e := &env{t: t, srv: srv, store: st, ca: ca}
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
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
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
		// frontend is in no policy now: its tag 0001 is free and reused.
		other := e.createApp(space, "worker")
		e.must(e.admin, "POST", policiesPath, policyBody([5]any{other, db, "tcp", 1, 65535}), 200, nil)
		e.must(e.admin, "GET", "/networking/v1/external/tags", "", 200, &tags)
		if got := tagOf(tags, other); got != "0001" {
			t.Errorf("recycled tag for worker = %q, want 0001", got)
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
	e := newEnv(t, "sqlite")
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

	// Over 10 MB: 413, nothing read further.
	big := `{"policies":[` + strings.Repeat(" ", 10<<20) + `]}`
	code, got := e.do(e.admin, "POST", policiesPath, big)
	if code != 413 || got != `{"error":"request body too large: limit is 10485760 bytes"}` {
		t.Errorf("11 MB POST = %d %s", code, got)
	}
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
			want := `{"error":"failed to verify token"}`
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
	e := newEnv(t, "sqlite")
	space := e.defaultSpace()
	a, b := e.createApp(space, "a"), e.createApp(space, "b")
	writer := e.token(ScopeWrite, []string{space})
	var ps [][5]any
	for i := 1; i <= MaxPoliciesPerSource; i++ {
		ps = append(ps, [5]any{a, b, "tcp", i, i})
	}
	e.must(writer, "POST", policiesPath, policyBody(ps...), 200, nil)
	code, got := e.do(writer, "POST", policiesPath, policyBody([5]any{a, b, "tcp", 9999, 9999}))
	if code != 403 || got != `{"error":"policy quota exceeded"}` {
		t.Errorf("151st policy = %d %s, want 403 policy quota exceeded", code, got)
	}
	// Admins are not held to the quota.
	e.must(e.admin, "POST", policiesPath, policyBody([5]any{a, b, "tcp", 9999, 9999}), 200, nil)
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
			code, got := e.do(e.admin, "POST", "/v3/routes", fmt.Sprintf(`{"host":%q,"relationships":{"domain":{"data":{"guid":%q}}}}`, host, domain))
			if code != 422 || !strings.Contains(got, "invalid hostname") {
				t.Errorf("route host %q = %d %s, want 422 invalid hostname", host, code, got)
			}
		}
		var rt api.Route
		e.must(e.admin, "POST", "/v3/routes", fmt.Sprintf(`{"host":"Backend","relationships":{"domain":{"data":{"guid":%q}}}}`, domain), 201, &rt)
		if rt.URL != "backend.apps.internal" {
			t.Errorf("route url = %q, want backend.apps.internal", rt.URL)
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
	e := newEnv(t, "sqlite")
	code, got := e.do("", "GET", "/health", "")
	if code != 200 || !strings.HasPrefix(got, `{"revision":`) {
		t.Errorf("GET /health = %d %s", code, got)
	}
	e.must("", "GET", "/metrics", "", 401, nil)
	e.createApp(e.defaultSpace(), "a")
	code, got = e.do(e.admin, "GET", "/metrics", "")
	for _, want := range []string{
		`trellis_http_requests_total{code="201",route="POST /v3/apps"} 1`,
		`trellis_store_objects{kind="apps"} 1`,
		`trellis_store_revision `,
		`trellis_http_request_duration_seconds_bucket{route="POST /v3/apps"`,
	} {
		if code != 200 || !strings.Contains(got, want) {
			t.Errorf("GET /metrics = %d, missing %q", code, want)
		}
	}
}

func TestTokens(t *testing.T) {
	e := newEnv(t, "sqlite")
	space := e.defaultSpace()
	var tok api.Token
	e.must(e.admin, "POST", "/trellis/v1/tokens", fmt.Sprintf(`{"scope":"network.write","space_guids":[%q],"name":"ci"}`, space), 201, &tok)
	if !strings.HasPrefix(tok.Value, "trls_") || tok.Scope != ScopeWrite {
		t.Fatalf("created token = %+v", tok)
	}
	e.must(tok.Value, "GET", policiesPath, "", 200, nil)
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
	// Only the hash is stored.
	if _, err := e.store.TokenByHash(context.Background(), []byte(tok.Value)); err == nil {
		t.Error("token found by its plain value; want only by hash")
	}
	if !bytes.Equal(HashToken(tok.Value), HashToken(tok.Value)) {
		t.Error("HashToken is not deterministic")
	}
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
