package controller

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/trellis-c2c/trellis/internal/api"
)

// TestSecurityGroupsAPI walks the v3 security group API on both engines:
// CF's validation messages (each a 422 naming the rule and the field, with
// nothing changed), create, bind, list filters, what a write token sees,
// update, unbind, delete, and the egress rules a cell is sent.
func TestSecurityGroupsAPI(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		space, other := e.defaultSpace(), e.createSpace("other")
		app := e.createApp(space, "backend")
		for _, c := range []struct{ name, rules, want string }{
			{"bad CIDR", `[{"protocol":"tcp","destination":"10.0.0.0/33","ports":"80"}]`, "Rules[0]: destination must be a valid CIDR"},
			{"ports reversed", `[{"protocol":"tcp","destination":"10.0.0.1","ports":"443"},{"protocol":"tcp","destination":"10.0.0.1","ports":"9000-8000"}]`, "Rules[1]: ports range 9000-8000 is reversed"},
			{"ports on icmp", `[{"protocol":"icmp","destination":"10.0.0.1","ports":"80","type":0,"code":0}]`, "Rules[0]: ports are not allowed for protocols of type ICMP"},
			{"unknown protocol", `[{"protocol":"gre","destination":"10.0.0.1"}]`, "Rules[0]: protocol must be 'tcp', 'udp', 'icmp', or 'all'"},
		} {
			rev := e.revision()
			code, got := e.do(e.admin, "POST", securityGroupsPath, fmt.Sprintf(`{"name":"bad","rules":%s}`, c.rules))
			if code != 422 || !strings.Contains(got, c.want) || !strings.Contains(got, "CF-UnprocessableEntity") {
				t.Errorf("%s: POST = %d %s, want 422 with %q", c.name, code, got, c.want)
			}
			if e.revision() != rev {
				t.Errorf("%s: a refused POST changed the store", c.name)
			}
		}
		var g api.SecurityGroup
		e.must(e.admin, "POST", securityGroupsPath, `{"name":"db","rules":[{"protocol":"tcp","destination":"203.0.113.10","ports":"5432","log":true,"description":"postgres"}]}`, 201, &g)
		if g.Name != "db" || len(g.Rules) != 1 || g.Rules[0].Description != "postgres" || len(g.Relationships.RunningSpaces.Data) != 0 {
			t.Errorf("created %+v", g)
		}
		e.must(e.admin, "POST", securityGroupsPath, `{"name":"db"}`, 422, nil)
		e.must(e.admin, "POST", securityGroupsPath+"/"+g.GUID+"/relationships/running_spaces", fmt.Sprintf(`{"data":[{"guid":%q}]}`, space), 200, nil)
		e.must(e.admin, "POST", securityGroupsPath+"/"+g.GUID+"/relationships/running_spaces", `{"data":[{"guid":"nope"}]}`, 422, nil)
		e.must(e.admin, "POST", securityGroupsPath+"/"+g.GUID+"/relationships/sideways_spaces", fmt.Sprintf(`{"data":[{"guid":%q}]}`, space), 404, nil)
		var dns api.SecurityGroup
		e.must(e.admin, "POST", securityGroupsPath, `{"name":"dns","globally_enabled":{"running":true},"rules":[{"protocol":"udp","destination":"0.0.0.0/0","ports":"53"}]}`, 201, &dns)
		var hidden api.SecurityGroup
		e.must(e.admin, "POST", securityGroupsPath, fmt.Sprintf(`{"name":"hidden","rules":[],"relationships":{"staging_spaces":{"data":[{"guid":%q}]}}}`, other), 201, &hidden)

		names := func(token, query string) string {
			var l api.List[api.SecurityGroup]
			e.must(token, "GET", securityGroupsPath+query, "", 200, &l)
			var out []string
			for _, g := range l.Resources {
				out = append(out, g.Name)
			}
			return strings.Join(out, ",")
		}
		for _, c := range []struct{ token, query, want string }{
			{e.admin, "", "db,dns,hidden"},
			{e.admin, "?globally_enabled_running=true", "dns"},
			{e.admin, "?running_space_guids=" + space, "db"},
			{e.admin, "?staging_space_guids=" + other, "hidden"},
			{e.admin, "?names=db,hidden", "db,hidden"},
			{e.token(ScopeWrite, []string{space}), "", "db,dns"},
		} {
			if got := names(c.token, c.query); got != c.want {
				t.Errorf("GET %s%s = %s, want %s", securityGroupsPath, c.query, got, c.want)
			}
		}
		// A space's own lists (cf space): its bindings and the global ones.
		for _, c := range []struct{ path, want string }{
			{"/v3/spaces/" + space + "/running_security_groups", "db,dns"},
			{"/v3/spaces/" + space + "/staging_security_groups", ""},
			{"/v3/spaces/" + other + "/running_security_groups", "dns"},
			{"/v3/spaces/" + other + "/staging_security_groups", "hidden"},
		} {
			var l api.List[api.SecurityGroup]
			e.must(e.admin, "GET", c.path, "", 200, &l)
			var got []string
			for _, g := range l.Resources {
				got = append(got, g.Name)
			}
			if strings.Join(got, ",") != c.want {
				t.Errorf("GET %s = %v, want %s", c.path, got, c.want)
			}
		}
		writer := e.token(ScopeWrite, []string{space})
		e.must(writer, "GET", securityGroupsPath+"/"+hidden.GUID, "", 404, nil)
		e.must(writer, "POST", securityGroupsPath, `{"name":"mine"}`, 403, nil)

		// A cell with an instance of backend is sent db's and dns's rules.
		_, cell := e.joinCell("cell-eg", "198.51.100.31")
		code, body := e.cellCall(cell, "GET", "/trellis/v1/cell/state", "")
		if code != 200 {
			t.Fatalf("cell state = %d %s", code, body)
		}
		var st api.CellState
		json.Unmarshal([]byte(body), &st)
		ip := st.Cell.Subnet.Addr().Next().Next().Next().Next().String()
		e.register(cell, "00000000-0000-4000-8000-00000000e001", app, 0, ip)
		_, body = e.cellCall(cell, "GET", "/trellis/v1/cell/state", "")
		st = api.CellState{}
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatal(err)
		}
		var groups []string
		for _, r := range st.Egress {
			groups = append(groups, fmt.Sprintf("%s %s %s-%s %d", r.Group, r.Protocol, r.DestStart, r.DestEnd, r.StartPort))
		}
		if want := "db tcp 203.0.113.10-203.0.113.10 5432;dns udp 0.0.0.0-255.255.255.255 53"; strings.Join(groups, ";") != want {
			t.Errorf("cell egress = %v, want %s", groups, want)
		}

		// Explain: by which rule, or what is missing.
		for _, c := range []struct {
			query, want string
			allowed     bool
		}{
			{"&to=203.0.113.10&port=5432", "allowed: rule 0 of security group db (bound to space default) covers tcp to 203.0.113.10:5432", true},
			{"&to=203.0.113.10&port=5433", "egress: no security group allows tcp to 203.0.113.10:5433 for app backend in space default (groups that apply: db, dns)", false},
			{"&to=198.51.100.1&protocol=udp&port=53", "allowed: rule 0 of security group dns (globally enabled for running) covers udp to 198.51.100.1:53", true},
			{"&to=203.0.113.10&protocol=icmp", "egress: no security group allows icmp to 203.0.113.10 for app backend", false},
		} {
			var x api.EgressExplanation
			e.must(e.admin, "GET", "/trellis/v1/explain?source="+app+c.query, "", 200, &x)
			if x.Allowed != c.allowed || !strings.HasPrefix(x.Reason, c.want) {
				t.Errorf("explain %s = %v %q, want %v %q", c.query, x.Allowed, x.Reason, c.allowed, c.want)
			}
		}
		e.must(e.admin, "GET", "/trellis/v1/explain?source="+app+"&to=nope&port=1", "", 400, nil)
		e.must(e.token(ScopeWrite, []string{other}), "GET", "/trellis/v1/explain?source="+app+"&to=203.0.113.10&port=5432", "", 403, nil)

		// Update, unbind, delete.
		e.must(e.admin, "PATCH", securityGroupsPath+"/"+g.GUID, `{"rules":[{"protocol":"tcp","destination":"203.0.113.10","ports":"0"}]}`, 422, nil)
		e.must(e.admin, "PATCH", securityGroupsPath+"/"+g.GUID, `{"name":"dns"}`, 422, nil)
		e.must(e.admin, "PATCH", securityGroupsPath+"/"+g.GUID, `{"name":"database","globally_enabled":{"staging":true}}`, 200, &g)
		if g.Name != "database" || !g.GloballyEnabled.Staging || len(g.Rules) != 1 {
			t.Errorf("after PATCH: %+v", g)
		}
		e.must(e.admin, "DELETE", securityGroupsPath+"/"+g.GUID+"/relationships/running_spaces/"+space, "", 204, nil)
		e.must(e.admin, "DELETE", securityGroupsPath+"/"+g.GUID+"/relationships/running_spaces/"+space, "", 422, nil)
		e.must(e.admin, "DELETE", securityGroupsPath+"/"+g.GUID, "", 202, nil)
		e.must(e.admin, "GET", securityGroupsPath+"/"+g.GUID, "", 404, nil)
		if got := names(e.admin, ""); got != "dns,hidden" {
			t.Errorf("after delete: %s", got)
		}
	})
}
