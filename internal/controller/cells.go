package controller

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/identity"
	"github.com/trellis-c2c/trellis/internal/ipam"
	"github.com/trellis-c2c/trellis/internal/policy"
	"github.com/trellis-c2c/trellis/internal/store"
)

// Cell-facing constants.
const (
	joinTokenPrefix  = "trlsj_"
	defaultJoinTTL   = time.Hour
	maxJoinTTL       = 7 * 24 * time.Hour
	cellCertValidity = 365 * 24 * time.Hour
	// HealthyWithin is how recently a cell must have been heard from (each
	// state request counts) to be called healthy.
	HealthyWithin = 45 * time.Second
	// maxStateWait bounds a long poll of the cell state.
	maxStateWait = 30 * time.Second
	// VNI and VXLANPort are the overlay's VXLAN parameters, as Cloud Foundry's.
	VNI       = 1
	VXLANPort = 4789
)

type cellKey struct{}

func cellFrom(ctx context.Context) store.Cell {
	c, _ := ctx.Value(cellKey{}).(store.Cell)
	return c
}

// requireCell wraps h so that it runs only for a request with a client
// certificate this controller's CA issued to a cell that still exists.
func (s *Server) requireCell(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			writeNetError(w, http.StatusUnauthorized, "a cell client certificate is required")
			return
		}
		guid := identity.CellGUIDFromCert(r.TLS.VerifiedChains[0][0])
		if guid == "" {
			writeNetError(w, http.StatusUnauthorized, "the client certificate names no cell")
			return
		}
		cells, err := s.store.Cells(r.Context(), store.CellFilter{GUIDs: []string{guid}})
		if err != nil {
			s.log.Error("authenticate cell", "err", err)
			writeNetError(w, http.StatusInternalServerError, "database read failed")
			return
		}
		if len(cells) == 0 {
			writeNetError(w, http.StatusUnauthorized, fmt.Sprintf("cell %s is not registered (it was deleted): join again with a new join token", guid))
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), cellKey{}, cells[0])))
	}
}

func (s *Server) createJoinToken(w http.ResponseWriter, r *http.Request) {
	var req api.JoinTokenRequest
	if r.ContentLength != 0 && !readV3(w, r, &req) {
		return
	}
	ttl := defaultJoinTTL
	if req.TTLSeconds != 0 {
		ttl = time.Duration(req.TTLSeconds) * time.Second
	}
	if ttl <= 0 || ttl > maxJoinTTL {
		writeNetError(w, http.StatusBadRequest, fmt.Sprintf("invalid ttl_seconds %d: must be 1 to %d", req.TTLSeconds, int(maxJoinTTL.Seconds())))
		return
	}
	value, _ := NewToken()
	value = joinTokenPrefix + strings.TrimPrefix(value, tokenPrefix)
	expires := time.Now().Add(ttl).UTC().Truncate(time.Second)
	if err := s.store.CreateJoinToken(r.Context(), HashToken(value), expires); err != nil {
		s.log.Error("create join token", "err", err)
		writeNetError(w, http.StatusInternalServerError, "database create failed")
		return
	}
	s.log.Info("created join token", "expires", expires, "user", principalFrom(r.Context()).user())
	writeJSON(w, http.StatusCreated, api.JoinToken{Token: value, ExpiresAt: expires})
}

func (s *Server) joinCell(w http.ResponseWriter, r *http.Request) {
	scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if !strings.EqualFold(scheme, "bearer") || !strings.HasPrefix(token, joinTokenPrefix) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="trellis"`)
		writeNetError(w, http.StatusUnauthorized, "a join token is required: create one with `trellis create-join-token`")
		return
	}
	var req api.JoinRequest
	if !readV3(w, r, &req) {
		return
	}
	if err := validateLabel(req.Name); err != nil {
		writeNetError(w, http.StatusBadRequest, fmt.Sprintf("invalid cell name %q: %v", req.Name, err))
		return
	}
	ip, err := netip.ParseAddr(req.UnderlayIP)
	if err != nil || !ip.Is4() || ip.IsUnspecified() || ip.IsMulticast() {
		writeNetError(w, http.StatusBadRequest, fmt.Sprintf("invalid underlay_ip %q: must be the cell's IPv4 unicast address", req.UnderlayIP))
		return
	}
	if _, err := identity.ParseCSR([]byte(req.CSR)); err != nil {
		writeNetError(w, http.StatusBadRequest, err.Error())
		return
	}
	c, err := s.store.JoinCell(r.Context(), HashToken(token), req.Name, ip, s.pool)
	switch {
	case errors.Is(err, store.ErrBadJoinToken):
		s.logAuthFailure(r, err)
		w.Header().Set("WWW-Authenticate", `Bearer realm="trellis"`)
		writeNetError(w, http.StatusUnauthorized, "join token is unknown, used or expired: create a new one with `trellis create-join-token`")
		return
	case errors.Is(err, store.ErrConflict):
		writeNetError(w, http.StatusConflict, strings.TrimPrefix(err.Error(), "join cell: ")+": delete the old cell first with `trellis delete-cell`")
		return
	case errors.Is(err, store.ErrOverlayFull):
		writeNetError(w, http.StatusConflict, strings.TrimPrefix(err.Error(), "join cell: "))
		return
	case err != nil:
		s.log.Error("join cell", "err", err)
		writeNetError(w, http.StatusInternalServerError, "database create failed")
		return
	}
	certPEM, err := s.ca.SignCellCSR([]byte(req.CSR), c.GUID, c.Name, cellCertValidity)
	if err != nil {
		s.store.DeleteCell(context.WithoutCancel(r.Context()), c.GUID)
		s.log.Error("sign cell certificate", "err", err)
		writeNetError(w, http.StatusInternalServerError, "sign cell certificate failed")
		return
	}
	s.log.Info("cell joined", "cell", c.Name, "guid", c.GUID, "underlay_ip", ip, "subnet", c.Subnet)
	writeJSON(w, http.StatusCreated, api.JoinResponse{Cell: cellJSON(c), Certificate: string(certPEM), CA: string(s.ca.CertPEM)})
}

func cellJSON(c store.Cell) api.Cell {
	return api.Cell{GUID: c.GUID, Name: c.Name, UnderlayIP: c.UnderlayIP, Subnet: c.Subnet,
		LastSeen: c.LastSeen, Healthy: time.Since(c.LastSeen) < HealthyWithin,
		WireGuardKey: c.WireGuardKey, WireGuardPort: c.WireGuardPort,
		WireGuardKeyGeneration: c.WireGuardKeyGeneration, KeyGeneration: c.KeyGeneration}
}

func (s *Server) listCells(w http.ResponseWriter, r *http.Request) {
	cells, err := s.store.Cells(r.Context(), store.CellFilter{Names: query(r, "names")})
	if err != nil {
		s.log.Error("list cells", "err", err)
		writeNetError(w, http.StatusInternalServerError, "database read failed")
		return
	}
	out := make([]api.Cell, len(cells))
	for i, c := range cells {
		out[i] = cellJSON(c)
	}
	writeJSON(w, http.StatusOK, list(r, out))
}

func (s *Server) deleteCell(w http.ResponseWriter, r *http.Request) {
	if err := s.store.DeleteCell(r.Context(), r.PathValue("guid")); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			writeNetError(w, http.StatusNotFound, "cell not found")
			return
		}
		s.log.Error("delete cell", "err", err)
		writeNetError(w, http.StatusInternalServerError, "database delete failed")
		return
	}
	s.log.Info("deleted cell", "guid", r.PathValue("guid"), "user", principalFrom(r.Context()).user())
	w.WriteHeader(http.StatusNoContent)
}

// leaveCell removes the calling cell: its peers drop it at their next state.
func (s *Server) leaveCell(w http.ResponseWriter, r *http.Request) {
	c := cellFrom(r.Context())
	if err := s.store.DeleteCell(r.Context(), c.GUID); err != nil && !errors.Is(err, store.ErrNotFound) {
		s.log.Error("cell leave", "err", err)
		writeNetError(w, http.StatusInternalServerError, "database delete failed")
		return
	}
	s.log.Info("cell left", "cell", c.Name, "guid", c.GUID)
	w.WriteHeader(http.StatusNoContent)
}

// cellState answers a cell's long poll: its desired state as soon as the
// revision exceeds ?after (or at once without it), or after ?wait seconds
// (default and at most 30) with the current state.
func (s *Server) cellState(w http.ResponseWriter, r *http.Request) {
	c := cellFrom(r.Context())
	if s.touches.due(c.GUID, time.Now()) {
		if err := s.store.TouchCell(r.Context(), c.GUID); err != nil {
			s.log.Warn("touch cell", "cell", c.Name, "err", err)
		}
	}
	q := r.URL.Query()
	after := int64(-1)
	if v := q.Get("after"); v != "" {
		if _, err := fmt.Sscan(v, &after); err != nil || after < 0 {
			writeNetError(w, http.StatusBadRequest, fmt.Sprintf("invalid after %q: must be a revision number", v))
			return
		}
	}
	wait := maxStateWait
	if v := q.Get("wait"); v != "" {
		var secs float64
		if _, err := fmt.Sscan(v, &secs); err != nil || secs < 0 || secs > maxStateWait.Seconds() {
			writeNetError(w, http.StatusBadRequest, fmt.Sprintf("invalid wait %q: must be 0 to %d seconds", v, int(maxStateWait.Seconds())))
			return
		}
		wait = time.Duration(secs * float64(time.Second))
	}
	if after < 0 {
		wait = 0
	}
	// delta=1: the cell accepts a delta from its revision after (an
	// api.CellStateAnswer); without it, the whole state as it is.
	var delta bool
	switch v := q.Get("delta"); v {
	case "", "0":
	case "1":
		delta = true
	default:
		writeNetError(w, http.StatusBadRequest, fmt.Sprintf("invalid delta %q: must be 0 or 1", v))
		return
	}
	base := q.Get("base") // the digest of the cell's state at after
	if _, err := hex.DecodeString(base); err != nil || (base != "" && len(base) != 64) {
		writeNetError(w, http.StatusBadRequest, fmt.Sprintf("invalid base %q: must be the digest of a state (64 hex digits)", base))
		return
	}
	s.console.polled(c.GUID, after) // the agent polls after the revision it applied
	type answer struct {
		e   *feedEntry
		err error
	}
	held, done := make(chan struct{}), make(chan answer, 1)
	go func() {
		e, err := s.feed.state(r.Context(), c.GUID, after, wait, func() { close(held) })
		done <- answer{e, err}
	}()
	// While the poll is held, the answer is committed (200) and a
	// heartbeat, a newline (whitespace before the JSON body, which stays
	// valid JSON), is written every stateHeartbeat: a cell hears its
	// controller at least that often, and drops a connection that falls
	// silent (see api.Client.CellState) rather than wait out the poll.
	var beat <-chan time.Time
	committed := false
	var ans answer
wait:
	for {
		select {
		case ans = <-done:
			break wait
		case <-held:
			held = nil
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusOK)
			committed = true
			t := time.NewTicker(stateHeartbeat)
			defer t.Stop()
			beat = t.C
			if !s.heartbeat(w) {
				return // the cell went away: the poll ends with r's context
			}
		case <-beat:
			if !s.heartbeat(w) {
				return
			}
		}
	}
	st, err := ans.e, ans.err
	if err != nil {
		if r.Context().Err() != nil {
			return // the cell went away
		}
		if committed {
			// Too late for a status (the cell was deleted during the
			// poll): the cut answer makes the cell ask again, and hear it.
			s.log.Warn("cell state during a held poll", "cell", c.Name, "err", err)
			panic(http.ErrAbortHandler)
		}
		if errors.Is(err, store.ErrNotFound) {
			writeNetError(w, http.StatusUnauthorized, "this cell was deleted: join again with a new join token")
			return
		}
		s.log.Error("compute cell state", "cell", c.Name, "err", err)
		writeNetError(w, http.StatusInternalServerError, "database read failed")
		return
	}
	if !committed {
		w.Header().Set("Content-Type", "application/json")
	}
	cw := &countingWriter{w: w}
	sent, _ := st.answer(cw, &s.feed.differ, after, base, delta)
	s.feed.sent(sent, cw.n)
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// touchEvery is the least time between two writes of a cell's last-seen
// time: far below HealthyWithin, and a change that wakes 50 cells does not
// cost 50 database writes when their polls come back.
const touchEvery = 5 * time.Second

// touchLimiter says when a cell's last-seen time is due to be written.
type touchLimiter struct {
	mu   sync.Mutex
	last map[string]time.Time // cell → when its last-seen time was last written
}

// due reports whether cell's last-seen time should be written now, and if
// so counts it written.
func (l *touchLimiter) due(cell string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.last[cell]) < touchEvery {
		return false
	}
	if l.last == nil || len(l.last) > 100000 {
		l.last = map[string]time.Time{} // forget deleted cells now and then
	}
	l.last[cell] = now
	return true
}

// stateHeartbeat is how often a held long poll of the cell state writes a
// heartbeat (see cellState).
const stateHeartbeat = time.Second

// heartbeat writes and flushes one heartbeat of a held long poll; false if
// the cell can no longer be written to.
func (s *Server) heartbeat(w http.ResponseWriter) bool {
	if _, err := w.Write([]byte("\n")); err != nil {
		return false
	}
	return http.NewResponseController(w).Flush() == nil
}

// compileInput is what policy.Compile reads, from a snapshot of the store
// and this controller's overlay and instance identity settings.
func (s *Server) compileInput(ctx context.Context, snap store.Snapshot) (*policy.Snapshot, error) {
	stored, ok := snap.InstanceCA, snap.HasInstanceCA
	if !ok { // not created yet: create it (Run does at start)
		var err error
		if stored, err = ensureInstanceCA(ctx, s.store, s.log); err != nil {
			return nil, err
		}
	}
	ca, err := s.parseInstanceCA(stored)
	if err != nil {
		return nil, err
	}
	v, set := snap.Settings[enforcementKey]
	in := &policy.Snapshot{
		Revision:   snap.Revision,
		Overlay:    api.Overlay{CIDR: s.pool.Overlay, SubnetPrefix: s.pool.SubnetLen, VNI: VNI, Port: VXLANPort},
		Enforce:    enforced(v, set),
		Encryption: encryptionMode(snap.Settings[encryptionKey]),
		InstanceCA: s.instanceCAJSON(ca, stored.Generation),
		Cells:      policyCells(snap.Cells),
		Spaces:     policySpaces(snap.Spaces),
		Apps:       policyApps(snap.Apps),
		Instances:  policyInstances(snap.Instances),
		Tags:       policyTags(snap.Tags),
		Policies:   policyPolicies(snap.Policies),
		PolicyIDs:  snap.PolicyIDs,
		Domains:    policyDomains(snap.Domains),
		Routes:     policyRoutes(snap.Routes),
	}
	in.SecurityGroups = s.policySecurityGroups(snap.SecurityGroups)
	return in, nil
}

// compileDelta is what policy.Model.Apply reads, from changes of the store.
func compileDelta(c *store.Changes) *policy.Delta {
	return &policy.Delta{Revision: c.Revision, Cells: policyCells(c.Cells), Spaces: policySpaces(c.Spaces),
		Apps: policyApps(c.Apps), Instances: policyInstances(c.Instances), Tags: policyTags(c.Tags),
		Policies: policyPolicies(c.Policies), PolicyIDs: c.PolicyIDs, Domains: policyDomains(c.Domains),
		Routes: policyRoutes(c.Routes), Deleted: c.Deleted}
}

func policyCells(cs []store.Cell) []api.Cell {
	out := make([]api.Cell, len(cs))
	for i, c := range cs {
		// A desired state carries no observations (when a cell was last
		// heard from): it changes only when what the cells must do changes.
		out[i] = api.Cell{GUID: c.GUID, Name: c.Name, UnderlayIP: c.UnderlayIP, Subnet: c.Subnet,
			WireGuardKey: c.WireGuardKey, WireGuardPort: c.WireGuardPort, KeyGeneration: c.KeyGeneration}
	}
	return out
}

func policySpaces(ss []store.Space) []policy.Space {
	out := make([]policy.Space, len(ss))
	for i, sp := range ss {
		out[i] = policy.Space{GUID: sp.GUID, OrgGUID: sp.OrgGUID}
	}
	return out
}

func policyApps(as []store.App) []policy.App {
	out := make([]policy.App, len(as))
	for i, a := range as {
		out[i] = policy.App{GUID: a.GUID, Name: a.Name, SpaceGUID: a.SpaceGUID, Command: a.Command, Env: a.Env,
			RequireClientCert: a.RequireClientCert}
	}
	return out
}

func policyInstances(xs []store.Instance) []policy.Instance {
	out := make([]policy.Instance, len(xs))
	for i, x := range xs {
		out[i] = policy.Instance{GUID: x.GUID, AppGUID: x.AppGUID, Index: x.Index, Managed: x.Managed,
			CellGUID: x.CellGUID, Running: x.State == store.InstanceRunning, IP: x.IP}
	}
	return out
}

func policyTags(ts []store.Tag) []policy.Tag {
	out := make([]policy.Tag, len(ts))
	for i, t := range ts {
		out[i] = policy.Tag{AppGUID: t.AppGUID, Tag: t.Tag}
	}
	return out
}

func policyPolicies(ps []store.Policy) []policy.Policy {
	out := make([]policy.Policy, len(ps))
	for i, p := range ps {
		out[i] = policy.Policy{SourceApp: p.SourceApp, DestApp: p.DestApp, SourceTag: p.SourceTag,
			Protocol: p.Protocol, StartPort: p.StartPort, EndPort: p.EndPort}
	}
	return out
}

func policyDomains(ds []store.Domain) []policy.Domain {
	out := make([]policy.Domain, len(ds))
	for i, d := range ds {
		out[i] = policy.Domain{GUID: d.GUID, Name: d.Name, Internal: d.Internal}
	}
	return out
}

func policyRoutes(rs []store.Route) []policy.Route {
	out := make([]policy.Route, len(rs))
	for i, rt := range rs {
		out[i] = policy.Route{GUID: rt.GUID, Host: rt.Host, DomainGUID: rt.DomainGUID, DomainName: rt.DomainName, AppGUIDs: rt.AppGUIDs}
	}
	return out
}

// enforcementKey is the setting that turns policy enforcement off.
const enforcementKey = "enforce_policy"

// enforcement reports whether policies are enforced (the default).
func (s *Server) enforcement(ctx context.Context) (bool, error) {
	v, ok, err := s.store.Setting(ctx, enforcementKey)
	return enforced(v, ok), err
}

// enforced reports whether the enforcement setting, if set to v, enforces.
func enforced(v string, set bool) bool { return !set || v != "false" }

func (s *Server) registerInstance(w http.ResponseWriter, r *http.Request) {
	c := cellFrom(r.Context())
	var req api.InstanceRegistration
	if !readV3(w, r, &req) {
		return
	}
	guid := r.PathValue("guid")
	if req.AppGUID == "" || guid == "" || req.Index < 0 {
		writeNetError(w, http.StatusBadRequest, "app_guid, instance guid and a non-negative index are required")
		return
	}
	if err := validateInstanceGUID(guid); err != nil {
		writeNetError(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	ip, err := instanceAddr(c.Subnet, req.IP)
	if err != nil {
		writeNetError(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	err = s.store.RegisterInstance(r.Context(), c.GUID, store.Instance{GUID: guid, AppGUID: req.AppGUID, Index: req.Index, IP: ip, ContainerID: req.ContainerID})
	switch {
	case errors.Is(err, store.ErrAppNotFound):
		writeNetError(w, http.StatusUnprocessableEntity, fmt.Sprintf("app %s does not exist: create it first (trellis create-app)", req.AppGUID))
		return
	case errors.Is(err, store.ErrConflict):
		writeNetError(w, http.StatusConflict, strings.TrimPrefix(err.Error(), "register instance: "))
		return
	case err != nil:
		s.log.Error("register instance", "err", err)
		writeNetError(w, http.StatusInternalServerError, "database write failed")
		return
	}
	s.log.Info("instance attached", "cell", c.Name, "instance", guid, "app", req.AppGUID, "index", req.Index, "ip", ip)
	if req.CSR == "" {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	// The CSR is signed as POST .../certificate would sign it, now that
	// the instance is registered. The registration stands whatever comes
	// of it (the container is attached, with or without a certificate,
	// and its cell asks again), so a refusal is no error status, which
	// would say the registration failed: it is a 204 whose header says
	// why, and the refusal is logged and counted as any other.
	cert, rf, err := s.certifyInstance(r.Context(), c, guid, req.CSR)
	switch {
	case err != nil:
		s.log.Error("sign instance certificate at registration", "cell", c.Name, "instance", guid, "err", err)
		w.Header().Set(api.CertificateRefusedHeader, "sign instance certificate failed")
		w.WriteHeader(http.StatusNoContent)
	case rf != nil:
		s.noteRefusal(c, guid, *rf)
		w.Header().Set(api.CertificateRefusedHeader, headerValue(fmt.Sprintf("%d %s", rf.status, rf.msg)))
		w.WriteHeader(http.StatusNoContent)
	default:
		writeJSON(w, http.StatusCreated, cert)
	}
}

// headerValue makes s fit in an HTTP header: printable ASCII only (HTTP/2
// drops a header with anything else), at most 1000 bytes.
func headerValue(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = '?'
		}
	}
	if len(b) > 1000 {
		b = append(b[:997], "..."...)
	}
	return string(b)
}

// instanceAddr parses the overlay address a cell registers for an
// instance: one of the container addresses of the cell's subnet, never its
// VTEP's, the address kept back after it, or the broadcast address.
func instanceAddr(subnet netip.Prefix, s string) (netip.Addr, error) {
	ip, err := netip.ParseAddr(s)
	if err != nil || !ip.Is4() || ip.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("invalid ip %q: must be an IPv4 address of this cell's subnet %s", s, subnet)
	}
	if !subnet.Contains(ip) {
		return netip.Addr{}, fmt.Errorf("invalid ip %s: outside this cell's subnet %s", ip, subnet)
	}
	first, last := ipam.FirstHost(subnet), ipam.LastHost(subnet)
	if ip.Less(first) || last.Less(ip) {
		return netip.Addr{}, fmt.Errorf("invalid ip %s: not a container address of subnet %s (%s is the cell's VTEP, the broadcast address is never used): use %s to %s",
			ip, subnet, ipam.VTEPAddr(subnet), first, last)
	}
	return ip, nil
}

func (s *Server) deregisterInstance(w http.ResponseWriter, r *http.Request) {
	c := cellFrom(r.Context())
	if err := s.store.DeregisterInstance(r.Context(), c.GUID, r.PathValue("guid")); err != nil {
		s.log.Error("deregister instance", "err", err)
		writeNetError(w, http.StatusInternalServerError, "database write failed")
		return
	}
	s.log.Info("instance detached", "cell", c.Name, "instance", r.PathValue("guid"))
	w.WriteHeader(http.StatusNoContent)
}

// listInstances answers GET /trellis/v1/instances?app_guids=...: the
// instances of the apps the caller may see.
func (s *Server) listInstances(w http.ResponseWriter, r *http.Request) {
	p := principalFrom(r.Context())
	f := store.InstanceFilter{AppGUIDs: query(r, "app_guids")}
	if !p.admin() {
		apps, err := s.appsOfCaller(r, p)
		if err != nil {
			s.storeError(w, "list instances", err)
			return
		}
		if len(f.AppGUIDs) == 0 {
			f.AppGUIDs = apps
		} else {
			f.AppGUIDs = intersect(f.AppGUIDs, apps)
		}
		if len(f.AppGUIDs) == 0 {
			writeJSON(w, http.StatusOK, list[api.Instance](r, nil))
			return
		}
	}
	out, err := s.apiInstances(r.Context(), f)
	if err != nil {
		s.storeError(w, "list instances", err)
		return
	}
	writeJSON(w, http.StatusOK, list(r, out))
}

// apiInstances lists the instances f selects as the API shows them, with
// their cells' names.
func (s *Server) apiInstances(ctx context.Context, f store.InstanceFilter) ([]api.Instance, error) {
	ins, err := s.store.Instances(ctx, f)
	if err != nil {
		return nil, err
	}
	cells, err := s.store.Cells(ctx, store.CellFilter{})
	if err != nil {
		return nil, err
	}
	names := map[string]string{}
	for _, c := range cells {
		names[c.GUID] = c.Name
	}
	out := make([]api.Instance, len(ins))
	for i, in := range ins {
		out[i] = api.Instance{GUID: in.GUID, AppGUID: in.AppGUID, Index: in.Index, Managed: in.Managed,
			CellGUID: in.CellGUID, CellName: names[in.CellGUID], State: in.State, UpdatedAt: in.UpdatedAt.UTC()}
		if in.IP.IsValid() {
			out[i].IP = in.IP.String()
		}
	}
	return out, nil
}

func intersect(a, b []string) []string {
	in := map[string]bool{}
	for _, x := range b {
		in[x] = true
	}
	var out []string
	for _, x := range a {
		if in[x] {
			out = append(out, x)
		}
	}
	return out
}

// updateApp answers PATCH /v3/apps/{guid}: command, environment, cell.
func (s *Server) updateApp(w http.ResponseWriter, r *http.Request) {
	a, ok := s.visibleApp(w, r, r.PathValue("guid"))
	if !ok {
		return
	}
	var req api.AppUpdate
	if !readV3(w, r, &req) {
		return
	}
	u := store.AppUpdate{Command: req.Command, Env: req.Env, CellGUID: req.CellGUID}
	if req.Command != nil {
		for i, arg := range *req.Command {
			if strings.ContainsRune(arg, 0) {
				writeV3Error(w, http.StatusUnprocessableEntity, fmt.Sprintf("invalid command: argument %d contains a NUL byte", i))
				return
			}
		}
	}
	if req.Env != nil {
		for k, v := range *req.Env {
			if k == "" || strings.ContainsAny(k, "=\x00") {
				writeV3Error(w, http.StatusUnprocessableEntity, fmt.Sprintf("invalid environment variable name %q", k))
				return
			}
			if strings.ContainsRune(v, 0) {
				writeV3Error(w, http.StatusUnprocessableEntity, fmt.Sprintf("invalid value of environment variable %s: contains a NUL byte", k))
				return
			}
			if strings.HasPrefix(k, "CF_INSTANCE_") || k == "PORT" {
				writeV3Error(w, http.StatusUnprocessableEntity, fmt.Sprintf("environment variable %s is set by the platform", k))
				return
			}
		}
	}
	if req.CellGUID != nil && *req.CellGUID != "" && !principalFrom(r.Context()).admin() {
		writeV3Error(w, http.StatusForbidden, "only network.admin may pin an app to a cell")
		return
	}
	s.applyAppUpdate(w, r, a, u, "updated app")
}

func (s *Server) applyAppUpdate(w http.ResponseWriter, r *http.Request, a store.App, u store.AppUpdate, what string) {
	got, err := s.store.UpdateApp(r.Context(), a.GUID, u)
	if errors.Is(err, store.ErrNotFound) {
		writeV3Error(w, http.StatusUnprocessableEntity, strings.TrimPrefix(err.Error(), "update app: "))
		return
	}
	if err != nil {
		s.storeError(w, "update app", err)
		return
	}
	s.log.Info(what, "app", a.Name, "guid", a.GUID, "state", got.State, "instances", got.Instances, "user", principalFrom(r.Context()).user())
	writeJSON(w, http.StatusOK, ccAppOf(r, got))
}

func (s *Server) appAction(w http.ResponseWriter, r *http.Request) {
	a, ok := s.visibleApp(w, r, r.PathValue("guid"))
	if !ok {
		return
	}
	started, stopped := store.AppStarted, store.AppStopped
	switch r.PathValue("action") {
	case "start":
		s.applyAppUpdate(w, r, a, store.AppUpdate{State: &started}, "started app")
	case "stop":
		s.applyAppUpdate(w, r, a, store.AppUpdate{State: &stopped}, "stopped app")
	case "restart":
		if _, err := s.store.UpdateApp(r.Context(), a.GUID, store.AppUpdate{State: &stopped}); err != nil {
			s.storeError(w, "restart app", err)
			return
		}
		s.applyAppUpdate(w, r, a, store.AppUpdate{State: &started}, "restarted app")
	default:
		writeV3Error(w, http.StatusNotFound, "unknown action: use start, stop or restart")
	}
}

func (s *Server) scaleApp(w http.ResponseWriter, r *http.Request) {
	a, ok := s.visibleApp(w, r, r.PathValue("guid"))
	if !ok {
		return
	}
	var req api.ScaleRequest
	if !readV3(w, r, &req) {
		return
	}
	if req.Instances < 0 || req.Instances > 1000 {
		writeV3Error(w, http.StatusUnprocessableEntity, fmt.Sprintf("invalid instances %d: must be 0 to 1000", req.Instances))
		return
	}
	s.applyAppUpdate(w, r, a, store.AppUpdate{Instances: &req.Instances}, "scaled app")
}
