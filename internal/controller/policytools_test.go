package controller

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
)

func (e *env) cellDo(c *http.Client, method, path, body string) int {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.srv.URL+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestCellStatePolicies(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		_, c1 := e.joinCell("cell1", "198.51.100.11")
		space := e.defaultSpace()
		fe, be := e.createApp(space, "frontend"), e.createApp(space, "backend")
		// backend attached on cell1 (as a runtime's instance), frontend too.
		if code := e.cellDo(c1, "PUT", "/trellis/v1/cell/instances/be000000-0000-4000-8000-000000000000", fmt.Sprintf(`{"app_guid":%q,"index":0,"ip":"10.255.1.2"}`, be)); code != 204 {
			t.Fatalf("register backend = %d", code)
		}
		if code := e.cellDo(c1, "PUT", "/trellis/v1/cell/instances/fe000000-0000-4000-8000-000000000000", fmt.Sprintf(`{"app_guid":%q,"index":0,"ip":"10.255.1.3"}`, fe)); code != 204 {
			t.Fatalf("register frontend = %d", code)
		}
		var st api.CellState
		cellGet(t, c1, e.srv.URL+"/trellis/v1/cell/state", &st)
		if !st.Enforce || len(st.Allows) != 0 || len(st.Endpoints) != 2 {
			t.Errorf("state without policies = enforce %v, allows %v, endpoints %v", st.Enforce, st.Allows, st.Endpoints)
		}
		e.must(e.admin, "POST", policiesPath, policyBody([5]any{fe, be, "tcp", 8080, 8090}), 200, nil)
		cellGet(t, c1, e.srv.URL+"/trellis/v1/cell/state", &st)
		want := api.Allow{DestIP: netip.MustParseAddr("10.255.1.2"), SrcTag: 1, Protocol: "tcp", StartPort: 8080, EndPort: 8090}
		if len(st.Allows) != 1 || st.Allows[0] != want {
			t.Errorf("allows = %+v, want [%+v]", st.Allows, want)
		}
		if len(st.Apps) != 2 || st.Apps[0].Tag != 1 || st.Apps[0].Name != "frontend" {
			t.Errorf("tagged apps = %+v", st.Apps)
		}

		// Internal routes and domains are in every cell's state, for its DNS.
		var ds api.List[api.Domain]
		e.must(e.admin, "GET", "/v3/domains?names=apps.internal", "", 200, &ds)
		var rt api.Route
		e.must(e.admin, "POST", "/v3/routes", fmt.Sprintf(`{"host":"backend","relationships":{"domain":{"data":{"guid":%q}},"space":{"data":{"guid":%q}}}}`, ds.Resources[0].GUID, e.defaultSpace()), 201, &rt)
		e.must(e.admin, "POST", "/v3/routes/"+rt.GUID+"/destinations", fmt.Sprintf(`{"destinations":[{"app":{"guid":%q}}]}`, be), 200, nil)
		cellGet(t, c1, e.srv.URL+"/trellis/v1/cell/state", &st)
		if len(st.Domains) != 1 || st.Domains[0] != "apps.internal" || len(st.Routes) != 1 || st.Routes[0].Host != "backend" || st.Routes[0].AppGUIDs[0] != be {
			t.Errorf("state domains %v routes %+v, want apps.internal and backend -> %s", st.Domains, st.Routes, be)
		}

		// explain: allowed by the policy; denied with what is missing.
		var x api.Explanation
		e.must(e.admin, "GET", "/trellis/v1/explain?source="+fe+"&destination="+be+"&protocol=tcp&port=8085", "", 200, &x)
		if !x.Allowed || !strings.Contains(x.Reason, "allowed by the policy from frontend to backend on tcp/8080-8090") {
			t.Errorf("explain 8085 = %+v", x)
		}
		e.must(e.admin, "GET", "/trellis/v1/explain?source="+fe+"&destination="+be+"&protocol=udp&port=8085", "", 200, &x)
		if x.Allowed || !strings.HasPrefix(x.Reason, "no policy from frontend to backend on udp/8085 (frontend may reach backend on tcp/8080-8090 only)") {
			t.Errorf("explain udp 8085 = %+v", x)
		}
		e.must(e.admin, "GET", "/trellis/v1/explain?source="+be+"&destination="+fe+"&port=0", "", 400, nil)

		// The switch: off is in every cell's state and in explain.
		e.must(e.admin, "PUT", "/trellis/v1/enforcement", `{"enabled":false}`, 200, nil)
		cellGet(t, c1, e.srv.URL+"/trellis/v1/cell/state", &st)
		if st.Enforce {
			t.Error("state.enforce after turning enforcement off = true")
		}
		e.must(e.admin, "GET", "/trellis/v1/explain?source="+be+"&destination="+fe+"&port=22", "", 200, &x)
		if !x.Allowed || x.Enforcement || !strings.Contains(x.Reason, "enforcement is off") {
			t.Errorf("explain with enforcement off = %+v", x)
		}
		writer := e.token(ScopeWrite, []string{space})
		e.must(writer, "PUT", "/trellis/v1/enforcement", `{"enabled":true}`, 403, nil)
		e.must(e.admin, "PUT", "/trellis/v1/enforcement", `{"enabled":true}`, 200, nil)

		// Flows: reported by the cell, listed and followed by users.
		var fl api.List[api.FlowEvent]
		e.must(e.admin, "GET", "/trellis/v1/flows", "", 200, &fl)
		if len(fl.Resources) != 0 {
			t.Fatalf("flows before any = %+v", fl.Resources)
		}
		got := make(chan []api.FlowEvent, 1)
		go func() {
			var l api.List[api.FlowEvent]
			e.must(e.admin, "GET", "/trellis/v1/flows?verdict=denied&wait=10", "", 200, &l)
			got <- l.Resources
		}()
		report := fmt.Sprintf(`{"events":[{"time":"2026-11-25T10:00:00Z","verdict":"denied","protocol":"tcp","src_ip":"10.255.1.2","src_port":40000,"dst_ip":"10.255.1.3","dst_port":8080,"src_app":%q,"dst_app":%q,"reason":"no policy from backend to frontend on tcp/8080"},
			{"time":"2026-11-25T10:00:01Z","verdict":"allowed","protocol":"tcp","src_ip":"10.255.1.3","src_port":40001,"dst_ip":"10.255.1.2","dst_port":8080,"src_app":%q,"dst_app":%q,"reason":"policy frontend to backend tcp/8080-8090"}]}`, be, fe, fe, be)
		if code := e.cellDo(c1, "POST", "/trellis/v1/cell/flows", report); code != 204 {
			t.Fatalf("report flows = %d", code)
		}
		select {
		case fs := <-got:
			if len(fs) != 1 || fs[0].Verdict != "denied" || fs[0].SrcAppName != "backend" || fs[0].DstAppName != "frontend" || fs[0].Cell != "cell1" {
				t.Errorf("followed denied flows = %+v", fs)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("flows long poll did not wake")
		}
		e.must(e.admin, "GET", "/trellis/v1/flows?app_guids="+fe, "", 200, &fl)
		if len(fl.Resources) != 2 {
			t.Errorf("flows of frontend = %d, want 2", len(fl.Resources))
		}
		e.must(e.admin, "GET", fmt.Sprintf("/trellis/v1/flows?after=%d", fl.Resources[1].ID), "", 200, &fl)
		if len(fl.Resources) != 0 {
			t.Errorf("flows after the last = %+v", fl.Resources)
		}
		e.must(e.admin, "GET", "/trellis/v1/flows?verdict=maybe", "", 400, nil)
		// A cell cannot report garbage; users cannot report at all.
		if code := e.cellDo(c1, "POST", "/trellis/v1/cell/flows", `{"events":[{"verdict":"perhaps"}]}`); code != 400 {
			t.Errorf("bad verdict report = %d", code)
		}
		e.must(e.admin, "POST", "/trellis/v1/cell/flows", report, 401, nil)
	})
}
