package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/identity"
	"github.com/trellis-c2c/trellis/internal/policy"
	"github.com/trellis-c2c/trellis/internal/store"
)

// Instance identity: the instance CA (kept in the store, so every
// controller sharing it signs with the same CA and sees the same
// rotation), the certificates it signs for cells' instances, and the
// per-app settings of automatic TLS on port 61443.

// Defaults and bounds of instance identity certificates.
const (
	DefaultInstanceCertValidity = 24 * time.Hour
	MinInstanceCertValidity     = time.Minute
	// TLSPort is the port on which a cell terminates TLS for its instances.
	TLSPort = policy.TLSPort
)

// InstanceIdentity configures the instance certificates a Server signs.
type InstanceIdentity struct {
	// Validity of a certificate; DefaultInstanceCertValidity if zero.
	Validity time.Duration
	// TrustDomain of the certificates' SPIFFE URIs;
	// identity.DefaultTrustDomain if empty.
	TrustDomain string
}

// withDefaults fills the zero fields and checks the others.
func (id InstanceIdentity) withDefaults() (InstanceIdentity, error) {
	if id.Validity == 0 {
		id.Validity = DefaultInstanceCertValidity
	}
	if id.Validity < MinInstanceCertValidity {
		return id, fmt.Errorf("invalid instance certificate validity %v: at least %v", id.Validity, MinInstanceCertValidity)
	}
	if id.TrustDomain == "" {
		id.TrustDomain = identity.DefaultTrustDomain
	}
	if err := identity.ValidateTrustDomain(id.TrustDomain); err != nil {
		return id, err
	}
	return id, nil
}

// ensureInstanceCA returns the stored instance CA, creating it if the store
// has none. Controllers starting at once on one database each make a CA;
// the first to commit wins and the others adopt it.
func ensureInstanceCA(ctx context.Context, st *store.Store, log *slog.Logger) (store.InstanceCA, error) {
	stored, ok, err := st.InstanceCA(ctx)
	if err != nil || ok {
		return stored, err
	}
	ca, err := identity.NewInstanceCA(time.Now())
	if err != nil {
		return stored, fmt.Errorf("create instance CA: %w", err)
	}
	b, err := ca.Marshal()
	if err != nil {
		return stored, fmt.Errorf("create instance CA: %w", err)
	}
	stored, err = st.CreateInstanceCA(ctx, string(b))
	if err != nil {
		return stored, err
	}
	if stored.State == string(b) {
		log.Info("created the instance CA", "intermediate", ca.Intermediate().Subject.CommonName)
	}
	return stored, nil
}

// instanceCACache keeps the parsed instance CA of the last stored state
// read, so that reading it costs one row and no parsing while it is
// unchanged.
type instanceCACache struct {
	mu    sync.Mutex
	state string
	ca    *identity.InstanceCA
}

// instanceCA returns the current instance CA and its generation, as
// stored: a rotation through any controller shows at once.
func (s *Server) instanceCA(ctx context.Context) (*identity.InstanceCA, int64, error) {
	stored, err := ensureInstanceCA(ctx, s.store, s.log)
	if err != nil {
		return nil, 0, err
	}
	ca, err := s.parseInstanceCA(stored)
	return ca, stored.Generation, err
}

// parseInstanceCA parses a stored instance CA, or returns the one parsed
// last if it is unchanged.
func (s *Server) parseInstanceCA(stored store.InstanceCA) (*identity.InstanceCA, error) {
	c := &s.caCache
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ca == nil || c.state != stored.State {
		ca, err := identity.ParseInstanceCA([]byte(stored.State))
		if err != nil {
			return nil, err
		}
		c.state, c.ca = stored.State, ca
	}
	return c.ca, nil
}

// instanceCAJSON is the API's view of ca at generation gen.
func (s *Server) instanceCAJSON(ca *identity.InstanceCA, gen int64) api.InstanceCA {
	out := api.InstanceCA{
		Generation: gen, Bundle: string(ca.Bundle()), Rotating: ca.Rotating(),
		TrustDomain: s.id.TrustDomain, ValiditySeconds: int64(s.id.Validity / time.Second),
		IntermediateName: ca.Intermediate().Subject.CommonName,
	}
	if ca.Rotating() {
		t := ca.RotationStarted()
		out.RotationStarted = &t
	}
	return out
}

// certMetrics count the instance certificates signed and refused.
type certMetrics struct {
	signed  prometheus.Counter
	refused *prometheus.CounterVec
}

// Reasons a certificate request is refused: the values of the reason label.
const (
	refusedUnknownInstance = "unknown_instance" // not registered anywhere
	refusedForeign         = "foreign_instance" // registered on another cell
	refusedNotAttached     = "not_attached"     // scheduled here, no overlay address yet
	refusedBadRequest      = "bad_request"      // the body is not a request
	refusedMalformedCSR    = "malformed_csr"    // not a CSR, or its signature fails
	refusedWeakKey         = "weak_key"
	refusedUnsupportedKey  = "unsupported_key"
	refusedInvalidIdentity = "invalid_identity" // the instance's names cannot go in a certificate
)

func newCertMetrics(reg prometheus.Registerer) *certMetrics {
	m := &certMetrics{
		signed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "trellis_instance_certificates_signed_total",
			Help: "Instance identity certificates signed for cells.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_instance_certificates_refused_total",
			Help: "Instance certificate requests refused, by reason.",
		}, []string{"reason"}),
	}
	for _, r := range []string{refusedUnknownInstance, refusedForeign, refusedNotAttached, refusedBadRequest,
		refusedMalformedCSR, refusedWeakKey, refusedUnsupportedKey, refusedInvalidIdentity} {
		m.refused.WithLabelValues(r)
	}
	reg.MustRegister(m.signed, m.refused)
	return m
}

// certRefusal is why a certificate request is refused: the status of the
// answer, the reason the metric counts and the message.
type certRefusal struct {
	status      int
	reason, msg string
}

// noteRefusal logs a refused certificate request with the cell's name and
// counts it.
func (s *Server) noteRefusal(c store.Cell, instance string, rf certRefusal) {
	s.log.Warn("refused an instance certificate", "cell", c.Name, "instance", instance, "reason", rf.reason, "err", rf.msg)
	s.certs.refused.WithLabelValues(rf.reason).Inc()
}

// refuseCertificate answers a refused certificate request, logs it with
// the cell's name and counts it.
func (s *Server) refuseCertificate(w http.ResponseWriter, c store.Cell, instance string, rf certRefusal) {
	s.noteRefusal(c, instance, rf)
	writeNetError(w, rf.status, rf.msg)
}

// signInstanceCertificate answers POST /trellis/v1/cell/instances/{guid}/certificate:
// a CSR from a cell for one of its attached instances.
func (s *Server) signInstanceCertificate(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	c := cellFrom(ctx)
	guid := r.PathValue("guid")
	var req api.InstanceCertificateRequest
	if !readV3(w, r, &req) {
		s.noteRefusal(c, guid, certRefusal{reason: refusedBadRequest, msg: "unreadable request"})
		return
	}
	out, rf, err := s.certifyInstance(ctx, c, guid, req.CSR)
	switch {
	case err != nil:
		s.internalError(w, "sign instance certificate", err)
	case rf != nil:
		s.refuseCertificate(w, c, guid, *rf)
	default:
		writeJSON(w, http.StatusCreated, out)
	}
}

// certifyInstance signs csrPEM for instance guid, registered on cell c, as
// the instance is registered now: its app, space, org, overlay address and
// internal routes go in the certificate. A request the controller refuses
// is answered with a refusal, which the caller logs and counts
// (noteRefusal); err is a failure of the controller itself. Both
// POST .../certificate and a registration that carries a CSR call it.
func (s *Server) certifyInstance(ctx context.Context, c store.Cell, guid, csrPEM string) (api.InstanceCertificate, *certRefusal, error) {
	var none api.InstanceCertificate
	ins, err := s.store.Instances(ctx, store.InstanceFilter{GUIDs: []string{guid}})
	if err != nil {
		return none, nil, err
	}
	if len(ins) == 0 {
		return none, &certRefusal{http.StatusNotFound, refusedUnknownInstance,
			fmt.Sprintf("instance %s is not registered: a cell gets certificates only for instances registered on it (PUT /trellis/v1/cell/instances/%s)", guid, guid)}, nil
	}
	in := ins[0]
	switch {
	case validateInstanceGUID(in.GUID) != nil:
		// Registered before GUIDs were checked: it must not become a
		// DNS name of a certificate (it could be another app's route).
		return none, &certRefusal{http.StatusUnprocessableEntity, refusedInvalidIdentity,
			fmt.Sprintf("cannot certify instance %s: %v", guid, validateInstanceGUID(in.GUID))}, nil
	case in.CellGUID != c.GUID:
		return none, &certRefusal{http.StatusForbidden, refusedForeign,
			fmt.Sprintf("instance %s is not on cell %s: a cell gets certificates only for its own instances", guid, c.Name)}, nil
	case in.State != store.InstanceRunning || !in.IP.IsValid():
		return none, &certRefusal{http.StatusConflict, refusedNotAttached,
			fmt.Sprintf("instance %s has no overlay address on cell %s yet: register its attachment first (PUT /trellis/v1/cell/instances/%s)", guid, c.Name, guid)}, nil
	}
	apps, err := s.store.Apps(ctx, store.AppFilter{GUIDs: []string{in.AppGUID}})
	if err != nil {
		return none, nil, err
	}
	if len(apps) == 0 { // deleted meanwhile, with its instances
		return none, &certRefusal{http.StatusNotFound, refusedUnknownInstance, fmt.Sprintf("instance %s is not registered: its app was deleted", guid)}, nil
	}
	app := apps[0]
	spaces, err := s.store.Spaces(ctx, store.SpaceFilter{GUIDs: []string{app.SpaceGUID}})
	if err != nil || len(spaces) == 0 {
		return none, nil, errors.Join(err, fmt.Errorf("space %s of app %s: %w", app.SpaceGUID, app.GUID, store.ErrNotFound))
	}
	hosts, err := s.internalHosts(ctx, app.GUID)
	if err != nil {
		return none, nil, err
	}
	ca, gen, err := s.instanceCA(ctx)
	if err != nil {
		return none, nil, err
	}
	chain, leaf, err := ca.SignInstance([]byte(csrPEM), identity.Instance{
		GUID: in.GUID, AppGUID: app.GUID, SpaceGUID: app.SpaceGUID, OrgGUID: spaces[0].OrgGUID, IP: in.IP, Hosts: hosts,
	}, s.id.TrustDomain, s.id.Validity, time.Now())
	switch {
	case errors.Is(err, identity.ErrMalformedCSR):
		return none, &certRefusal{http.StatusBadRequest, refusedMalformedCSR, err.Error()}, nil
	case errors.Is(err, identity.ErrWeakKey):
		return none, &certRefusal{http.StatusBadRequest, refusedWeakKey, err.Error()}, nil
	case errors.Is(err, identity.ErrUnsupportedKey):
		return none, &certRefusal{http.StatusBadRequest, refusedUnsupportedKey, err.Error()}, nil
	case err != nil:
		return none, &certRefusal{http.StatusUnprocessableEntity, refusedInvalidIdentity, fmt.Sprintf("cannot certify instance %s: %v", guid, err)}, nil
	}
	s.certs.signed.Inc()
	s.console.certified(guid, leaf.NotAfter)
	s.log.Info("signed an instance certificate", "cell", c.Name, "instance", guid, "app", app.Name, "serial", leaf.SerialNumber.Text(16),
		"not_after", leaf.NotAfter, "ca_generation", gen)
	return api.InstanceCertificate{Certificate: string(chain), NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, CA: s.instanceCAJSON(ca, gen)}, nil, nil
}

// internalError answers 500 in the networking API's shape and logs err.
func (s *Server) internalError(w http.ResponseWriter, op string, err error) {
	s.log.Error(op, "err", err)
	writeNetError(w, http.StatusInternalServerError, op+" failed")
}

// internalHosts returns the FQDNs of the internal routes mapped to app,
// sorted.
func (s *Server) internalHosts(ctx context.Context, app string) ([]string, error) {
	domains, err := s.store.Domains(ctx, store.DomainFilter{})
	if err != nil {
		return nil, err
	}
	routes, err := s.store.Routes(ctx, store.RouteFilter{AppGUIDs: []string{app}})
	if err != nil {
		return nil, err
	}
	return policy.RouteHosts(policyDomains(domains), policyRoutes(routes))[app], nil
}

// requireAuthOrCell runs h for a cell (mutual TLS) or for a caller with a
// token of one of scopes.
func (s *Server) requireAuthOrCell(writeErr errorWriter, scopes []string, h http.HandlerFunc) http.HandlerFunc {
	asCell, asUser := s.requireCell(h), s.requireAuth(writeErr, scopes, h)
	return func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && identity.CellGUIDFromCert(r.TLS.VerifiedChains[0][0]) != "" {
			asCell(w, r)
			return
		}
		asUser(w, r)
	}
}

// getInstanceCA answers GET /trellis/v1/instance-ca.
func (s *Server) getInstanceCA(w http.ResponseWriter, r *http.Request) {
	ca, gen, err := s.instanceCA(r.Context())
	if err != nil {
		s.internalError(w, "read instance CA", err)
		return
	}
	writeJSON(w, http.StatusOK, s.instanceCAJSON(ca, gen))
}

// rotationTooEarlyError refuses to finish a rotation while certificates
// signed by the old intermediate may still be in use.
type rotationTooEarlyError struct{ started, safe time.Time }

func (e *rotationTooEarlyError) Error() string {
	return fmt.Sprintf("the rotation began at %s: certificates signed before it stay valid until %s and would stop verifying if it finished now; it is safe to finish from %s (in %s), or force it",
		e.started.Format(time.RFC3339), e.safe.Format(time.RFC3339), e.safe.Format(time.RFC3339), time.Until(e.safe).Round(time.Second))
}

// rotateInstanceCA answers POST /trellis/v1/instance-ca/rotation (admin).
func (s *Server) rotateInstanceCA(w http.ResponseWriter, r *http.Request) {
	var req api.InstanceCARotation
	if !readV3(w, r, &req) {
		return
	}
	if req.Action != "begin" && req.Action != "finish" {
		writeNetError(w, http.StatusBadRequest, fmt.Sprintf(`invalid action %q: "begin" or "finish"`, req.Action))
		return
	}
	now := time.Now()
	var next *identity.InstanceCA
	var prevStarted time.Time
	stored, err := s.store.UpdateInstanceCA(r.Context(), func(cur store.InstanceCA) (string, error) {
		ca, err := identity.ParseInstanceCA([]byte(cur.State))
		if err != nil {
			return "", err
		}
		prevStarted = ca.RotationStarted()
		if req.Action == "begin" {
			next, err = ca.BeginRotation(now)
		} else {
			if safe := ca.RotationStarted().Add(s.id.Validity); ca.Rotating() && !req.Force && now.Before(safe) {
				return "", &rotationTooEarlyError{started: ca.RotationStarted(), safe: safe}
			}
			next, err = ca.FinishRotation()
		}
		if err != nil {
			return "", err
		}
		b, err := next.Marshal()
		return string(b), err
	})
	var early *rotationTooEarlyError
	switch {
	case errors.Is(err, identity.ErrRotating):
		writeNetError(w, http.StatusConflict, fmt.Sprintf("%v (since %s): finish it first with `trellis rotate-instance-ca --finish`", identity.ErrRotating, prevStarted.Format(time.RFC3339)))
		return
	case errors.Is(err, identity.ErrNotRotating):
		writeNetError(w, http.StatusConflict, identity.ErrNotRotating.Error()+": begin one with `trellis rotate-instance-ca`")
		return
	case errors.As(err, &early):
		writeNetError(w, http.StatusConflict, early.Error()+" with `trellis rotate-instance-ca --finish --force`")
		return
	case err != nil:
		s.internalError(w, "rotate instance CA", err)
		return
	}
	user := principalFrom(r.Context()).user()
	switch {
	case req.Action == "begin":
		s.log.Warn("instance CA rotation begun: cells renew every certificate; finish it after one certificate validity",
			"generation", stored.Generation, "intermediate", next.Intermediate().Subject.CommonName, "finish_after", now.Add(s.id.Validity), "user", user)
	case req.Force && now.Before(prevStarted.Add(s.id.Validity)):
		s.log.Warn("instance CA rotation FORCED to finish early: certificates signed before it stop verifying",
			"generation", stored.Generation, "began", prevStarted, "user", user)
	default:
		s.log.Warn("instance CA rotation finished: the old root is no longer trusted", "generation", stored.Generation, "user", user)
	}
	writeJSON(w, http.StatusOK, s.instanceCAJSON(next, stored.Generation))
}

// tlsApp loads the app of an app TLS request if the caller may act in its
// space (admin, or network.write there); otherwise it answers 404, as for
// an app that does not exist, and reports false.
func (s *Server) tlsApp(w http.ResponseWriter, r *http.Request) (store.App, bool) {
	guid := r.PathValue("guid")
	apps, err := s.store.Apps(r.Context(), store.AppFilter{GUIDs: []string{guid}})
	if err != nil {
		s.internalError(w, "read app", err)
		return store.App{}, false
	}
	if len(apps) == 0 || !principalFrom(r.Context()).inSpace(apps[0].SpaceGUID) {
		writeNetError(w, http.StatusNotFound, fmt.Sprintf("app %s not found", guid))
		return store.App{}, false
	}
	return apps[0], true
}

// getAppTLS answers GET /trellis/v1/apps/{guid}/tls.
func (s *Server) getAppTLS(w http.ResponseWriter, r *http.Request) {
	if a, ok := s.tlsApp(w, r); ok {
		writeJSON(w, http.StatusOK, api.AppTLS{RequireClientCert: a.RequireClientCert})
	}
}

// setAppTLS answers PUT /trellis/v1/apps/{guid}/tls.
func (s *Server) setAppTLS(w http.ResponseWriter, r *http.Request) {
	a, ok := s.tlsApp(w, r)
	if !ok {
		return
	}
	var req api.AppTLS
	if !readV3(w, r, &req) {
		return
	}
	got, err := s.store.SetAppRequireClientCert(r.Context(), a.GUID, req.RequireClientCert)
	if errors.Is(err, store.ErrNotFound) { // deleted meanwhile
		writeNetError(w, http.StatusNotFound, fmt.Sprintf("app %s not found", a.GUID))
		return
	}
	if err != nil {
		s.internalError(w, "set app TLS", err)
		return
	}
	if got.RequireClientCert != a.RequireClientCert {
		s.log.Info("set app TLS", "app", a.Name, "guid", a.GUID, "require_client_cert", got.RequireClientCert, "user", principalFrom(r.Context()).user())
	}
	writeJSON(w, http.StatusOK, api.AppTLS{RequireClientCert: got.RequireClientCert})
}
