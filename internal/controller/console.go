package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/console"
	"github.com/trellis-c2c/trellis/internal/store"
)

// consoleRoutes registers the web console (issue 20) and the API only the
// console uses: the live flow stream, who the caller is, the cells'
// revisions and the instances' certificates.
func (s *Server) consoleRoutes() {
	m := s.handle
	// Static files only: no data, so no token (the page asks for one).
	m("GET "+console.Path, console.Handler().ServeHTTP)
	m("GET /trellis/v1/flows/stream", s.requireAuth(writeNetError, anyScope, s.streamFlows))
	m("GET /trellis/v1/console/me", s.requireAuth(writeNetError, anyScope, s.consoleMe))
	m("GET /trellis/v1/console/cells", s.requireAuth(writeNetError, adminScope, s.consoleCells))
	m("GET /trellis/v1/console/apps/{guid}/instances", s.requireAuth(writeNetError, anyScope, s.consoleInstances))
}

// consoleFacts are what this controller saw that the store does not keep
// and the console shows: the revision each cell last said it applied (the
// `after` of its long poll) and when, and the expiry of the certificate
// last signed for each instance. They are this controller's own
// observations: another controller of the foundation, or this one after a
// restart, may not have seen them ("unknown" until the next poll or
// signature).
type consoleFacts struct {
	mu      sync.Mutex
	applied map[string]cellApplied // cell GUID →
	certs   map[string]time.Time   // instance GUID → NotAfter
}

type cellApplied struct {
	rev int64
	at  time.Time
}

// polled records that cell said it applied rev (a poll with ?after=rev).
func (c *consoleFacts) polled(cell string, rev int64) {
	if rev < 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.applied == nil {
		c.applied = map[string]cellApplied{}
	}
	c.applied[cell] = cellApplied{rev: rev, at: time.Now()}
}

// certified records the expiry of the certificate signed for instance.
func (c *consoleFacts) certified(instance string, notAfter time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.certs == nil {
		c.certs = map[string]time.Time{}
	}
	c.certs[instance] = notAfter
}

func (c *consoleFacts) appliedOf(cell string) (cellApplied, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a, ok := c.applied[cell]
	return a, ok
}

func (c *consoleFacts) certOf(instance string) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.certs[instance]
	return t, ok
}

// desiredRevision is the revision of cell's compiled desired state, if the
// feed has compiled one.
func (f *cellFeed) desiredRevision(cell string) (int64, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.cells[cell]
	if e == nil {
		return 0, false
	}
	return e.rev, true
}

// ConsoleMe is who the caller is, for the console to know which spaces it
// may change.
type ConsoleMe struct {
	Name   string   `json:"name"`
	Scope  string   `json:"scope"`
	Admin  bool     `json:"admin"`
	Spaces []string `json:"spaces"`
}

func (s *Server) consoleMe(w http.ResponseWriter, r *http.Request) {
	p := principalFrom(r.Context())
	spaces := p.Spaces
	if spaces == nil {
		spaces = []string{}
	}
	writeJSON(w, http.StatusOK, ConsoleMe{Name: p.user(), Scope: p.Scope, Admin: p.admin(), Spaces: spaces})
}

// ConsoleCell is a cell as the console's cells panel shows it.
type ConsoleCell struct {
	api.Cell
	Enforcement bool `json:"enforcement"`
	// DesiredRevision is the revision of the cell's compiled desired
	// state; AppliedRevision the one the cell last said it applied, at
	// AppliedAt (both absent when this controller has not seen them).
	DesiredRevision *int64     `json:"desired_revision,omitempty"`
	AppliedRevision *int64     `json:"applied_revision,omitempty"`
	AppliedAt       *time.Time `json:"applied_at,omitempty"`
}

func (s *Server) consoleCells(w http.ResponseWriter, r *http.Request) {
	cells, err := s.store.Cells(r.Context(), store.CellFilter{})
	if err != nil {
		s.storeError(w, "list cells", err)
		return
	}
	enforce, err := s.enforcement(r.Context())
	if err != nil {
		s.storeError(w, "list cells", err)
		return
	}
	out := make([]ConsoleCell, len(cells))
	for i, c := range cells {
		out[i] = ConsoleCell{Cell: cellJSON(c), Enforcement: enforce}
		if rev, ok := s.feed.desiredRevision(c.GUID); ok {
			out[i].DesiredRevision = &rev
		}
		if a, ok := s.console.appliedOf(c.GUID); ok {
			at := a.at.UTC()
			out[i].AppliedRevision, out[i].AppliedAt = &a.rev, &at
		}
	}
	writeJSON(w, http.StatusOK, list(r, out))
}

// ConsoleInstance is an instance as the console's app panel shows it.
type ConsoleInstance struct {
	api.Instance
	// CertNotAfter is when the certificate this controller last signed for
	// the instance expires (absent if it signed none).
	CertNotAfter *time.Time `json:"cert_not_after,omitempty"`
}

func (s *Server) consoleInstances(w http.ResponseWriter, r *http.Request) {
	guid := r.PathValue("guid")
	apps, err := s.store.Apps(r.Context(), store.AppFilter{GUIDs: []string{guid}})
	if err != nil {
		s.storeError(w, "list instances", err)
		return
	}
	if len(apps) != 1 || !principalFrom(r.Context()).inSpace(apps[0].SpaceGUID) {
		writeNetError(w, http.StatusNotFound, "app not found")
		return
	}
	ins, err := s.apiInstances(r.Context(), store.InstanceFilter{AppGUIDs: []string{guid}})
	if err != nil {
		s.storeError(w, "list instances", err)
		return
	}
	out := make([]ConsoleInstance, len(ins))
	for i, in := range ins {
		out[i].Instance = in
		if t, ok := s.console.certOf(in.GUID); ok {
			t = t.UTC()
			out[i].CertNotAfter = &t
		}
	}
	writeJSON(w, http.StatusOK, list(r, out))
}

// Limits of the flow stream.
const (
	// defaultStreamSeconds and maxStreamSeconds bound how long one stream
	// stays open (the console reconnects with ?after=): a long-lived
	// connection is re-authorized at least this often.
	defaultStreamSeconds = 300
	maxStreamSeconds     = 3600
	// streamRecheck is how often a stream checks its token again (a
	// revoked or expired token ends it) and rereads the caller's apps.
	streamRecheck = 5 * time.Second
	// streamKeepalive is the most a stream stays silent: a comment line
	// keeps proxies and the browser from timing it out.
	streamKeepalive = 15 * time.Second
	// streamBacklog is how far back a stream without ?after starts.
	streamBacklog = time.Minute
)

// streamFlows answers GET /trellis/v1/flows/stream?after=&seconds= with
// server-sent events: each flow reported by a cell (event "flow", data
// an api.FlowEvent, id the flow's id) from the last minute on (or after
// the flow ?after), as cells report them, for ?seconds (default 300, at
// most 3600; 0 sends what there is and ends), then an "end" event. A
// network.write caller sees only flows both of whose apps are in its
// spaces; the token is checked again every few seconds, and a revoked or
// expired one ends the stream.
func (s *Server) streamFlows(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	after := int64(-1)
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			writeNetError(w, http.StatusBadRequest, fmt.Sprintf("invalid after %q: a flow id", v))
			return
		}
		after = n
	}
	secs := defaultStreamSeconds
	if v := q.Get("seconds"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > maxStreamSeconds {
			writeNetError(w, http.StatusBadRequest, fmt.Sprintf("invalid seconds %q: 0 to %d", v, maxStreamSeconds))
			return
		}
		secs = n
	}
	p := principalFrom(r.Context())
	since := time.Time{}
	if after < 0 {
		after, since = 0, time.Now().Add(-streamBacklog)
	}
	ctx, cancel := context.WithTimeout(r.Context(), time.Duration(secs)*time.Second)
	defer cancel()

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	// A GET has no body to read: no read deadline of the server's
	// (ReadTimeout) applies to a stream that outlives it.
	rc.SetReadDeadline(time.Time{})
	end := func(reason string) {
		b, _ := json.Marshal(map[string]string{"reason": reason})
		fmt.Fprintf(w, "event: end\ndata: %s\n\n", b)
		rc.Flush()
	}

	var mine []string // the caller's apps (write tokens)
	var checked, wrote time.Time
	for {
		if time.Since(checked) >= streamRecheck {
			if !checked.IsZero() {
				again, err := s.authenticate(r)
				if err != nil || again.Scope != p.Scope || !slices.Equal(again.Spaces, p.Spaces) {
					end("the token is no longer valid")
					return
				}
			}
			if !p.admin() {
				var err error
				if mine, err = s.appsOfCaller(r, p); err != nil {
					s.log.Warn("flow stream: read the caller's apps", "err", err)
					end("database unavailable")
					return
				}
			}
			checked = time.Now()
		}
		var fs []store.Flow
		if p.admin() || len(mine) > 0 {
			var err error
			fs, err = s.store.Flows(r.Context(), store.FlowFilter{After: after, AppGUIDs: mine, Limit: 1000})
			if err != nil {
				if r.Context().Err() != nil {
					return
				}
				s.log.Warn("flow stream: read flows", "err", err)
				end("database unavailable")
				return
			}
		}
		var show []store.Flow
		for _, f := range fs {
			after = max(after, f.ID)
			if f.At.Before(since) {
				continue
			}
			if !p.admin() && !(visibleEnd(mine, f.SrcApp) && visibleEnd(mine, f.DstApp)) {
				continue
			}
			show = append(show, f)
		}
		since = time.Time{} // the backlog only: later flows are shown whatever their cells' clocks say
		for _, ev := range s.flowEvents(r.Context(), show) {
			b, err := json.Marshal(ev)
			if err != nil {
				continue
			}
			fmt.Fprintf(w, "id: %d\nevent: flow\ndata: %s\n\n", ev.ID, b)
			wrote = time.Now()
		}
		if time.Since(wrote) >= streamKeepalive {
			fmt.Fprint(w, ": keepalive\n\n")
			wrote = time.Now()
		}
		if err := rc.Flush(); err != nil {
			return // the client went away
		}
		if ctx.Err() != nil || secs == 0 {
			if r.Context().Err() == nil {
				end("the stream's time is up: reconnect with ?after=")
			}
			return
		}
		s.store.WaitFlows(ctx)
	}
}

// visibleEnd reports whether a flow's end app may be shown to a caller
// whose apps are mine: an end that is no app (empty) or one of mine.
func visibleEnd(mine []string, app string) bool {
	return app == "" || slices.Contains(mine, app)
}
