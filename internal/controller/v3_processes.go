package controller

import (
	"net/http"
	"slices"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/store"
)

// A trellis app has one process, web, whose GUID is the app's (as Cloud
// Foundry gives an app's web process the app's GUID). Its instances are
// trellis's instances of the app: the ones a cell registered run, the
// others (scheduled, or desired and not yet placed) are down or starting.

// webProcess is the process type of every trellis app.
const webProcess = "web"

// ccHealthCheck is a process's health check: trellis checks none, so it
// reports Cloud Foundry's default, the port.
type ccHealthCheck struct {
	Type string `json:"type"`
	Data struct {
		Timeout           *int `json:"timeout"`
		InvocationTimeout *int `json:"invocation_timeout"`
	} `json:"data"`
}

// ccProcessInstance is one instance as embed=process_instances shows it.
type ccProcessInstance struct {
	Index int    `json:"index"`
	State string `json:"state"`
	Since int64  `json:"since"`
}

type ccProcess struct {
	GUID          string        `json:"guid"`
	Type          string        `json:"type"`
	Command       *string       `json:"command"`
	Instances     int           `json:"instances"`
	MemoryInMB    *int          `json:"memory_in_mb"`
	DiskInMB      *int          `json:"disk_in_mb"`
	HealthCheck   ccHealthCheck `json:"health_check"`
	Relationships struct {
		App      api.ToOne   `json:"app"`
		Revision ccNullToOne `json:"revision"`
	} `json:"relationships"`
	CreatedAt time.Time  `json:"created_at"`
	UpdatedAt time.Time  `json:"updated_at"`
	Metadata  ccMetadata `json:"metadata"`
	Links     ccLinks    `json:"links"`
	// ProcessInstances are embedded (embed=process_instances) at the top
	// level, where Cloud Controller puts them and the cf CLI reads them.
	ProcessInstances []ccProcessInstance `json:"process_instances,omitempty"`
}

// ccInstanceUsage is an instance's resource use; trellis measures none.
type ccInstanceUsage struct {
	Time time.Time `json:"time"`
	CPU  float64   `json:"cpu"`
	Mem  uint64    `json:"mem"`
	Disk uint64    `json:"disk"`
}

// ccInstancePort maps an instance's app port on the overlay.
type ccInstancePort struct {
	External         int `json:"external"`
	Internal         int `json:"internal"`
	ExternalTLSProxy int `json:"external_tls_proxy_port"`
	InternalTLSProxy int `json:"internal_tls_proxy_port"`
}

// ccProcessStats is one instance in GET /v3/processes/{guid}/stats.
type ccProcessStats struct {
	Type               string           `json:"type"`
	Index              int              `json:"index"`
	State              string           `json:"state"`
	Host               string           `json:"host"`
	InstanceInternalIP string           `json:"instance_internal_ip"`
	Uptime             int64            `json:"uptime"`
	Since              int64            `json:"since,omitempty"`
	MemQuota           *uint64          `json:"mem_quota"`
	DiskQuota          *uint64          `json:"disk_quota"`
	FDSQuota           *uint64          `json:"fds_quota"`
	IsolationSegment   *string          `json:"isolation_segment"`
	Details            *string          `json:"details"`
	Usage              ccInstanceUsage  `json:"usage"`
	InstancePorts      []ccInstancePort `json:"instance_ports"`
}

// processInstances are an app's instances by index, as stats show them:
// every desired index (running if a cell runs it, else starting, or down
// when the app is stopped) and every other registered instance.
func processInstances(a store.App, ins []store.Instance, now time.Time) []ccProcessStats {
	var out []ccProcessStats
	have := map[int]bool{}
	running := map[int]bool{}
	for _, in := range ins {
		if in.State == store.InstanceRunning && in.IP.IsValid() {
			running[in.Index] = true
		}
	}
	for _, in := range ins {
		if running[in.Index] && (in.State != store.InstanceRunning || !in.IP.IsValid()) {
			// The index runs elsewhere: this one is not an instance of
			// its own (a managed placeholder the running one stands for).
			continue
		}
		st := ccProcessStats{Type: webProcess, Index: in.Index, State: in.State, Usage: ccInstanceUsage{Time: now}}
		if in.State == store.InstanceRunning && in.IP.IsValid() {
			st.InstanceInternalIP = in.IP.String()
			st.Host = in.IP.String()
			st.Uptime = int64(now.Sub(in.UpdatedAt) / time.Second)
			st.Since = in.UpdatedAt.Unix()
			st.InstancePorts = []ccInstancePort{{External: appPort, Internal: appPort, ExternalTLSProxy: 61443, InternalTLSProxy: 61443}}
		} else {
			st.State = "STARTING"
			if a.State != store.AppStarted {
				st.State = store.InstanceDown
			}
		}
		if st.InstancePorts == nil {
			st.InstancePorts = []ccInstancePort{}
		}
		have[in.Index] = true
		out = append(out, st)
	}
	for i := range a.Instances {
		if have[i] {
			continue
		}
		st := ccProcessStats{Type: webProcess, Index: i, State: "STARTING", Usage: ccInstanceUsage{Time: now}, InstancePorts: []ccInstancePort{}}
		if a.State != store.AppStarted {
			st.State = store.InstanceDown
		}
		out = append(out, st)
	}
	slices.SortStableFunc(out, func(x, y ccProcessStats) int { return x.Index - y.Index })
	if out == nil {
		out = []ccProcessStats{}
	}
	return out
}

// processOf is an app's web process; with instances, embedded.
func processOf(r *http.Request, a store.App, embed bool, ins []store.Instance) ccProcess {
	g := "/v3/processes/" + a.GUID
	p := ccProcess{GUID: a.GUID, Type: webProcess, Instances: a.Instances, CreatedAt: a.CreatedAt, UpdatedAt: a.UpdatedAt,
		HealthCheck: ccHealthCheck{Type: "port"}, Metadata: emptyMetadata(),
		Links: links(r, "self", g, "scale", g+"/actions/scale", "app", "/v3/apps/"+a.GUID,
			"space", "/v3/spaces/"+a.SpaceGUID, "stats", g+"/stats")}
	p.Relationships.App = api.ToOne{Data: api.Ref{GUID: a.GUID}}
	if a.State != store.AppStarted {
		// Cloud Foundry keeps the desired count of a stopped app.
		p.Instances = a.Instances
	}
	if embed {
		for _, st := range processInstances(a, ins, time.Now()) {
			p.ProcessInstances = append(p.ProcessInstances, ccProcessInstance{Index: st.Index, State: st.State, Since: st.Since})
		}
	}
	return p
}

// embeds reports whether the request asks for embed=process_instances; any
// other embed is a bad query, as on Cloud Controller.
func embeds(w http.ResponseWriter, r *http.Request) (embed, ok bool) {
	for _, e := range query(r, "embed") {
		if e != "process_instances" {
			writeV3BadQuery(w, "Embed has an invalid value: valid value is 'process_instances'")
			return false, false
		}
		embed = true
	}
	return embed, true
}

// instancesOf reads the instances of apps, grouped by app.
func (s *Server) instancesOf(r *http.Request, apps []store.App) (map[string][]store.Instance, error) {
	out := map[string][]store.Instance{}
	if len(apps) == 0 {
		return out, nil
	}
	guids := make([]string, len(apps))
	for i, a := range apps {
		guids[i] = a.GUID
	}
	ins, err := s.store.Instances(r.Context(), store.InstanceFilter{AppGUIDs: guids})
	if err != nil {
		return nil, err
	}
	for _, in := range ins {
		out[in.AppGUID] = append(out[in.AppGUID], in)
	}
	return out, nil
}

// listProcesses answers GET /v3/processes: the web process of every app
// the caller sees, filtered by app_guids, space_guids, guids and types.
func (s *Server) listProcesses(w http.ResponseWriter, r *http.Request) {
	embed, ok := embeds(w, r)
	if !ok {
		return
	}
	for _, t := range query(r, "types") {
		if t != webProcess {
			writeList[ccProcess](w, r, nil)
			return
		}
	}
	spaces, ok := restrict(principalFrom(r.Context()), query(r, "space_guids"))
	if !ok {
		writeList[ccProcess](w, r, nil)
		return
	}
	guids := append(query(r, "guids"), query(r, "app_guids")...)
	if len(query(r, "guids")) > 0 && len(query(r, "app_guids")) > 0 {
		guids = intersect(query(r, "guids"), query(r, "app_guids"))
		if len(guids) == 0 {
			writeList[ccProcess](w, r, nil)
			return
		}
	}
	apps, err := s.store.Apps(r.Context(), store.AppFilter{GUIDs: guids, SpaceGUIDs: spaces})
	if err != nil {
		s.storeError(w, "list processes", err)
		return
	}
	s.writeProcesses(w, r, apps, embed)
}

func (s *Server) writeProcesses(w http.ResponseWriter, r *http.Request, apps []store.App, embed bool) {
	var ins map[string][]store.Instance
	if embed {
		var err error
		if ins, err = s.instancesOf(r, apps); err != nil {
			s.storeError(w, "list processes", err)
			return
		}
	}
	out := make([]ccProcess, len(apps))
	for i, a := range apps {
		out[i] = processOf(r, a, embed, ins[a.GUID])
	}
	writeList(w, r, out)
}

// visibleProcess loads the app of a process the caller may see, or
// answers 404 as Cloud Controller does.
func (s *Server) visibleProcess(w http.ResponseWriter, r *http.Request) (store.App, bool) {
	apps, err := s.store.Apps(r.Context(), store.AppFilter{GUIDs: []string{r.PathValue("guid")}})
	if err != nil {
		s.storeError(w, "get process", err)
		return store.App{}, false
	}
	if len(apps) == 0 || !principalFrom(r.Context()).inSpace(apps[0].SpaceGUID) {
		writeV3Error(w, http.StatusNotFound, "Process not found")
		return store.App{}, false
	}
	return apps[0], true
}

// appProcess loads the app of /v3/apps/{guid}/processes/{type}, or answers
// 404: the app's, or the process's when the type is not web.
func (s *Server) appProcess(w http.ResponseWriter, r *http.Request) (store.App, bool) {
	a, ok := s.visibleApp(w, r, r.PathValue("guid"))
	if !ok {
		return a, false
	}
	if r.PathValue("type") != webProcess {
		writeV3Error(w, http.StatusNotFound, "Process not found")
		return a, false
	}
	return a, true
}

func (s *Server) writeProcess(w http.ResponseWriter, r *http.Request, a store.App) {
	embed, ok := embeds(w, r)
	if !ok {
		return
	}
	var ins map[string][]store.Instance
	if embed {
		var err error
		if ins, err = s.instancesOf(r, []store.App{a}); err != nil {
			s.storeError(w, "get process", err)
			return
		}
	}
	writeJSON(w, http.StatusOK, processOf(r, a, embed, ins[a.GUID]))
}

func (s *Server) writeStats(w http.ResponseWriter, r *http.Request, a store.App) {
	ins, err := s.instancesOf(r, []store.App{a})
	if err != nil {
		s.storeError(w, "get process stats", err)
		return
	}
	cells, err := s.store.Cells(r.Context(), store.CellFilter{})
	if err != nil {
		s.storeError(w, "get process stats", err)
		return
	}
	hosts := map[string]string{}
	for _, c := range cells {
		hosts[c.GUID] = c.UnderlayIP.String()
	}
	stats := processInstances(a, ins[a.GUID], time.Now())
	for i := range stats {
		for _, in := range ins[a.GUID] {
			if in.Index == stats[i].Index && in.IP.IsValid() && in.IP.String() == stats[i].InstanceInternalIP && hosts[in.CellGUID] != "" {
				stats[i].Host = hosts[in.CellGUID]
			}
		}
	}
	writeJSON(w, http.StatusOK, struct {
		Resources []ccProcessStats `json:"resources"`
	}{stats})
}

func (s *Server) getProcess(w http.ResponseWriter, r *http.Request) {
	if a, ok := s.visibleProcess(w, r); ok {
		s.writeProcess(w, r, a)
	}
}

func (s *Server) getProcessStats(w http.ResponseWriter, r *http.Request) {
	if a, ok := s.visibleProcess(w, r); ok {
		s.writeStats(w, r, a)
	}
}

func (s *Server) listAppProcesses(w http.ResponseWriter, r *http.Request) {
	embed, ok := embeds(w, r)
	if !ok {
		return
	}
	if a, ok := s.visibleApp(w, r, r.PathValue("guid")); ok {
		s.writeProcesses(w, r, []store.App{a}, embed)
	}
}

func (s *Server) getAppProcess(w http.ResponseWriter, r *http.Request) {
	if a, ok := s.appProcess(w, r); ok {
		s.writeProcess(w, r, a)
	}
}

func (s *Server) getAppProcessStats(w http.ResponseWriter, r *http.Request) {
	if a, ok := s.appProcess(w, r); ok {
		s.writeStats(w, r, a)
	}
}

// listProcessSidecars answers GET /v3/processes/{guid}/sidecars: trellis
// runs no sidecars.
func (s *Server) listProcessSidecars(w http.ResponseWriter, r *http.Request) {
	if _, ok := s.visibleProcess(w, r); ok {
		writeList[struct{}](w, r, nil)
	}
}
