// Package controller is the trellis control plane's HTTP API: the Cloud
// Foundry-compatible networking (policy) API, the v3-shaped apps, spaces,
// domains and routes API, token management, the cells' API (joining,
// desired state, instance identity certificates), health and Prometheus
// metrics, all behind bearer-token authentication and space-scoped
// authorization.
package controller

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/trellis-c2c/trellis/internal/identity"
	"github.com/trellis-c2c/trellis/internal/ipam"
	"github.com/trellis-c2c/trellis/internal/store"
)

// Server serves the controller API from a store. What it keeps is a cache
// of the store (the cells' compiled desired states, the parsed instance
// CA): several Servers may share one PostgreSQL store.
type Server struct {
	store   *store.Store
	touches touchLimiter // the cells' last-seen writes
	ca      *identity.CA
	pool    ipam.Pool
	id      InstanceIdentity
	log     *slog.Logger
	reg     *prometheus.Registry
	metrics *httpMetrics
	certs   *certMetrics
	mux     *http.ServeMux
	// patterns are the mux's patterns in the order routes registered
	// them, so that tests can check each one's authorization.
	patterns []string
	// caCache is the instance CA last read from the store, parsed: a cache
	// checked against the store at every use, not state.
	caCache instanceCACache
	// feed compiles the cells' desired states once per change and wakes
	// only the cells a change touches.
	feed *cellFeed
	// authFailures logs refused credentials, rate-limited.
	authFailures *logLimiter
	// jwt is the key that signs and verifies users' tokens (see jwt.go).
	jwt jwtKeys
	// lockout locks user names after repeated wrong passwords.
	lockout lockout
	// accessTTL is how long users' access tokens are valid.
	accessTTL time.Duration
	// hashing bounds the password hashes computed at once.
	hashing hashSlots
	// console is what the web console shows that the store does not keep.
	console consoleFacts
}

// NewServer returns a Server for st that signs cell certificates with ca,
// leases cell subnets from pool, and signs instance certificates as id
// says (zero fields take their defaults; a bad trust domain or validity is
// replaced by the default and logged: Run checks them first) with the
// instance CA of the store, created there if missing. Metrics are
// registered in a registry of the Server's own, served at /metrics.
func NewServer(st *store.Store, ca *identity.CA, pool ipam.Pool, id InstanceIdentity, log *slog.Logger) *Server {
	checked, err := id.withDefaults()
	if err != nil {
		log.Error("instance identity settings: using the defaults", "err", err)
		checked, _ = InstanceIdentity{}.withDefaults()
	}
	s := &Server{store: st, ca: ca, pool: pool, id: checked, log: log, reg: prometheus.NewRegistry(), mux: http.NewServeMux(), accessTTL: accessTokenTTL,
		hashing: make(hashSlots, maxHashing)}
	s.authFailures = newLogLimiter(log, slog.LevelWarn, "authentication failures")
	s.metrics = newHTTPMetrics(s.reg)
	s.certs = newCertMetrics(s.reg)
	s.feed = newCellFeed(st, s.compileInput, log, s.reg)
	s.reg.MustRegister(&storeCollector{store: st, log: log})
	s.reg.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	s.routes()
	// The key that signs users' tokens, made now if the store has none
	// (else at first use), so that serving a request never writes it.
	if _, err := s.signer(context.Background()); err != nil {
		log.Warn("token signing key: will retry at first use", "err", err)
	}
	return s
}

func (s *Server) routes() {
	m := s.handle
	m("GET /health", s.health)
	// Store-wide counts are the whole foundation's: admins only.
	m("GET /metrics", s.requireAuth(writeNetError, adminScope,
		promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}).ServeHTTP))

	// Cloud Foundry networking API.
	m("GET /networking/{version}/external/policies", s.requireAuth(writeNetError, anyScope, s.listPolicies))
	m("POST /networking/{version}/external/policies", s.requireAuth(writeNetError, anyScope, s.createPolicies))
	m("POST /networking/{version}/external/policies/delete", s.requireAuth(writeNetError, anyScope, s.deletePolicies))
	m("GET /networking/{version}/external/tags", s.requireAuth(writeNetError, adminScope, s.listTags))

	// v3-shaped platform resources.
	m("GET /v3/organizations", s.requireAuth(writeV3Error, anyScope, s.listOrgs))
	m("POST /v3/organizations", s.requireAuth(writeV3Error, adminScope, s.createOrg))
	m("GET /v3/spaces", s.requireAuth(writeV3Error, anyScope, s.listSpaces))
	m("POST /v3/spaces", s.requireAuth(writeV3Error, adminScope, s.createSpace))
	m("GET /v3/apps", s.requireAuth(writeV3Error, anyScope, s.listApps))
	m("GET /v3/apps/{guid}", s.requireAuth(writeV3Error, anyScope, s.getApp))
	m("POST /v3/apps", s.requireAuth(writeV3Error, anyScope, s.createApp))
	m("DELETE /v3/apps/{guid}", s.requireAuth(writeV3Error, anyScope, s.deleteApp))
	m("GET /v3/domains", s.requireAuth(writeV3Error, anyScope, s.listDomains))
	m("POST /v3/domains", s.requireAuth(writeV3Error, adminScope, s.createDomain))
	m("GET /v3/routes", s.requireAuth(writeV3Error, anyScope, s.listRoutes))
	m("POST /v3/routes", s.requireAuth(writeV3Error, anyScope, s.createRoute))
	m("GET /v3/routes/{guid}", s.requireAuth(writeV3Error, anyScope, s.getRoute))
	m("DELETE /v3/routes/{guid}", s.requireAuth(writeV3Error, anyScope, s.deleteRoute))
	m("POST /v3/routes/{guid}/destinations", s.requireAuth(writeV3Error, anyScope, s.addRouteDestinations))
	m("DELETE /v3/routes/{guid}/destinations/{app}", s.requireAuth(writeV3Error, anyScope, s.removeRouteDestination))

	m("PATCH /v3/apps/{guid}", s.requireAuth(writeV3Error, anyScope, s.updateApp))
	m("POST /v3/apps/{guid}/actions/{action}", s.requireAuth(writeV3Error, anyScope, s.appAction))
	m("POST /v3/apps/{guid}/processes/web/actions/scale", s.requireAuth(writeV3Error, anyScope, s.scaleApp))
	// What else of Cloud Controller's v3 the cf CLI reads (v3_routes.go).
	s.ccRoutes()

	m("POST /trellis/v1/tokens", s.requireAuth(writeNetError, adminScope, s.createToken))
	m("GET /trellis/v1/tokens", s.requireAuth(writeNetError, anyScope, s.listTokens))
	m("DELETE /trellis/v1/tokens/{guid}", s.requireAuth(writeNetError, anyScope, s.revokeToken))
	m("POST /trellis/v1/admin-token/rotation", s.requireAuth(writeNetError, adminScope, s.rotateAdminToken))
	m("GET /trellis/v1/instances", s.requireAuth(writeNetError, anyScope, s.listInstances))

	// Cells: joining with a one-time token, then mutual TLS.
	m("POST /trellis/v1/join-tokens", s.requireAuth(writeNetError, adminScope, s.createJoinToken))
	m("GET /trellis/v1/cells", s.requireAuth(writeNetError, adminScope, s.listCells))
	m("DELETE /trellis/v1/cells/{guid}", s.requireAuth(writeNetError, adminScope, s.deleteCell))
	m("POST /trellis/v1/cells/join", s.joinCell)
	m("GET /trellis/v1/cell/state", s.requireCell(s.cellState))
	m("PUT /trellis/v1/cell/instances/{guid}", s.requireCell(s.registerInstance))
	m("DELETE /trellis/v1/cell/instances/{guid}", s.requireCell(s.deregisterInstance))
	m("DELETE /trellis/v1/cell", s.requireCell(s.leaveCell))
	m("POST /trellis/v1/cell/flows", s.requireCell(s.reportFlows))
	m("POST /trellis/v1/cell/instances/{guid}/certificate", s.requireCell(s.signInstanceCertificate))

	// Instance identity: the CA, its rotation, and each app's TLS on 61443.
	m("GET /trellis/v1/instance-ca", s.requireAuthOrCell(writeNetError, anyScope, s.getInstanceCA))
	m("POST /trellis/v1/instance-ca/rotation", s.requireAuth(writeNetError, adminScope, s.rotateInstanceCA))
	m("GET /trellis/v1/apps/{guid}/tls", s.requireAuth(writeNetError, anyScope, s.getAppTLS))
	m("PUT /trellis/v1/apps/{guid}/tls", s.requireAuth(writeNetError, anyScope, s.setAppTLS))

	// Policy tools: why was it denied, would it be allowed, the switch.
	m("GET /trellis/v1/flows", s.requireAuth(writeNetError, anyScope, s.listFlows))
	m("GET /trellis/v1/explain", s.requireAuth(writeNetError, anyScope, s.explain))
	m("GET /trellis/v1/enforcement", s.requireAuth(writeNetError, anyScope, s.getEnforcement))
	m("PUT /trellis/v1/enforcement", s.requireAuth(writeNetError, adminScope, s.setEnforcement))

	// Encryption between cells: the switch, the cells' WireGuard keys.
	m("GET /trellis/v1/encryption", s.requireAuth(writeNetError, anyScope, s.getEncryption))
	m("PUT /trellis/v1/encryption", s.requireAuth(writeNetError, adminScope, s.setEncryption))
	m("POST /trellis/v1/cells/rotate-keys", s.requireAuth(writeNetError, adminScope, s.rotateCellKeys))
	m("PUT /trellis/v1/cell/wireguard-key", s.requireCell(s.registerWireGuardKey))

	// The cf CLI's way in: root document, UAA-style tokens, users (uaa.go).
	s.uaaRoutes()

	s.securityGroupRoutes()

	// The web console and its live flows (console.go).
	s.consoleRoutes()
}

// handle registers h for pattern on the mux and records the pattern: every
// route is registered through it.
func (s *Server) handle(pattern string, h http.HandlerFunc) {
	s.mux.HandleFunc(pattern, h)
	s.patterns = append(s.patterns, pattern)
}

// TLSConfig is the controller's server TLS: TLS 1.2+ with forward-secret
// AEAD suites only (as the cells' port 61443), its certificate, and client
// certificates from its CA accepted (and verified) when offered, which is
// how cells authenticate.
func TLSConfig(cert tls.Certificate, ca *identity.CA) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// TLS 1.2: ECDHE and AEAD only.
		CipherSuites: identity.CipherSuites(),
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    pool,
	}
}

// ServeHTTP serves the API with Cloud Foundry's security headers, CORS
// preflights answered, a recovered panic turned into a 500, a 500 while
// the database is down turned into a 503 "database unavailable", and
// request metrics.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-XSS-Protection", "1; mode=block")
	h.Set("Strict-Transport-Security", "max-age=31536000")
	h.Set("Cache-Control", "no-store")
	if r.Method == http.MethodOptions {
		if route, ok := s.preflight(w, r); ok {
			s.metrics.observe(route, http.StatusOK, time.Since(start))
			return
		}
	}
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	uw := &unavailableWriter{ResponseWriter: rec, r: r, down: s.databaseDown}
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			s.log.Error("panic serving request", "method", r.Method, "path", r.URL.Path, "panic", v)
			if !rec.wrote {
				writeNetError(uw, http.StatusInternalServerError, "internal error")
			}
		}
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		s.metrics.observe(route, rec.status, time.Since(start))
	}()
	s.mux.ServeHTTP(uw, r)
}

// corsMethods are the methods a CORS preflight may be told a path serves.
var corsMethods = []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}

// preflight answers an OPTIONS request for a path the API serves as Cloud
// Foundry's policy server answers a CORS preflight: 200, no body, the
// methods the path serves and the request headers the API reads. It needs
// no token (a browser sends none with a preflight) and runs no handler, so
// it reads and changes nothing. It returns the route for metrics, and
// ok=false, having answered nothing, for a path the API does not serve.
func (s *Server) preflight(w http.ResponseWriter, r *http.Request) (route string, ok bool) {
	var methods []string
	for _, m := range corsMethods {
		probe := &http.Request{Method: m, URL: r.URL, Host: r.Host, Header: http.Header{}}
		_, pattern := s.mux.Handler(probe)
		// Routes are "METHOD /path"; a bare path is the mux redirecting
		// an unclean path, which is not served as such.
		_, path, served := strings.Cut(pattern, " ")
		if !served {
			continue
		}
		methods = append(methods, m)
		if route == "" {
			route = http.MethodOptions + " " + path
		}
	}
	if len(methods) == 0 {
		return "", false
	}
	h := w.Header()
	h.Set("Access-Control-Allow-Methods", strings.Join(methods, ","))
	h.Set("Access-Control-Allow-Headers", "authorization,content-type")
	w.WriteHeader(http.StatusOK)
	return route, true
}

type statusRecorder struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (r *statusRecorder) WriteHeader(code int) {
	if !r.wrote {
		r.status, r.wrote = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	r.wrote = true
	return r.ResponseWriter.Write(b)
}

// Unwrap gives http.ResponseController the writer underneath (a held long
// poll flushes its heartbeats).
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	rev, err := s.store.Revision(ctx)
	if err != nil {
		s.log.Warn("health: database unavailable", "err", err)
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": msgDatabaseUnavailable})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "revision": rev})
}

// writeJSON writes v as the JSON body with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"encode response"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(b)
}

// writeNetError writes the networking API's error shape: {"error":"..."}.
func writeNetError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

// checkContentType accepts a JSON body (or none declared, as curl -d
// without -H would not be JSON and is refused).
func checkContentType(r *http.Request) (string, bool) {
	ct := r.Header.Get("Content-Type")
	mt, _, _ := strings.Cut(ct, ";")
	mt = strings.TrimSpace(strings.ToLower(mt))
	return ct, mt == "application/json" || mt == ""
}
