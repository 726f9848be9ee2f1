package cli

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
)

// fakeController is an in-memory stand-in for the controller's HTTP API,
// just enough of docs/api.md for the CLI's tests: names are unique per
// parent, GUIDs are "KIND-N", and one token, fakeToken, is the admin's.
// End-to-end tests against the real controller live with the controller.
type fakeController struct {
	srv *httptest.Server

	mu       sync.Mutex
	n        int
	orgs     []api.Organization
	spaces   []api.Space
	apps     []api.App
	domains  []api.Domain
	routes   []api.Route
	policies []api.Policy
	tokens   []api.TokenRequest
	issued   []api.Token     // the tokens made, as GET /trellis/v1/tokens lists them
	admin    string          // the admin's token: fakeToken until rotated
	tls      map[string]bool // app GUID → require_client_cert
	ca       api.InstanceCA
}

const fakeToken = "trls_admin"

func newFakeController(t *testing.T) *fakeController {
	t.Helper()
	f := &fakeController{admin: fakeToken}
	org := f.addOrg("default")
	f.addSpace(org, "default")
	f.domains = append(f.domains, api.Domain{GUID: f.guid("domain"), Name: "apps.internal", Internal: true})

	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, api.Health{Status: "ok", Revision: 1})
	})
	mux.HandleFunc("GET /v3/organizations", f.listOrgs)
	mux.HandleFunc("POST /v3/organizations", f.createOrg)
	mux.HandleFunc("GET /v3/spaces", f.listSpaces)
	mux.HandleFunc("POST /v3/spaces", f.createSpace)
	mux.HandleFunc("GET /v3/apps", f.listApps)
	mux.HandleFunc("POST /v3/apps", f.createApp)
	mux.HandleFunc("DELETE /v3/apps/{guid}", f.deleteApp)
	mux.HandleFunc("GET /v3/domains", f.listDomains)
	mux.HandleFunc("POST /v3/domains", f.createDomain)
	mux.HandleFunc("GET /v3/routes", f.listRoutes)
	mux.HandleFunc("POST /v3/routes", f.createRoute)
	mux.HandleFunc("POST /v3/routes/{guid}/destinations", f.addDestinations)
	mux.HandleFunc("DELETE /v3/routes/{guid}/destinations/{app}", f.removeDestination)
	mux.HandleFunc("GET /networking/v1/external/policies", f.listPolicies)
	mux.HandleFunc("POST /networking/v1/external/policies", f.createPolicies)
	mux.HandleFunc("POST /networking/v1/external/policies/delete", f.deletePolicies)
	mux.HandleFunc("POST /trellis/v1/tokens", f.createToken)
	mux.HandleFunc("GET /trellis/v1/tokens", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, api.List[api.Token]{Resources: f.issued})
	})
	mux.HandleFunc("DELETE /trellis/v1/tokens/{guid}", f.revokeToken)
	mux.HandleFunc("POST /trellis/v1/admin-token/rotation", func(w http.ResponseWriter, r *http.Request) {
		f.admin = fmt.Sprintf("trls_admin%d", f.n)
		writeJSON(w, 201, api.Token{GUID: f.guid("token"), Name: "admin", Scope: "network.admin", Bootstrap: true, Value: f.admin})
	})
	f.tls = map[string]bool{}
	f.ca = api.InstanceCA{Generation: 1, Bundle: fakeBundle("trellis instance root CA 1"), TrustDomain: "trellis.internal",
		ValiditySeconds: 86400, IntermediateName: "trellis instance CA 1"}
	mux.HandleFunc("GET /trellis/v1/instance-ca", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, f.ca) })
	mux.HandleFunc("POST /trellis/v1/instance-ca/rotation", f.rotate)
	mux.HandleFunc("GET /trellis/v1/apps/{guid}/tls", f.appTLS)
	mux.HandleFunc("PUT /trellis/v1/apps/{guid}/tls", f.appTLS)
	mux.HandleFunc("GET /trellis/v1/instances", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"pagination":{"total_results":0,"total_pages":1},"resources":[]}`))
	})
	f.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if r.URL.Path != "/health" && r.Header.Get("Authorization") != "Bearer "+f.admin {
			writeJSON(w, 401, api.Error{Error: "failed to verify token with uaa"})
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

// adminJSON writes the controller's admin.json into dir and returns its path.
func (f *fakeController) adminJSON(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "admin.json")
	cfg := api.ClientConfig{
		APIURL: f.srv.URL,
		CACert: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw})),
		Token:  fakeToken,
	}
	if err := cfg.Save(path); err != nil {
		t.Fatal(err)
	}
	return path
}

func (f *fakeController) guid(kind string) string {
	f.n++
	return fmt.Sprintf("%s-%d", kind, f.n)
}

func (f *fakeController) addOrg(name string) api.Organization {
	o := api.Organization{GUID: f.guid("org"), Name: name}
	f.orgs = append(f.orgs, o)
	return o
}

func (f *fakeController) addSpace(org api.Organization, name string) api.Space {
	s := api.Space{GUID: f.guid("space"), Name: name}
	s.Relationships.Organization.Data.GUID = org.GUID
	f.spaces = append(f.spaces, s)
	return s
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func v3Error(w http.ResponseWriter, status int, title, detail string) {
	writeJSON(w, status, api.V3Errors{Errors: []api.V3Error{{Detail: detail, Title: title, Code: 10000}}})
}

// matches applies one comma-separated query filter.
func matches(r *http.Request, key, value string) bool {
	q := r.URL.Query().Get(key)
	return q == "" || slices.Contains(strings.Split(q, ","), value)
}

func list[T any](w http.ResponseWriter, all []T, keep func(T) bool) {
	l := api.List[T]{Resources: []T{}}
	for _, x := range all {
		if keep(x) {
			l.Resources = append(l.Resources, x)
		}
	}
	l.Pagination.TotalResults, l.Pagination.TotalPages = len(l.Resources), 1
	writeJSON(w, 200, l)
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if r.Header.Get("Content-Type") != "application/json" {
		writeJSON(w, 415, api.Error{Error: "unsupported content type"})
		return false
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		v3Error(w, 400, "CF-MessageParseError", err.Error())
		return false
	}
	return true
}

func (f *fakeController) listOrgs(w http.ResponseWriter, r *http.Request) {
	list(w, f.orgs, func(o api.Organization) bool {
		return matches(r, "names", o.Name) && matches(r, "guids", o.GUID)
	})
}

func (f *fakeController) createOrg(w http.ResponseWriter, r *http.Request) {
	var in struct{ Name string }
	if !decode(w, r, &in) {
		return
	}
	if slices.ContainsFunc(f.orgs, func(o api.Organization) bool { return o.Name == in.Name }) {
		v3Error(w, 422, "CF-UnprocessableEntity", "Organization '"+in.Name+"' already exists.")
		return
	}
	writeJSON(w, 201, f.addOrg(in.Name))
}

func (f *fakeController) listSpaces(w http.ResponseWriter, r *http.Request) {
	list(w, f.spaces, func(s api.Space) bool {
		return matches(r, "names", s.Name) && matches(r, "guids", s.GUID) &&
			matches(r, "organization_guids", s.Relationships.Organization.Data.GUID)
	})
}

func (f *fakeController) createSpace(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Name          string
		Relationships api.SpaceRelationships
	}
	if !decode(w, r, &in) {
		return
	}
	i := slices.IndexFunc(f.orgs, func(o api.Organization) bool { return o.GUID == in.Relationships.Organization.Data.GUID })
	if i < 0 {
		v3Error(w, 422, "CF-UnprocessableEntity", "Invalid organization.")
		return
	}
	writeJSON(w, 201, f.addSpace(f.orgs[i], in.Name))
}

func (f *fakeController) listApps(w http.ResponseWriter, r *http.Request) {
	list(w, f.apps, func(a api.App) bool {
		return matches(r, "names", a.Name) && matches(r, "guids", a.GUID) &&
			matches(r, "space_guids", a.Relationships.Space.Data.GUID)
	})
}

func (f *fakeController) createApp(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Name          string
		Relationships api.AppRelationships
	}
	if !decode(w, r, &in) {
		return
	}
	a := api.App{GUID: f.guid("app"), Name: in.Name, State: "STOPPED", Relationships: in.Relationships}
	f.apps = append(f.apps, a)
	writeJSON(w, 201, a)
}

func (f *fakeController) deleteApp(w http.ResponseWriter, r *http.Request) {
	g := r.PathValue("guid")
	n := len(f.apps)
	f.apps = slices.DeleteFunc(f.apps, func(a api.App) bool { return a.GUID == g })
	if len(f.apps) == n {
		v3Error(w, 404, "CF-ResourceNotFound", "App not found")
		return
	}
	f.policies = slices.DeleteFunc(f.policies, func(p api.Policy) bool {
		return p.Source.ID == g || p.Destination.ID == g
	})
	for i := range f.routes {
		f.routes[i].Destinations = slices.DeleteFunc(f.routes[i].Destinations,
			func(d api.RouteDestination) bool { return d.App.GUID == g })
	}
	w.WriteHeader(204)
}

func (f *fakeController) listDomains(w http.ResponseWriter, r *http.Request) {
	list(w, f.domains, func(d api.Domain) bool {
		return matches(r, "names", d.Name) && matches(r, "guids", d.GUID)
	})
}

func (f *fakeController) createDomain(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Name     string
		Internal bool
	}
	if !decode(w, r, &in) {
		return
	}
	d := api.Domain{GUID: f.guid("domain"), Name: in.Name, Internal: in.Internal}
	f.domains = append(f.domains, d)
	writeJSON(w, 201, d)
}

func (f *fakeController) listRoutes(w http.ResponseWriter, r *http.Request) {
	list(w, f.routes, func(rt api.Route) bool {
		hasApp := r.URL.Query().Get("app_guids") == "" || slices.ContainsFunc(rt.Destinations,
			func(d api.RouteDestination) bool { return matches(r, "app_guids", d.App.GUID) })
		return hasApp && matches(r, "hosts", rt.Host) && matches(r, "guids", rt.GUID) &&
			matches(r, "domain_guids", rt.Relationships.Domain.Data.GUID) && matches(r, "space_guids", rt.Relationships.Space.Data.GUID)
	})
}

func (f *fakeController) createRoute(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Host          string
		Relationships api.RouteRelationships
	}
	if !decode(w, r, &in) {
		return
	}
	if !slices.ContainsFunc(f.spaces, func(sp api.Space) bool { return sp.GUID == in.Relationships.Space.Data.GUID }) {
		v3Error(w, 422, "CF-UnprocessableEntity", "Invalid space. Ensure that the space exists and you have access to it.")
		return
	}
	i := slices.IndexFunc(f.domains, func(d api.Domain) bool { return d.GUID == in.Relationships.Domain.Data.GUID })
	if i < 0 {
		v3Error(w, 422, "CF-UnprocessableEntity", "Invalid domain.")
		return
	}
	rt := api.Route{GUID: f.guid("route"), Host: in.Host, URL: in.Host + "." + f.domains[i].Name,
		Destinations: []api.RouteDestination{}, Relationships: in.Relationships}
	f.routes = append(f.routes, rt)
	writeJSON(w, 201, rt)
}

func (f *fakeController) route(w http.ResponseWriter, r *http.Request) *api.Route {
	i := slices.IndexFunc(f.routes, func(rt api.Route) bool { return rt.GUID == r.PathValue("guid") })
	if i < 0 {
		v3Error(w, 404, "CF-ResourceNotFound", "Route not found")
		return nil
	}
	return &f.routes[i]
}

func (f *fakeController) addDestinations(w http.ResponseWriter, r *http.Request) {
	var in api.RouteDestinations
	if !decode(w, r, &in) {
		return
	}
	rt := f.route(w, r)
	if rt == nil {
		return
	}
	for _, d := range in.Destinations {
		i := slices.IndexFunc(f.apps, func(a api.App) bool { return a.GUID == d.App.GUID })
		if i < 0 || f.apps[i].Relationships.Space != rt.Relationships.Space {
			v3Error(w, 422, "CF-UnprocessableEntity", "Routes destinations must be in the route's space.")
			return
		}
	}
	for _, d := range in.Destinations {
		if !slices.ContainsFunc(rt.Destinations, func(x api.RouteDestination) bool { return x.App.GUID == d.App.GUID }) {
			rt.Destinations = append(rt.Destinations, api.RouteDestination{GUID: f.guid("dest"), App: d.App})
		}
	}
	writeJSON(w, 200, api.RouteDestinations{Destinations: rt.Destinations})
}

func (f *fakeController) removeDestination(w http.ResponseWriter, r *http.Request) {
	rt := f.route(w, r)
	if rt == nil {
		return
	}
	rt.Destinations = slices.DeleteFunc(rt.Destinations,
		func(d api.RouteDestination) bool { return d.App.GUID == r.PathValue("app") })
	w.WriteHeader(204)
}

func (f *fakeController) listPolicies(w http.ResponseWriter, r *http.Request) {
	out := api.PoliciesResponse{Policies: []api.Policy{}}
	for _, p := range f.policies {
		if (matches(r, "id", p.Source.ID) || matches(r, "id", p.Destination.ID)) &&
			matches(r, "source_id", p.Source.ID) && matches(r, "dest_id", p.Destination.ID) {
			out.Policies = append(out.Policies, p)
		}
	}
	out.TotalPolicies = len(out.Policies)
	writeJSON(w, 200, out)
}

func (f *fakeController) createPolicies(w http.ResponseWriter, r *http.Request) {
	var in api.PoliciesRequest
	if !decode(w, r, &in) {
		return
	}
	for _, p := range in.Policies {
		if !slices.Contains(f.policies, p) {
			f.policies = append(f.policies, p)
		}
	}
	writeJSON(w, 200, struct{}{})
}

func (f *fakeController) deletePolicies(w http.ResponseWriter, r *http.Request) {
	var in api.PoliciesRequest
	if !decode(w, r, &in) {
		return
	}
	f.policies = slices.DeleteFunc(f.policies, func(p api.Policy) bool { return slices.Contains(in.Policies, p) })
	writeJSON(w, 200, struct{}{})
}

func (f *fakeController) createToken(w http.ResponseWriter, r *http.Request) {
	var in api.TokenRequest
	if !decode(w, r, &in) {
		return
	}
	f.tokens = append(f.tokens, in)
	t := api.Token{GUID: f.guid("token"), Name: in.Name, Scope: in.Scope, Spaces: in.Spaces,
		Value: fmt.Sprintf("trls_secret%d", f.n)}
	if in.TTLSeconds > 0 {
		exp := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(in.TTLSeconds) * time.Second)
		t.ExpiresAt = &exp
	}
	listed := t
	listed.Value = ""
	f.issued = append(f.issued, listed)
	writeJSON(w, 201, t)
}

func (f *fakeController) revokeToken(w http.ResponseWriter, r *http.Request) {
	n := len(f.issued)
	f.issued = slices.DeleteFunc(f.issued, func(t api.Token) bool { return t.GUID == r.PathValue("guid") })
	if len(f.issued) == n {
		writeJSON(w, 404, api.Error{Error: "token not found"})
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// fakeBundle is a PEM self-signed CA certificate named cn, valid until 2035.
func fakeBundle(cn string) string {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), NotAfter: time.Date(2035, 1, 1, 0, 0, 0, 0, time.UTC), KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// rotate begins or finishes a rotation as the controller does (no clock:
// finishing early needs force).
func (f *fakeController) rotate(w http.ResponseWriter, r *http.Request) {
	var in api.InstanceCARotation
	if !decode(w, r, &in) {
		return
	}
	switch {
	case in.Action == "begin" && f.ca.Rotating:
		writeJSON(w, 409, api.Error{Error: "a rotation of the instance CA is already under way"})
		return
	case in.Action == "begin":
		started := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
		f.ca.Rotating, f.ca.RotationStarted = true, &started
		f.ca.IntermediateName = "trellis instance CA 2"
		f.ca.Bundle += fakeBundle("trellis instance root CA 2")
	case in.Action == "finish" && !f.ca.Rotating:
		writeJSON(w, 409, api.Error{Error: "no rotation of the instance CA is under way: begin one with `trellis rotate-instance-ca`"})
		return
	case in.Action == "finish" && !in.Force:
		writeJSON(w, 409, api.Error{Error: "the rotation began at 2030-01-02T03:04:05Z: it is safe to finish from 2030-01-03T03:04:05Z"})
		return
	case in.Action == "finish":
		f.ca.Rotating, f.ca.RotationStarted = false, nil
		_, rest, _ := strings.Cut(f.ca.Bundle, "-----END CERTIFICATE-----\n")
		f.ca.Bundle = rest
	default:
		writeJSON(w, 400, api.Error{Error: "invalid action"})
		return
	}
	f.ca.Generation++
	writeJSON(w, 200, f.ca)
}

func (f *fakeController) appTLS(w http.ResponseWriter, r *http.Request) {
	g := r.PathValue("guid")
	if !slices.ContainsFunc(f.apps, func(a api.App) bool { return a.GUID == g }) {
		writeJSON(w, 404, api.Error{Error: "app " + g + " not found"})
		return
	}
	if r.Method == "PUT" {
		var in api.AppTLS
		if !decode(w, r, &in) {
			return
		}
		f.tls[g] = in.RequireClientCert
	}
	writeJSON(w, 200, api.AppTLS{RequireClientCert: f.tls[g]})
}
