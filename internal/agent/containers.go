package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/dataplane"
	"github.com/trellis-c2c/trellis/internal/identity"
	"github.com/trellis-c2c/trellis/internal/ipam"
)

// DNSAddr is where containers find the cell's DNS server.
var DNSAddr = "169.254.0.2"

// record is what the agent keeps on disk of one container attachment, so
// that a restarted agent adopts its containers without touching them.
type record struct {
	ContainerID string       `json:"container_id"`
	IP          netip.Addr   `json:"ip"`
	NetNS       string       `json:"netns"`
	IfName      string       `json:"ifname"`
	Identity    api.Identity `json:"identity"`
	HostVeth    string       `json:"host_veth,omitempty"`
	Committed   bool         `json:"committed"`
	// Registering: the controller may have been told of it before it was
	// committed (the ADD registers it while the plugin wires it), so
	// releasing it deregisters it too.
	Registering bool `json:"registering,omitempty"`
	// Deleting: the runtime deleted it, the controller has not been told yet;
	// the address stays reserved until it has.
	Deleting  bool      `json:"deleting,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// containers is the agent's table of attachments, persisted one file each.
type containers struct {
	dir    string
	subnet netip.Prefix
	mtu    int

	mu      sync.Mutex
	records map[string]*record
	last    netip.Addr // last address handed out

	// dropped are the records found unreadable at load (a machine that
	// crashed mid-write; see save), removed so the agent can start.
	dropped []string
}

// validContainerID reports whether id is 1-128 of [A-Za-z0-9_.-], starting
// with a letter or digit. (A regexp with {0,127}, compiled at init, made
// 1,694 allocations in every exec of this binary, the CNI plugin's
// included: 0.1 ms warm, 7.6 ms in a cold start measured with
// GODEBUG=inittrace=1 on a loaded machine.)
func validContainerID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i, c := range []byte(id) {
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case i > 0 && (c == '_' || c == '.' || c == '-'):
		default:
			return false
		}
	}
	return true
}

func loadContainers(dir string, subnet netip.Prefix, mtu int) (*containers, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	cs := &containers{dir: dir, subnet: subnet, mtu: mtu, records: map[string]*record{}}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		var r record
		if err := json.Unmarshal(b, &r); err != nil || r.ContainerID+".json" != e.Name() {
			// Records are written without fsync (see save): after a crash
			// of the machine one can be torn, and its container is gone
			// with the reboot anyway.
			if rerr := os.Remove(filepath.Join(dir, e.Name())); rerr != nil {
				return nil, fmt.Errorf("remove unreadable container record %s: %w", e.Name(), rerr)
			}
			cs.dropped = append(cs.dropped, e.Name())
			continue
		}
		cs.records[r.ContainerID] = &r
	}
	if b, err := os.ReadFile(filepath.Join(dir, "last-ip")); err == nil {
		cs.last, _ = netip.ParseAddr(strings.TrimSpace(string(b)))
	}
	return cs, nil
}

// save replaces r's record file atomically (a temporary file renamed over
// it) but without fsync: a record describes a container whose network
// namespace does not outlive the machine, so it must survive the agent
// crashing (the rename does that) but not the machine — and an fsync costs
// a CNI ADD several milliseconds per record write on a slow disk.
func (cs *containers) save(r *record) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return identity.ReplaceFile(filepath.Join(cs.dir, r.ContainerID+".json"), append(b, '\n'), 0o600)
}

func (cs *containers) remove(id string) error {
	delete(cs.records, id)
	err := os.Remove(filepath.Join(cs.dir, id+".json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

func (cs *containers) allocation(r *record) api.Allocation {
	return api.Allocation{ContainerID: r.ContainerID, IP: r.IP.String(), Subnet: cs.subnet.String(),
		Gateway: dataplane.HostGateway.String(), MTU: cs.mtu, DNS: []string{DNSAddr}, Committed: r.Committed}
}

// list returns a copy of the records, ordered by container ID.
func (cs *containers) list() []record {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	out := make([]record, 0, len(cs.records))
	for _, r := range cs.records {
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ContainerID < out[j].ContainerID })
	return out
}

// socketServer serves the CNI plugin's API (internal/api/agent.go): it
// allocates addresses from the cell's lease, registers instances with the
// controller, and releases them.
type socketServer struct {
	log        *slog.Logger
	nsPath     string // the cell's network namespace
	containers *containers
	metrics    prometheus.Gatherer
	registry   registry
	certs      instanceCerts
	// applyPolicy re-applies the cell's policy after a container was
	// attached or detached.
	applyPolicy func(context.Context)
	// agentStatus is what GET /v1/status answers.
	agentStatus func() api.AgentStatus

	// preps are the ADDs whose agent steps run while their plugin wires
	// the container, by container ID; guarded by containers.mu.
	preps map[string]*preparation
	// policy coalesces the policy re-applies of concurrent ADDs and DELs.
	policy struct {
		requested atomic.Uint64
		mu        sync.Mutex
		applied   uint64 // the requests the last apply covered
	}
}

// preparation is what an ADD needs of the agent besides the wiring, started
// when the address is allocated, so that it runs while the plugin wires the
// container instead of after: the policy table with the new address (its
// packets marked with its app's tag, its veth's spoofing checked), and at
// once the registration with the controller, which carries the request
// for the instance's certificate (one round trip: the controller signs
// once it registered). The commit waits for it. None of it lets the
// container send: a packet from a container's veth passes only once its
// address is in the policy table, and the table is in place before the
// commit returns.
type preparation struct {
	done  chan struct{} // closed when every step finished
	start time.Time
	err   error // of the registration
	// When each step finished, counted from start.
	register, policy, certificate time.Duration
}

// prepareWait bounds an ADD's preparation (its controller calls).
const prepareWait = 10 * time.Second

// prepare returns rec's preparation, starting it if none is running. The
// caller holds containers.mu, and rec is saved with Registering set.
func (s *socketServer) prepare(rec record) *preparation {
	if p := s.preps[rec.ContainerID]; p != nil {
		return p
	}
	if s.preps == nil {
		s.preps = map[string]*preparation{}
	}
	p := &preparation{done: make(chan struct{}), start: time.Now()}
	s.preps[rec.ContainerID] = p
	go s.runPreparation(rec, p)
	return p
}

func (s *socketServer) runPreparation(rec record, p *preparation) {
	defer close(p.done)
	ctx, cancel := context.WithTimeout(context.Background(), prepareWait)
	defer cancel()
	var policy sync.WaitGroup
	policy.Go(func() {
		s.refreshPolicy(ctx)
		p.policy = time.Since(p.start)
	})
	// The certificate's key and request need no controller: they are made
	// first (an ECDSA key: tens of microseconds), so that the registration
	// carries the request and the controller answers with the certificate.
	// The key's file is written while the registration is on its way.
	key := s.certs.newKey(rec)
	reg := api.InstanceRegistration{AppGUID: rec.Identity.AppGUID, Index: rec.Identity.Index, IP: rec.IP.String(), ContainerID: rec.ContainerID}
	if key != nil {
		reg.CSR = string(key.csrPEM)
	}
	var ans api.Registered
	ans, p.err = s.registry.RegisterInstanceCSR(ctx, rec.Identity.InstanceGUID, reg)
	p.register = time.Since(p.start)
	if p.err != nil {
		// As when the commit registered: a failed registration is not
		// undone (the controller said no, or was not reached).
		cs := s.containers
		cs.mu.Lock()
		if r, ok := cs.records[rec.ContainerID]; ok && !r.Committed {
			r.Registering = false
		}
		cs.mu.Unlock()
		if key != nil {
			s.certs.discard(rec, key)
		}
	} else if key != nil {
		s.certs.prepare(ctx, rec, key, ans)
		p.certificate = time.Since(p.start)
	}
	policy.Wait()
}

// refreshPolicy re-applies the cell's policy for the containers attached
// here now. Concurrent calls (a cell starting many containers at once)
// share applies: one apply covers every call made before it read the
// containers, so twenty ADDs cost a few applies, not twenty in a row.
func (s *socketServer) refreshPolicy(ctx context.Context) {
	ps := &s.policy
	mine := ps.requested.Add(1)
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.applied >= mine {
		return
	}
	upto := ps.requested.Load()
	s.applyPolicy(ctx)
	ps.applied = upto
}

// registry is the controller's record of which instance holds which
// address on the cell.
type registry interface {
	// RegisterInstanceCSR registers an instance and, if reg has a CSR,
	// asks for its certificate in the same call.
	RegisterInstanceCSR(ctx context.Context, guid string, reg api.InstanceRegistration) (api.Registered, error)
	DeregisterInstance(ctx context.Context, guid string) error
}

// instanceCerts serves each attached instance its identity certificate.
type instanceCerts interface {
	// newKey makes the key and request of rec's first certificate, which
	// its registration carries, and starts writing the key's file; nil if
	// there is none to make (the instance is served already: a repeated
	// ADD; or the key failed, and attach tries again).
	newKey(rec record) *pendingKey
	// discard removes what newKey wrote, when the registration failed.
	discard(rec record, key *pendingKey)
	// prepare takes the certificate the registration answered for key,
	// or asks for it if the controller did not sign at registration, and
	// writes its files before the container is wired; attach then
	// serves it.
	prepare(ctx context.Context, rec record, key *pendingKey, ans api.Registered)
	attach(ctx context.Context, rec record)
	detach(guid string)
}

func (s *socketServer) handler() http.Handler {
	m := http.NewServeMux()
	m.HandleFunc("POST /v1/containers", s.allocate)
	m.HandleFunc("POST /v1/containers/{id}/commit", s.commit)
	m.HandleFunc("GET /v1/containers/{id}", s.get)
	m.HandleFunc("DELETE /v1/containers/{id}", s.del)
	m.HandleFunc("POST /v1/gc", s.gc)
	m.HandleFunc("GET /v1/status", s.status)
	m.Handle("GET /metrics", promhttp.HandlerFor(s.metrics, promhttp.HandlerOpts{}))
	return m
}

func writeErr(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, api.Error{Error: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeErr(w, http.StatusBadRequest, "decode request: "+err.Error())
		return false
	}
	return true
}

func (s *socketServer) allocate(w http.ResponseWriter, r *http.Request) {
	var req api.AllocateRequest
	if !readJSON(w, r, &req) {
		return
	}
	if !validContainerID(req.ContainerID) {
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("invalid container ID %q: 1-128 of [A-Za-z0-9_.-]", req.ContainerID))
		return
	}
	if req.Identity.AppGUID == "" || req.Identity.InstanceGUID == "" {
		writeErr(w, http.StatusBadRequest, "identity needs app_guid and instance_guid")
		return
	}
	cs := s.containers
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if rec, ok := cs.records[req.ContainerID]; ok {
		if rec.Deleting {
			writeErr(w, http.StatusConflict, fmt.Sprintf("container %s is being deleted: retry after its DEL completes", req.ContainerID))
			return
		}
		if rec.NetNS != req.NetNS || rec.IfName != req.IfName {
			writeErr(w, http.StatusConflict, fmt.Sprintf("container %s is already attached (netns %s, %s): a container ID may be added once", req.ContainerID, rec.NetNS, rec.IfName))
			return
		}
		if !rec.Committed && rec.Registering {
			s.prepare(*rec)
		}
		writeJSON(w, http.StatusOK, cs.allocation(rec))
		return
	}
	for _, rec := range cs.records {
		if rec.Identity.InstanceGUID == req.Identity.InstanceGUID {
			writeErr(w, http.StatusConflict, fmt.Sprintf("instance %s is already attached as container %s", req.Identity.InstanceGUID, rec.ContainerID))
			return
		}
	}
	used := map[netip.Addr]bool{}
	for _, rec := range cs.records {
		used[rec.IP] = true
	}
	ip, err := ipam.NextAddr(cs.subnet, used, cs.last)
	if err != nil {
		writeErr(w, http.StatusConflict, err.Error())
		return
	}
	rec := &record{ContainerID: req.ContainerID, IP: ip, NetNS: req.NetNS, IfName: req.IfName, Identity: req.Identity,
		Registering: true, CreatedAt: time.Now().UTC()}
	if err := cs.save(rec); err != nil {
		writeErr(w, http.StatusInternalServerError, "save container record: "+err.Error())
		return
	}
	cs.records[rec.ContainerID] = rec
	cs.last = ip
	os.WriteFile(filepath.Join(cs.dir, "last-ip"), []byte(ip.String()), 0o600)
	s.log.Info("allocated", "container", rec.ContainerID, "ip", ip, "app", req.Identity.AppGUID, "instance", req.Identity.InstanceGUID)
	s.prepare(*rec)
	writeJSON(w, http.StatusOK, cs.allocation(rec))
}

func (s *socketServer) commit(w http.ResponseWriter, r *http.Request) {
	var req api.CommitRequest
	if !readJSON(w, r, &req) {
		return
	}
	start := time.Now()
	cs := s.containers
	cs.mu.Lock()
	rec, ok := cs.records[r.PathValue("id")]
	if !ok || rec.Deleting {
		cs.mu.Unlock()
		writeErr(w, http.StatusNotFound, "no allocation for container "+r.PathValue("id"))
		return
	}
	// Started at the allocation, it ran while the plugin wired the
	// container; else (an agent restarted since, a commit retried after a
	// failed registration) it starts now.
	p := s.preps[rec.ContainerID]
	if p == nil {
		if !rec.Registering && !rec.Committed {
			rec.Registering = true // before the controller may hear of it
			if err := cs.save(rec); err != nil {
				cs.mu.Unlock()
				writeErr(w, http.StatusInternalServerError, "save container record: "+err.Error())
				return
			}
		}
		p = s.prepare(*rec)
	}
	snapshot := *rec
	cs.mu.Unlock()
	<-p.done
	waited := time.Since(start)
	if p.err != nil {
		cs.mu.Lock()
		if s.preps[snapshot.ContainerID] == p {
			delete(s.preps, snapshot.ContainerID) // a retried commit registers again
		}
		cs.mu.Unlock()
		status := http.StatusUnprocessableEntity
		if errors.Is(p.err, api.ErrUnreachable) {
			status = http.StatusServiceUnavailable
		}
		s.log.Warn("register instance", "container", snapshot.ContainerID, "err", p.err)
		writeErr(w, status, "register instance with the controller: "+p.err.Error())
		return
	}
	cs.mu.Lock()
	if rec, ok = cs.records[snapshot.ContainerID]; !ok || rec.Deleting {
		cs.mu.Unlock()
		writeErr(w, http.StatusNotFound, "container "+snapshot.ContainerID+" was deleted meanwhile")
		return
	}
	rec.Committed, rec.HostVeth = true, req.HostVeth
	if err := cs.save(rec); err != nil {
		cs.mu.Unlock()
		writeErr(w, http.StatusInternalServerError, "save container record: "+err.Error())
		return
	}
	if s.preps[snapshot.ContainerID] == p {
		delete(s.preps, snapshot.ContainerID)
	}
	alloc := cs.allocation(rec)
	snapshot = *rec
	cs.mu.Unlock()
	if req.HostVeth != "" && req.HostVeth != dataplane.HostVethName(snapshot.IP) {
		// The table was made for the veth named for the address.
		s.refreshPolicy(r.Context())
	}
	// Its certificate was issued during the preparation: this serves it on
	// the TLS port, which needs the container's address in place.
	s.certs.attach(r.Context(), snapshot)
	// Each step's time goes into the log line, so that an operator asking
	// why a container start was slow sees which step was: the preparation's
	// steps counted from the allocation, the commit's wait for them and
	// its whole time.
	s.log.Info("attached", "container", snapshot.ContainerID, "ip", snapshot.IP, "instance", snapshot.Identity.InstanceGUID,
		"register", p.register.Round(time.Microsecond), "policy", p.policy.Round(time.Microsecond),
		"certificate", p.certificate.Round(time.Microsecond), "wait", waited.Round(time.Microsecond),
		"serve", time.Since(start.Add(waited)).Round(time.Microsecond), "took", time.Since(start).Round(time.Microsecond),
		"since_allocated", time.Since(p.start).Round(time.Microsecond))
	writeJSON(w, http.StatusOK, alloc)
}

func (s *socketServer) get(w http.ResponseWriter, r *http.Request) {
	cs := s.containers
	cs.mu.Lock()
	defer cs.mu.Unlock()
	rec, ok := cs.records[r.PathValue("id")]
	if !ok || rec.Deleting {
		writeErr(w, http.StatusNotFound, "no container "+r.PathValue("id"))
		return
	}
	writeJSON(w, http.StatusOK, cs.allocation(rec))
}

func (s *socketServer) del(w http.ResponseWriter, r *http.Request) {
	if !s.release(r.Context(), r.PathValue("id")) {
		writeErr(w, http.StatusNotFound, "no container "+r.PathValue("id"))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *socketServer) gc(w http.ResponseWriter, r *http.Request) {
	var req api.GCRequest
	if !readJSON(w, r, &req) {
		return
	}
	valid := map[string]bool{}
	for _, id := range req.Valid {
		valid[id] = true
	}
	// As the specification asks, a failure does not stop the collection:
	// every stale container that can be released is, and the failures are
	// reported together.
	n := 0
	var failed []string
	for _, rec := range s.containers.list() {
		if valid[rec.ContainerID] {
			continue
		}
		released, err := s.collect(r.Context(), rec.ContainerID)
		if err != nil {
			s.log.Warn("cni gc", "container", rec.ContainerID, "err", err)
			failed = append(failed, err.Error())
		}
		if released {
			n++
		}
	}
	s.log.Info("cni gc", "released", n, "failed", len(failed), "valid", len(req.Valid))
	if len(failed) > 0 {
		writeErr(w, http.StatusInternalServerError, fmt.Sprintf("released %d stale containers, but not %d: %s", n, len(failed), strings.Join(failed, "; ")))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *socketServer) status(w http.ResponseWriter, r *http.Request) {
	st := s.agentStatus()
	code := http.StatusOK
	if !st.Ready {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, st)
}

// release forgets a container: the controller is told (now, or by the
// retry loop if it is unreachable, keeping the address reserved until
// then). It reports whether the container was known.
func (s *socketServer) release(ctx context.Context, id string) bool {
	cs := s.containers
	cs.mu.Lock()
	rec, ok := cs.records[id]
	if !ok {
		cs.mu.Unlock()
		return false
	}
	rec.Deleting = true
	p := s.preps[id]
	delete(s.preps, id)
	if p != nil {
		// Its registration must not reach the controller after the
		// deregistration, nor its certificate files outlive detach.
		cs.mu.Unlock()
		<-p.done
		cs.mu.Lock()
		if cs.records[id] != rec { // released meanwhile by another call
			cs.mu.Unlock()
			return true
		}
	}
	cs.save(rec)
	snapshot := *rec
	cs.mu.Unlock()
	s.refreshPolicy(ctx) // its address is no longer a local instance's
	s.certs.detach(snapshot.Identity.InstanceGUID)
	s.deregister(ctx, snapshot)
	return true
}

// collect releases a container the runtime no longer has (CNI GC). No DEL
// will come for it, so collect first removes its wiring, as DEL does: a
// host veth left behind would keep its routes and make the next ADD that
// is given the address fail. The record reserves the address until then,
// so the veth named for the address is this container's and not another's.
// When the wiring cannot be removed the record, and its address, stay. It
// reports whether the container was released.
func (s *socketServer) collect(ctx context.Context, id string) (bool, error) {
	cs := s.containers
	cs.mu.Lock()
	rec, ok := cs.records[id]
	if !ok {
		cs.mu.Unlock()
		return false, nil
	}
	err := dataplane.DelContainer(dataplane.Container{HostNS: s.nsPath, NetNS: rec.NetNS, IfName: rec.IfName, IP: rec.IP})
	cs.mu.Unlock()
	if err != nil {
		return false, fmt.Errorf("container %s: remove its wiring: %w", id, err)
	}
	return s.release(ctx, id), nil
}

// deregisterWait bounds one attempt to tell the controller a container is
// gone: a CNI DEL while no controller answers (the cell cut off) returns
// well within the plugin's wait for the agent (10 s), and the retry loop
// finishes the deregistration once a controller answers.
const deregisterWait = 3 * time.Second

// deregister tells the controller a container is gone and then drops its
// record; on failure the record stays (Deleting) for the retry loop.
func (s *socketServer) deregister(ctx context.Context, rec record) {
	if rec.Committed || rec.Registering {
		ctx, cancel := context.WithTimeout(ctx, deregisterWait)
		err := s.registry.DeregisterInstance(ctx, rec.Identity.InstanceGUID)
		cancel()
		if err != nil {
			s.log.Warn("deregister instance: will retry", "container", rec.ContainerID, "err", err)
			return
		}
	}
	cs := s.containers
	cs.mu.Lock()
	cs.remove(rec.ContainerID)
	cs.mu.Unlock()
	s.log.Info("released", "container", rec.ContainerID, "ip", rec.IP)
}

// retryReleases finishes deregistrations that failed while the controller
// was unreachable.
func (s *socketServer) retryReleases(ctx context.Context) {
	for _, rec := range s.containers.list() {
		if rec.Deleting {
			s.deregister(ctx, rec)
		}
	}
}

// listenUnix serves h on a unix socket at path, owner-only.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}
