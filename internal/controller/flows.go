package controller

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/policy"
	"github.com/trellis-c2c/trellis/internal/store"
)

// maxFlowBatch bounds one cell report of flows.
const maxFlowBatch = 5000

// reportFlows takes a cell's batch of logged connection attempts.
func (s *Server) reportFlows(w http.ResponseWriter, r *http.Request) {
	c := cellFrom(r.Context())
	var req api.FlowEvents
	if !readV3(w, r, &req) {
		return
	}
	if len(req.Events) > maxFlowBatch {
		writeNetError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("at most %d events per report", maxFlowBatch))
		return
	}
	fs := make([]store.Flow, 0, len(req.Events))
	for _, e := range req.Events {
		if e.Verdict != "allowed" && e.Verdict != "denied" {
			writeNetError(w, http.StatusBadRequest, fmt.Sprintf("invalid verdict %q: allowed or denied", e.Verdict))
			return
		}
		fs = append(fs, store.Flow{At: e.Time, CellGUID: c.GUID, Verdict: e.Verdict, Protocol: e.Protocol,
			SrcIP: e.SrcIP, SrcPort: e.SrcPort, DstIP: e.DstIP, DstPort: e.DstPort, SrcApp: e.SrcApp, SrcInstance: e.SrcInstance,
			DstApp: e.DstApp, DstInstance: e.DstInstance, Reason: e.Reason})
	}
	if err := s.store.AddFlows(r.Context(), fs); err != nil {
		s.log.Error("record flows", "cell", c.Name, "err", err)
		writeNetError(w, http.StatusInternalServerError, "database write failed")
		return
	}
	if req.Suppressed > 0 {
		s.log.Info("flow log rate limit suppressed events", "cell", c.Name, "suppressed", req.Suppressed)
	}
	w.WriteHeader(http.StatusNoContent)
}

// listFlows answers GET /trellis/v1/flows?app_guids=&verdict=&after=&wait=:
// the flows of apps the caller may see, newest last; with wait, a long
// poll for flows after `after` (trellis flows --follow).
func (s *Server) listFlows(w http.ResponseWriter, r *http.Request) {
	p := principalFrom(r.Context())
	q := r.URL.Query()
	f := store.FlowFilter{AppGUIDs: query(r, "app_guids"), Verdict: q.Get("verdict")}
	if f.Verdict != "" && f.Verdict != "allowed" && f.Verdict != "denied" {
		writeNetError(w, http.StatusBadRequest, fmt.Sprintf("invalid verdict %q: allowed or denied", f.Verdict))
		return
	}
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			writeNetError(w, http.StatusBadRequest, fmt.Sprintf("invalid after %q: a flow id", v))
			return
		}
		f.After = n
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			writeNetError(w, http.StatusBadRequest, fmt.Sprintf("invalid limit %q: 1 to 10000", v))
			return
		}
		f.Limit = n
	}
	wait := time.Duration(0)
	if v := q.Get("wait"); v != "" {
		secs, err := strconv.Atoi(v)
		if err != nil || secs < 0 || secs > 30 {
			writeNetError(w, http.StatusBadRequest, fmt.Sprintf("invalid wait %q: 0 to 30 seconds", v))
			return
		}
		wait = time.Duration(secs) * time.Second
	}
	if !p.admin() {
		mine, err := s.appsOfCaller(r, p)
		if err != nil {
			s.storeError(w, "list flows", err)
			return
		}
		if len(f.AppGUIDs) == 0 {
			f.AppGUIDs = mine
		} else {
			f.AppGUIDs = intersect(f.AppGUIDs, mine)
		}
		if len(f.AppGUIDs) == 0 {
			writeJSON(w, http.StatusOK, list[api.FlowEvent](r, nil))
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	for {
		fs, err := s.store.Flows(r.Context(), f)
		if err != nil {
			s.storeError(w, "list flows", err)
			return
		}
		if len(fs) > 0 || wait == 0 || ctx.Err() != nil {
			s.writeFlows(w, r, fs)
			return
		}
		s.store.WaitFlows(ctx)
	}
}

func (s *Server) writeFlows(w http.ResponseWriter, r *http.Request, fs []store.Flow) {
	writeJSON(w, http.StatusOK, list(r, s.flowEvents(r.Context(), fs)))
}

// flowEvents are fs as the API shows them, with the apps' and cells' names.
func (s *Server) flowEvents(ctx context.Context, fs []store.Flow) []api.FlowEvent {
	names := map[string]string{}
	var guids []string
	for _, f := range fs {
		for _, g := range []string{f.SrcApp, f.DstApp} {
			if g != "" && !slices.Contains(guids, g) {
				guids = append(guids, g)
			}
		}
	}
	if len(guids) > 0 {
		apps, err := s.store.Apps(ctx, store.AppFilter{GUIDs: guids})
		if err == nil {
			for _, a := range apps {
				names[a.GUID] = a.Name
			}
		}
	}
	cells := map[string]string{}
	if cs, err := s.store.Cells(ctx, store.CellFilter{}); err == nil {
		for _, c := range cs {
			cells[c.GUID] = c.Name
		}
	}
	out := make([]api.FlowEvent, len(fs))
	for i, f := range fs {
		out[i] = api.FlowEvent{ID: f.ID, Time: f.At, Cell: cells[f.CellGUID], Verdict: f.Verdict, Protocol: f.Protocol,
			SrcIP: f.SrcIP, SrcPort: f.SrcPort, DstIP: f.DstIP, DstPort: f.DstPort,
			SrcApp: f.SrcApp, SrcAppName: names[f.SrcApp], SrcInstance: f.SrcInstance,
			DstApp: f.DstApp, DstAppName: names[f.DstApp], DstInstance: f.DstInstance, Reason: f.Reason}
	}
	return out
}

// explain answers GET /trellis/v1/explain?source=&destination=&protocol=&port=.
func (s *Server) explain(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Has("to") { // egress: security groups (security_groups.go)
		s.explainEgress(w, r)
		return
	}
	proto := q.Get("protocol")
	if proto == "" {
		proto = policy.TCP
	}
	if proto != policy.TCP && proto != policy.UDP {
		writeNetError(w, http.StatusBadRequest, "invalid protocol: specify either udp or tcp")
		return
	}
	port, err := strconv.Atoi(q.Get("port"))
	if err != nil || port < 1 || port > 65535 {
		writeNetError(w, http.StatusBadRequest, fmt.Sprintf("invalid port %q: must be in range 1-65535", q.Get("port")))
		return
	}
	src, dst := q.Get("source"), q.Get("destination")
	apps, err := s.store.Apps(r.Context(), store.AppFilter{GUIDs: []string{src, dst}})
	if err != nil {
		s.storeError(w, "explain", err)
		return
	}
	p := principalFrom(r.Context())
	byGUID := map[string]store.App{}
	for _, a := range apps {
		if p.inSpace(a.SpaceGUID) {
			byGUID[a.GUID] = a
		}
	}
	sa, ok1 := byGUID[src]
	da, ok2 := byGUID[dst]
	if !ok1 || !ok2 {
		writeNetError(w, http.StatusForbidden, msgAppsNotFound)
		return
	}
	enforce, err := s.enforcement(r.Context())
	if err != nil {
		s.storeError(w, "explain", err)
		return
	}
	ps, err := s.store.Policies(r.Context(), store.PolicyFilter{SourceIDs: []string{src}, DestIDs: []string{dst}})
	if err != nil {
		s.storeError(w, "explain", err)
		return
	}
	ins, err := s.store.Instances(r.Context(), store.InstanceFilter{AppGUIDs: []string{dst}})
	if err != nil {
		s.storeError(w, "explain", err)
		return
	}
	out := api.Explanation{Enforcement: enforce}
	for _, in := range ins {
		if in.State == store.InstanceRunning {
			out.DestinationInstances++
		}
	}
	var others []string
	for _, sp := range ps {
		ap := api.Policy{Source: api.Source{ID: sp.SourceApp}, Destination: api.Destination{ID: sp.DestApp, Protocol: sp.Protocol, Ports: api.Ports{Start: sp.StartPort, End: sp.EndPort}}}
		if sp.Protocol == proto && sp.StartPort <= port && port <= sp.EndPort && out.Policy == nil {
			out.Policy = &ap
			continue
		}
		out.Others = append(out.Others, ap)
		others = append(others, sp.Protocol+"/"+policy.FormatPorts(sp.StartPort, sp.EndPort))
	}
	switch {
	case out.Policy != nil:
		out.Allowed = true
		out.Reason = fmt.Sprintf("allowed by the policy from %s to %s on %s/%s", sa.Name, da.Name, proto,
			policy.FormatPorts(out.Policy.Destination.Ports.Start, out.Policy.Destination.Ports.End))
	case !enforce:
		out.Allowed = true
		out.Reason = fmt.Sprintf("allowed: network policy enforcement is off for this foundation (there is no policy from %s to %s on %s/%d)", sa.Name, da.Name, proto, port)
	default:
		out.Reason = fmt.Sprintf("no policy from %s to %s on %s/%d", sa.Name, da.Name, proto, port)
		if len(others) > 0 {
			out.Reason += fmt.Sprintf(" (%s may reach %s on %s only)", sa.Name, da.Name, strings.Join(others, ", "))
		}
		out.Reason += fmt.Sprintf(": add one with `trellis add-network-policy %s %s --protocol %s --port %d`", sa.Name, da.Name, proto, port)
	}
	if out.Allowed && out.DestinationInstances == 0 {
		out.Reason += fmt.Sprintf("; %s has no running instance now (the policy applies as soon as one starts)", da.Name)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getEnforcement(w http.ResponseWriter, r *http.Request) {
	on, err := s.enforcement(r.Context())
	if err != nil {
		s.storeError(w, "read enforcement", err)
		return
	}
	writeJSON(w, http.StatusOK, api.Enforcement{Enabled: on})
}

func (s *Server) setEnforcement(w http.ResponseWriter, r *http.Request) {
	var req api.Enforcement
	if !readV3(w, r, &req) {
		return
	}
	if err := s.store.SetSetting(r.Context(), enforcementKey, strconv.FormatBool(req.Enabled)); err != nil {
		s.storeError(w, "set enforcement", err)
		return
	}
	if req.Enabled {
		s.log.Warn("network policy enforcement turned ON for the foundation", "user", principalFrom(r.Context()).user())
	} else {
		s.log.Warn("NETWORK POLICY ENFORCEMENT TURNED OFF for the foundation: every instance can reach every other", "user", principalFrom(r.Context()).user())
	}
	writeJSON(w, http.StatusOK, req)
}
