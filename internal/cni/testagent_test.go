package cni

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"

	"github.com/trellis-c2c/trellis/internal/api"
)

// testAgent is an in-memory test double of the trellis agent's unix-socket
// API (internal/api/agent.go): it allocates from 10.255.1.0/24 and keeps
// records in a map. It stands in for the real agent in this package's tests
// of the plugin; it knows nothing of the controller or the kernel.
type testAgent struct {
	t      *testing.T
	socket string

	mu         sync.Mutex
	records    map[string]api.Allocation
	commits    map[string]api.CommitRequest
	identities map[string]api.Identity
	ready      bool
	reason     string
	failCommit bool
	srv        *http.Server
}

var testSubnet = netip.MustParsePrefix("10.255.1.0/24")

// startTestAgent serves the agent API on a unix socket in a temporary
// directory until the test ends.
func startTestAgent(t *testing.T) *testAgent {
	a := &testAgent{
		t:          t,
		socket:     filepath.Join(t.TempDir(), "agent.sock"),
		records:    map[string]api.Allocation{},
		commits:    map[string]api.CommitRequest{},
		identities: map[string]api.Identity{},
		ready:      true,
	}
	a.start()
	t.Cleanup(a.stop)
	return a
}

// start (re)starts serving on the socket, keeping the records.
func (a *testAgent) start() {
	a.t.Helper()
	l, err := net.Listen("unix", a.socket)
	if err != nil {
		a.t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/containers", a.allocate)
	mux.HandleFunc("POST /v1/containers/{id}/commit", a.commit)
	mux.HandleFunc("GET /v1/containers/{id}", a.get)
	mux.HandleFunc("DELETE /v1/containers/{id}", a.delete)
	mux.HandleFunc("POST /v1/gc", a.gc)
	mux.HandleFunc("GET /v1/status", a.status)
	srv := &http.Server{Handler: mux}
	a.mu.Lock()
	a.srv = srv
	a.mu.Unlock()
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.t.Errorf("test agent: %v", err)
		}
	}()
}

// stop stops serving; the socket file goes with the listener.
func (a *testAgent) stop() {
	a.mu.Lock()
	srv := a.srv
	a.srv = nil
	a.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

func (a *testAgent) record(id string) (api.Allocation, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r, ok := a.records[id]
	return r, ok
}

func (a *testAgent) containerIDs() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var ids []string
	for id := range a.records {
		ids = append(ids, id)
	}
	return ids
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

func (a *testAgent) allocate(w http.ResponseWriter, r *http.Request) {
	var req api.AllocateRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.ContainerID == "" || req.Identity.AppGUID == "" {
		writeError(w, http.StatusBadRequest, "want container_id and identity.app_guid")
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if rec, ok := a.records[req.ContainerID]; ok {
		writeJSON(w, http.StatusOK, rec)
		return
	}
	used := map[string]bool{}
	for _, rec := range a.records {
		used[rec.IP] = true
	}
	// .0 is the cell's VTEP, .1 left alone as in silk; hand out from .2.
	ip := testSubnet.Addr().Next().Next()
	for ; testSubnet.Contains(ip) && used[ip.String()]; ip = ip.Next() {
	}
	if !testSubnet.Contains(ip) {
		writeError(w, http.StatusServiceUnavailable, "subnet full")
		return
	}
	rec := api.Allocation{
		ContainerID: req.ContainerID,
		IP:          ip.String(),
		Subnet:      testSubnet.String(),
		Gateway:     "169.254.0.1",
		MTU:         1450,
		DNS:         []string{"169.254.0.2"},
	}
	a.records[req.ContainerID] = rec
	a.identities[req.ContainerID] = req.Identity
	writeJSON(w, http.StatusCreated, rec)
}

func (a *testAgent) commit(w http.ResponseWriter, r *http.Request) {
	var req api.CommitRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.HostVeth == "" {
		writeError(w, http.StatusBadRequest, "want host_veth")
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	id := r.PathValue("id")
	rec, ok := a.records[id]
	switch {
	case !ok:
		writeError(w, http.StatusNotFound, "no container "+id)
	case a.failCommit:
		writeError(w, http.StatusBadGateway, "controller refused the instance registration")
	default:
		rec.Committed = true
		a.records[id] = rec
		a.commits[id] = req
		writeJSON(w, http.StatusOK, rec)
	}
}

func (a *testAgent) get(w http.ResponseWriter, r *http.Request) {
	rec, ok := a.record(r.PathValue("id"))
	if !ok {
		writeError(w, http.StatusNotFound, "no container "+r.PathValue("id"))
		return
	}
	writeJSON(w, http.StatusOK, rec)
}

func (a *testAgent) delete(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	delete(a.records, r.PathValue("id"))
	delete(a.commits, r.PathValue("id"))
	a.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (a *testAgent) gc(w http.ResponseWriter, r *http.Request) {
	var req api.GCRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Valid == nil {
		writeError(w, http.StatusBadRequest, "want valid_container_ids")
		return
	}
	valid := map[string]bool{}
	for _, id := range req.Valid {
		valid[id] = true
	}
	a.mu.Lock()
	for id := range a.records {
		if !valid[id] {
			delete(a.records, id)
			delete(a.commits, id)
		}
	}
	a.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (a *testAgent) status(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	st := api.AgentStatus{Cell: "cell1", Subnet: testSubnet.String(), Revision: 1, Ready: a.ready, Reason: a.reason}
	a.mu.Unlock()
	writeJSON(w, http.StatusOK, st)
}
