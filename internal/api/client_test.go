package api

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

const testToken = "trls_test"

// request is what the fake controller saw of one request.
type request struct {
	Method, Path, Query string
	Auth, ContentType   string
	Body                string
	Peer                string // the common name of the client certificate
}

// fakeController is an httptest TLS server that records every request and
// answers each "METHOD /path" with a fixed status and body.
type fakeController struct {
	srv     *httptest.Server
	mu      sync.Mutex
	seen    []request
	answers map[string]answer
}

type answer struct {
	status int
	body   string
}

func newFakeController(t *testing.T, answers map[string]answer) *fakeController {
	t.Helper()
	f := &fakeController{answers: answers}
	f.srv = httptest.NewTLSServer(f)
	t.Cleanup(f.srv.Close)
	return f
}

// ServeHTTP records r and answers it.
func (f *fakeController) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	seen := request{
		Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery,
		Auth: r.Header.Get("Authorization"), ContentType: r.Header.Get("Content-Type"),
		Body: string(b),
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		seen.Peer = r.TLS.PeerCertificates[0].Subject.CommonName
	}
	f.mu.Lock()
	f.seen = append(f.seen, seen)
	f.mu.Unlock()
	a, ok := f.answers[r.Method+" "+r.URL.Path]
	if !ok {
		a = answer{http.StatusNotFound, `{"errors":[{"detail":"Unknown request","title":"CF-NotFound","code":10000}]}`}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(a.status)
	io.WriteString(w, a.body)
}

// config is a ClientConfig that trusts the fake's certificate.
func (f *fakeController) config() ClientConfig {
	return ClientConfig{
		APIURL: f.srv.URL,
		CACert: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw})),
		Token:  testToken,
	}
}

func (f *fakeController) client(t *testing.T) *Client {
	t.Helper()
	c, err := NewClient(f.config())
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	return c
}

func (f *fakeController) requests() []request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]request(nil), f.seen...)
}

func TestClientRequests(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name   string
		answer answer
		call   func(c *Client) (any, error)
		want   any
		req    request
	}{
		{
			name:   "health",
			answer: answer{200, `{"status":"ok","revision":7}`},
			call:   func(c *Client) (any, error) { return c.Health(ctx) },
			want:   Health{Status: "ok", Revision: 7},
			req:    request{Method: "GET", Path: "/health"},
		},
		{
			name:   "orgs by name",
			answer: answer{200, `{"pagination":{"total_results":1},"resources":[{"guid":"o1","name":"default"}]}`},
			call:   func(c *Client) (any, error) { return c.Orgs(ctx, OrgFilter{Names: []string{"default", "other"}}) },
			want:   []Organization{{GUID: "o1", Name: "default"}},
			req:    request{Method: "GET", Path: "/v3/organizations", Query: "names=default%2Cother"},
		},
		{
			name:   "create org",
			answer: answer{201, `{"guid":"o2","name":"o"}`},
			call:   func(c *Client) (any, error) { return c.CreateOrg(ctx, "o") },
			want:   Organization{GUID: "o2", Name: "o"},
			req:    request{Method: "POST", Path: "/v3/organizations", ContentType: "application/json", Body: `{"name":"o"}`},
		},
		{
			name:   "spaces of an org",
			answer: answer{200, `{"resources":[]}`},
			call: func(c *Client) (any, error) {
				return c.Spaces(ctx, SpaceFilter{Names: []string{"s"}, OrgGUIDs: []string{"o1"}})
			},
			want: []Space{},
			req:  request{Method: "GET", Path: "/v3/spaces", Query: "names=s&organization_guids=o1"},
		},
		{
			name:   "create space",
			answer: answer{201, `{"guid":"s1","name":"s","relationships":{"organization":{"data":{"guid":"o1"}}}}`},
			call:   func(c *Client) (any, error) { return c.CreateSpace(ctx, "o1", "s") },
			want: Space{GUID: "s1", Name: "s",
				Relationships: SpaceRelationships{Organization: ToOne{Data: Ref{GUID: "o1"}}}},
			req: request{Method: "POST", Path: "/v3/spaces", ContentType: "application/json",
				Body: `{"name":"s","relationships":{"organization":{"data":{"guid":"o1"}}}}`},
		},
		{
			name:   "apps",
			answer: answer{200, `{"resources":[{"guid":"a1","name":"backend","state":"STOPPED"}]}`},
			call: func(c *Client) (any, error) {
				return c.Apps(ctx, AppFilter{GUIDs: []string{"a1", "a2"}, SpaceGUIDs: []string{"s1"}})
			},
			want: []App{{GUID: "a1", Name: "backend", State: "STOPPED"}},
			req:  request{Method: "GET", Path: "/v3/apps", Query: "guids=a1%2Ca2&space_guids=s1"},
		},
		{
			name:   "app",
			answer: answer{200, `{"guid":"a1","name":"backend"}`},
			call:   func(c *Client) (any, error) { return c.App(ctx, "a1") },
			want:   App{GUID: "a1", Name: "backend"},
			req:    request{Method: "GET", Path: "/v3/apps/a1"},
		},
		{
			name:   "create app",
			answer: answer{201, `{"guid":"a1","name":"backend"}`},
			call:   func(c *Client) (any, error) { return c.CreateApp(ctx, "s1", "backend") },
			want:   App{GUID: "a1", Name: "backend"},
			req: request{Method: "POST", Path: "/v3/apps", ContentType: "application/json",
				Body: `{"name":"backend","relationships":{"space":{"data":{"guid":"s1"}}}}`},
		},
		{
			name:   "delete app",
			answer: answer{204, ``},
			call:   func(c *Client) (any, error) { return nil, c.DeleteApp(ctx, "a1") },
			req:    request{Method: "DELETE", Path: "/v3/apps/a1"},
		},
		{
			name:   "domains",
			answer: answer{200, `{"resources":[{"guid":"d1","name":"apps.internal","internal":true}]}`},
			call:   func(c *Client) (any, error) { return c.Domains(ctx, DomainFilter{Names: []string{"apps.internal"}}) },
			want:   []Domain{{GUID: "d1", Name: "apps.internal", Internal: true}},
			req:    request{Method: "GET", Path: "/v3/domains", Query: "names=apps.internal"},
		},
		{
			name:   "create domain",
			answer: answer{201, `{"guid":"d2","name":"apps.example","internal":true}`},
			call:   func(c *Client) (any, error) { return c.CreateDomain(ctx, "apps.example", true) },
			want:   Domain{GUID: "d2", Name: "apps.example", Internal: true},
			req: request{Method: "POST", Path: "/v3/domains", ContentType: "application/json",
				Body: `{"name":"apps.example","internal":true}`},
		},
		{
			name:   "routes",
			answer: answer{200, `{"resources":[{"guid":"r1","host":"backend","url":"backend.apps.internal","destinations":[{"guid":"x","app":{"guid":"a1"}}]}]}`},
			call: func(c *Client) (any, error) {
				return c.Routes(ctx, RouteFilter{Hosts: []string{"backend"}, DomainGUIDs: []string{"d1"}, SpaceGUIDs: []string{"s1"}})
			},
			want: []Route{{GUID: "r1", Host: "backend", URL: "backend.apps.internal",
				Destinations: []RouteDestination{{GUID: "x", App: Ref{GUID: "a1"}}}}},
			req: request{Method: "GET", Path: "/v3/routes", Query: "domain_guids=d1&hosts=backend&space_guids=s1"},
		},
		{
			name:   "create route",
			answer: answer{201, `{"guid":"r1","host":"backend","relationships":{"space":{"data":{"guid":"s1"}}}}`},
			call:   func(c *Client) (any, error) { return c.CreateRoute(ctx, "s1", "d1", "backend") },
			want:   Route{GUID: "r1", Host: "backend", Relationships: RouteRelationships{Space: ToOne{Data: Ref{GUID: "s1"}}}},
			req: request{Method: "POST", Path: "/v3/routes", ContentType: "application/json",
				Body: `{"host":"backend","relationships":{"domain":{"data":{"guid":"d1"}},"space":{"data":{"guid":"s1"}}}}`},
		},
		{
			name:   "route",
			answer: answer{200, `{"guid":"r1","host":"backend"}`},
			call:   func(c *Client) (any, error) { return c.Route(ctx, "r1") },
			want:   Route{GUID: "r1", Host: "backend"},
			req:    request{Method: "GET", Path: "/v3/routes/r1"},
		},
		{
			name:   "delete route",
			answer: answer{204, ``},
			call:   func(c *Client) (any, error) { return nil, c.DeleteRoute(ctx, "r1") },
			req:    request{Method: "DELETE", Path: "/v3/routes/r1"},
		},
		{
			name:   "add route destinations",
			answer: answer{200, `{"destinations":[{"guid":"x","app":{"guid":"a1"}},{"guid":"y","app":{"guid":"a2"}}]}`},
			call:   func(c *Client) (any, error) { return c.AddRouteDestinations(ctx, "r1", "a2") },
			want:   []RouteDestination{{GUID: "x", App: Ref{GUID: "a1"}}, {GUID: "y", App: Ref{GUID: "a2"}}},
			req: request{Method: "POST", Path: "/v3/routes/r1/destinations", ContentType: "application/json",
				Body: `{"destinations":[{"app":{"guid":"a2"}}]}`},
		},
		{
			name:   "remove route destination",
			answer: answer{204, ``},
			call:   func(c *Client) (any, error) { return nil, c.RemoveRouteDestination(ctx, "r1", "a2") },
			req:    request{Method: "DELETE", Path: "/v3/routes/r1/destinations/a2"},
		},
		{
			name:   "policies",
			answer: answer{200, `{"total_policies":1,"policies":[{"source":{"id":"a1"},"destination":{"id":"a2","protocol":"tcp","ports":{"start":8080,"end":8090}}}]}`},
			call: func(c *Client) (any, error) {
				return c.Policies(ctx, PolicyFilter{SourceIDs: []string{"a1"}, DestIDs: []string{"a2", "a3"}})
			},
			want: []Policy{{Source: Source{ID: "a1"},
				Destination: Destination{ID: "a2", Protocol: "tcp", Ports: Ports{Start: 8080, End: 8090}}}},
			req: request{Method: "GET", Path: "/networking/v1/external/policies", Query: "dest_id=a2%2Ca3&source_id=a1"},
		},
		{
			name:   "create policies",
			answer: answer{200, `{}`},
			call: func(c *Client) (any, error) {
				return nil, c.CreatePolicies(ctx, []Policy{{Source: Source{ID: "a1"},
					Destination: Destination{ID: "a2", Protocol: "udp", Ports: Ports{Start: 53, End: 53}}}})
			},
			req: request{Method: "POST", Path: "/networking/v1/external/policies", ContentType: "application/json",
				Body: `{"policies":[{"source":{"id":"a1"},"destination":{"id":"a2","protocol":"udp","ports":{"start":53,"end":53}}}]}`},
		},
		{
			name:   "delete policies",
			answer: answer{200, `{}`},
			call: func(c *Client) (any, error) {
				return nil, c.DeletePolicies(ctx, []Policy{{Source: Source{ID: "a1"},
					Destination: Destination{ID: "a2", Protocol: "tcp", Ports: Ports{Start: 1, End: 65535}}}})
			},
			req: request{Method: "POST", Path: "/networking/v1/external/policies/delete", ContentType: "application/json",
				Body: `{"policies":[{"source":{"id":"a1"},"destination":{"id":"a2","protocol":"tcp","ports":{"start":1,"end":65535}}}]}`},
		},
		{
			name:   "tags",
			answer: answer{200, `{"tags":[{"id":"a1","tag":"0001","type":"app"}]}`},
			call:   func(c *Client) (any, error) { return c.Tags(ctx) },
			want:   []Tag{{ID: "a1", Tag: "0001", Type: "app"}},
			req:    request{Method: "GET", Path: "/networking/v1/external/tags"},
		},
		{
			name:   "create token",
			answer: answer{201, `{"guid":"t1","name":"ci","scope":"network.write","space_guids":["s1"],"token":"trls_x"}`},
			call: func(c *Client) (any, error) {
				return c.CreateToken(ctx, TokenRequest{Name: "ci", Scope: "network.write", Spaces: []string{"s1"}})
			},
			want: Token{GUID: "t1", Name: "ci", Scope: "network.write", Spaces: []string{"s1"}, Value: "trls_x"},
			req: request{Method: "POST", Path: "/trellis/v1/tokens", ContentType: "application/json",
				Body: `{"name":"ci","scope":"network.write","space_guids":["s1"]}`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeController(t, map[string]answer{tt.req.Method + " " + tt.req.Path: tt.answer})
			got, err := tt.call(f.client(t))
			if err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			if diff := cmp.Diff(tt.want, got); tt.want != nil && diff != "" {
				t.Errorf("%s answer (-want +got):\n%s", tt.name, diff)
			}
			tt.req.Auth = "Bearer " + testToken
			if diff := cmp.Diff([]request{tt.req}, f.requests()); diff != "" {
				t.Errorf("%s request (-want +got):\n%s", tt.name, diff)
			}
		})
	}
}

func TestClientErrors(t *testing.T) {
	tests := []struct {
		name   string
		answer answer
		want   *HTTPError
	}{
		{
			name:   "networking API error",
			answer: answer{403, `{"error":"provided scopes [network.write] do not include allowed scopes [network.admin]"}`},
			want:   &HTTPError{Status: 403, Message: "provided scopes [network.write] do not include allowed scopes [network.admin]"},
		},
		{
			name:   "v3 error",
			answer: answer{422, `{"errors":[{"detail":"App with the name 'a' already exists.","title":"CF-UnprocessableEntity","code":10008}]}`},
			want:   &HTTPError{Status: 422, Message: "App with the name 'a' already exists.", Title: "CF-UnprocessableEntity"},
		},
		{
			name:   "plain text",
			answer: answer{502, "upstream connect error\nmore detail"},
			want:   &HTTPError{Status: 502, Message: "502 Bad Gateway: upstream connect error"},
		},
		{
			name:   "empty JSON",
			answer: answer{503, `{"status":"unavailable"}`},
			want:   &HTTPError{Status: 503, Message: "503 Service Unavailable"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeController(t, map[string]answer{"GET /v3/apps/a1": tt.answer})
			_, err := f.client(t).App(context.Background(), "a1")
			var got *HTTPError
			if !errors.As(err, &got) {
				t.Fatalf("App() error = %v (%T), want *HTTPError", err, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("App() error (-want +got):\n%s", diff)
			}
			if got.Error() != tt.want.Message {
				t.Errorf("Error() = %q, want %q", got.Error(), tt.want.Message)
			}
		})
	}
}

func TestIsNotFound(t *testing.T) {
	f := newFakeController(t, nil)
	_, err := f.client(t).App(context.Background(), "nope")
	if !IsNotFound(err) {
		t.Errorf("IsNotFound(%v) = false, want true", err)
	}
	if IsNotFound(errors.New("not found")) {
		t.Errorf("IsNotFound(plain error) = true, want false")
	}
}

func TestClientRefusesEmptyGUID(t *testing.T) {
	f := newFakeController(t, nil)
	c := f.client(t)
	ctx := context.Background()
	if err := c.DeleteApp(ctx, ""); err == nil {
		t.Errorf("DeleteApp(\"\") = nil, want error")
	}
	if err := c.RemoveRouteDestination(ctx, "r1", ""); err == nil {
		t.Errorf("RemoveRouteDestination(r1, \"\") = nil, want error")
	}
	if n := len(f.requests()); n != 0 {
		t.Errorf("server saw %d requests, want 0", n)
	}
}

func TestClientTrustsOnlyItsCA(t *testing.T) {
	f := newFakeController(t, map[string]answer{"GET /health": {200, `{"status":"ok"}`}})
	cfg := f.config()
	cfg.CACert = selfSignedPEM(t)
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	_, err = c.Health(context.Background())
	if err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Errorf("Health() trusting another CA = %v, want an unknown authority error", err)
	}
	if n := len(f.requests()); n != 0 {
		t.Errorf("server saw %d requests, want 0", n)
	}
}

// selfSignedPEM is a CA certificate that signed nothing the tests serve.
func selfSignedPEM(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "other CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func TestClientRefusesOldTLS(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"status":"ok"}`)
	}))
	srv.TLS = &tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake is expected
	srv.StartTLS()
	defer srv.Close()
	c, err := NewClient(ClientConfig{
		APIURL: srv.URL,
		CACert: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})),
		Token:  testToken,
	})
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	if _, err := c.Health(context.Background()); err == nil || !strings.Contains(err.Error(), "protocol version") {
		t.Errorf("Health() against a TLS 1.1 server = %v, want a protocol version error", err)
	}
}

func TestNewClientValidates(t *testing.T) {
	f := newFakeController(t, nil)
	good := f.config()
	tests := []struct {
		name string
		edit func(*ClientConfig)
		want string
	}{
		{"plain http", func(c *ClientConfig) { c.APIURL = "http://127.0.0.1:9443" }, `invalid api_url "http://127.0.0.1:9443": must be https://HOST[:PORT]`},
		{"no host", func(c *ClientConfig) { c.APIURL = "https://" }, `invalid api_url "https://": must be https://HOST[:PORT]`},
		{"no token", func(c *ClientConfig) { c.Token = "" }, "invalid config: token is empty"},
		{"no CA", func(c *ClientConfig) { c.CACert = "" }, "invalid ca_cert: no PEM certificate found"},
		{"garbage CA", func(c *ClientConfig) { c.CACert = "-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n" }, "invalid ca_cert: no PEM certificate found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.edit(&cfg)
			_, err := NewClient(cfg)
			if err == nil || err.Error() != tt.want {
				t.Errorf("NewClient(%s) = %v, want %q", tt.name, err, tt.want)
			}
		})
	}
}

func TestClientKeepsAPIURLPath(t *testing.T) {
	f := newFakeController(t, map[string]answer{"GET /prefix/health": {200, `{"status":"ok"}`}})
	cfg := f.config()
	cfg.APIURL += "/prefix/"
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	if _, err := c.Health(context.Background()); err != nil {
		t.Errorf("Health() = %v, want nil", err)
	}
}

func TestClientRaw(t *testing.T) {
	f := newFakeController(t, map[string]answer{
		"POST /v3/apps": {422, `{"errors":[{"detail":"bad","title":"CF-UnprocessableEntity","code":10008}]}`},
	})
	status, out, err := f.client(t).Raw(context.Background(), "POST", "/v3/apps?x=a%2Cb", strings.NewReader(`{"name":""}`))
	if err != nil {
		t.Fatalf("Raw: %v", err)
	}
	if want := `{"errors":[{"detail":"bad","title":"CF-UnprocessableEntity","code":10008}]}`; status != 422 || string(out) != want {
		t.Errorf("Raw(POST /v3/apps) = %d, %s, want 422, %s", status, out, want)
	}
	want := []request{{Method: "POST", Path: "/v3/apps", Query: "x=a%2Cb", Auth: "Bearer " + testToken,
		ContentType: "application/json", Body: `{"name":""}`}}
	if diff := cmp.Diff(want, f.requests()); diff != "" {
		t.Errorf("Raw request (-want +got):\n%s", diff)
	}
}
