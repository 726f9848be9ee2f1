package policy

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-c2c/trellis/internal/api"
)

func intp(v int) *int { return &v }

func TestParseRules(t *testing.T) {
	for _, c := range []struct {
		rule api.SecurityGroupRule
		err  string // "" valid, else a part of the error
	}{
		{api.SecurityGroupRule{Protocol: "tcp", Destination: "203.0.113.10", Ports: "443"}, ""},
		{api.SecurityGroupRule{Protocol: "tcp", Destination: "10.0.0.1-10.0.0.255", Ports: "8000-9000"}, ""},
		{api.SecurityGroupRule{Protocol: "udp", Destination: "10.0.0.0/8, 192.168.1.1", Ports: "80,443"}, ""},
		{api.SecurityGroupRule{Protocol: "icmp", Destination: "0.0.0.0/0", Type: intp(-1), Code: intp(-1)}, ""},
		{api.SecurityGroupRule{Protocol: "all", Destination: "0.0.0.0-255.255.255.255", Log: true}, ""},
		{api.SecurityGroupRule{Protocol: "sctp", Destination: "10.0.0.1", Ports: "80"}, "protocol must be 'tcp', 'udp', 'icmp', or 'all'"},
		{api.SecurityGroupRule{Protocol: "tcp", Destination: "10.0.0.1/33", Ports: "80"}, "destination must be a valid CIDR"},
		{api.SecurityGroupRule{Protocol: "tcp", Destination: "bad", Ports: "80"}, "destination must be a valid CIDR"},
		{api.SecurityGroupRule{Protocol: "tcp", Destination: "10.0.0.9-10.0.0.1", Ports: "80"}, "destination range 10.0.0.9-10.0.0.1 is reversed"},
		{api.SecurityGroupRule{Protocol: "tcp", Destination: "10.0.0.1", Ports: "9000-8000"}, "ports range 9000-8000 is reversed"},
		{api.SecurityGroupRule{Protocol: "tcp", Destination: "10.0.0.1", Ports: "0"}, "ports must be a valid single port"},
		{api.SecurityGroupRule{Protocol: "tcp", Destination: "10.0.0.1"}, "ports are required"},
		{api.SecurityGroupRule{Protocol: "icmp", Destination: "10.0.0.1", Ports: "80", Type: intp(8), Code: intp(0)}, "ports are not allowed"},
		{api.SecurityGroupRule{Protocol: "icmp", Destination: "10.0.0.1"}, "type and code are required"},
		{api.SecurityGroupRule{Protocol: "icmp", Destination: "10.0.0.1", Type: intp(256), Code: intp(0)}, "type must be an integer between -1 and 255"},
		{api.SecurityGroupRule{Protocol: "tcp", Destination: "10.0.0.1", Ports: "80", Type: intp(0)}, "type and code are only allowed"},
	} {
		_, err := ParseRules([]api.SecurityGroupRule{c.rule})
		switch {
		case c.err == "" && err != nil:
			t.Errorf("ParseRules(%+v) = %v, want valid", c.rule, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err) || !strings.HasPrefix(err.Error(), "Rules[0]: ")):
			t.Errorf("ParseRules(%+v) = %v, want an error with Rules[0]: and %q", c.rule, err, c.err)
		}
	}
}

func TestCompileEgress(t *testing.T) {
	s := foundation()
	s.Spaces = append(s.Spaces, Space{GUID: "s2", OrgGUID: "o1"})
	s.Apps = append(s.Apps, App{GUID: "other", Name: "other", SpaceGUID: "s2"})
	s.Instances = append(s.Instances, Instance{GUID: "o0", AppGUID: "other", CellGUID: "c1", Running: true, IP: ip("10.255.1.9")})
	rules := func(r ...api.SecurityGroupRule) []Rule {
		out, err := ParseRules(r)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	s.SecurityGroups = []SecurityGroup{
		{GUID: "g1", Name: "db", RunningSpaces: []string{"s1"},
			Rules: rules(api.SecurityGroupRule{Protocol: "tcp", Destination: "203.0.113.10,203.0.113.20-203.0.113.30", Ports: "5432", Log: true})},
		{GUID: "g2", Name: "dns", GlobalRunning: true,
			Rules: rules(api.SecurityGroupRule{Protocol: "udp", Destination: "203.0.113.53", Ports: "53"})},
		{GUID: "g3", Name: "unbound", Rules: rules(api.SecurityGroupRule{Protocol: "all", Destination: "0.0.0.0/0"})},
	}
	got, err := CompileCell(s, "c1")
	if err != nil {
		t.Fatal(err)
	}
	eg := func(src, proto, lo, hi string, port uint16, log bool, group string) api.EgressRule {
		return api.EgressRule{SrcIP: ip(src), Protocol: proto, DestStart: ip(lo), DestEnd: ip(hi), StartPort: port, EndPort: port, Log: log, Group: group}
	}
	want := []api.EgressRule{
		// frontend f0 and backend b0 in s1: db and dns; other o0 in s2: dns only.
		eg("10.255.1.2", "tcp", "203.0.113.10", "203.0.113.10", 5432, true, "db"),
		eg("10.255.1.2", "tcp", "203.0.113.20", "203.0.113.30", 5432, true, "db"),
		eg("10.255.1.2", "udp", "203.0.113.53", "203.0.113.53", 53, false, "dns"),
		eg("10.255.1.3", "tcp", "203.0.113.10", "203.0.113.10", 5432, true, "db"),
		eg("10.255.1.3", "tcp", "203.0.113.20", "203.0.113.30", 5432, true, "db"),
		eg("10.255.1.3", "udp", "203.0.113.53", "203.0.113.53", 53, false, "dns"),
		eg("10.255.1.9", "udp", "203.0.113.53", "203.0.113.53", 53, false, "dns"),
	}
	if diff := cmp.Diff(want, got.Egress, equateAddrs); diff != "" {
		t.Errorf("CompileCell(c1).Egress (-want +got):\n%s", diff)
	}
	// Unbound: nothing for s1 but the global group.
	s.SecurityGroups[0].RunningSpaces = nil
	got, _ = CompileCell(s, "c1")
	if len(got.Egress) != 3 {
		t.Errorf("after unbinding db: %d egress rules, want the 3 of dns", len(got.Egress))
	}
}
