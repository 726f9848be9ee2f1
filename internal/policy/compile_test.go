package policy

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/trellis-c2c/trellis/internal/api"
)

// equateAddrs lets cmp compare netip values (their fields are unexported).
var equateAddrs = cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})

var (
	ip    = netip.MustParseAddr
	cell1 = api.Cell{GUID: "c1", Name: "cell1", UnderlayIP: ip("198.51.100.11"), Subnet: netip.MustParsePrefix("10.255.1.0/24"), Healthy: true}
	cell2 = api.Cell{GUID: "c2", Name: "cell2", UnderlayIP: ip("198.51.100.12"), Subnet: netip.MustParsePrefix("10.255.2.0/24")}
)

// foundation is two cells: frontend (tag 1) runs on cell1, backend (tag 2)
// has a running instance on each cell and one waiting on cell1, and
// frontend may reach backend on tcp 8080 and 61443.
func foundation() *Snapshot {
	return &Snapshot{
		Revision:   7,
		Overlay:    api.Overlay{CIDR: netip.MustParsePrefix("10.255.0.0/16"), SubnetPrefix: 24, VNI: 1, Port: 4789},
		Enforce:    true,
		InstanceCA: api.InstanceCA{Generation: 1, Bundle: "PEM", TrustDomain: "trellis.local"},
		Cells:      []api.Cell{cell1, cell2},
		Spaces:     []Space{{GUID: "s1", OrgGUID: "o1"}},
		Apps: []App{
			{GUID: "backend", Name: "backend", SpaceGUID: "s1", Command: []string{"serve"}, RequireClientCert: true},
			{GUID: "frontend", Name: "frontend", SpaceGUID: "s1", Env: map[string]string{"A": "1"}},
		},
		Instances: []Instance{
			{GUID: "b0", AppGUID: "backend", Index: 0, Managed: true, CellGUID: "c1", Running: true, IP: ip("10.255.1.3")},
			{GUID: "b1", AppGUID: "backend", Index: 1, Managed: true, CellGUID: "c2", Running: true, IP: ip("10.255.2.2")},
			{GUID: "b2", AppGUID: "backend", Index: 2, Managed: true, CellGUID: "c1"},
			{GUID: "f0", AppGUID: "frontend", Index: 0, Managed: true, CellGUID: "c1", Running: true, IP: ip("10.255.1.2")},
		},
		Tags: []Tag{{AppGUID: "frontend", Tag: 1}, {AppGUID: "backend", Tag: 2}},
		Policies: []Policy{
			{SourceApp: "frontend", DestApp: "backend", SourceTag: 1, Protocol: TCP, StartPort: 8080, EndPort: 8080},
			{SourceApp: "frontend", DestApp: "backend", SourceTag: 1, Protocol: TCP, StartPort: 61443, EndPort: 61443},
		},
		Domains: []Domain{{GUID: "d1", Name: "apps.internal", Internal: true}, {GUID: "d2", Name: "example.com"}},
		Routes: []Route{
			{Host: "api", DomainGUID: "d1", DomainName: "apps.internal", AppGUIDs: []string{"backend"}},
			{Host: "backend", DomainGUID: "d1", DomainName: "apps.internal", AppGUIDs: []string{"backend"}},
			{Host: "unused", DomainGUID: "d1", DomainName: "apps.internal"},
			{Host: "www", DomainGUID: "d2", DomainName: "example.com", AppGUIDs: []string{"frontend"}},
		},
	}
}

func allow(dest string, tag uint16, proto string, start, end uint16) api.Allow {
	return api.Allow{DestIP: ip(dest), SrcTag: tag, Protocol: proto, StartPort: start, EndPort: end}
}

func TestCompileAllows(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(s *Snapshot)
		want   map[string][]api.Allow // by cell GUID
	}{{
		name:   "only local running destinations",
		change: func(s *Snapshot) {},
		want: map[string][]api.Allow{
			"c1": {allow("10.255.1.3", 1, TCP, 8080, 8080), allow("10.255.1.3", 1, TCP, 61443, 61443)},
			"c2": {allow("10.255.2.2", 1, TCP, 8080, 8080), allow("10.255.2.2", 1, TCP, 61443, 61443)},
		},
	}, {
		name: "a destination with no instance on a cell contributes nothing there",
		change: func(s *Snapshot) {
			s.Policies = append(s.Policies, Policy{SourceApp: "backend", DestApp: "frontend", SourceTag: 2, Protocol: UDP, StartPort: 53, EndPort: 53})
		},
		want: map[string][]api.Allow{
			"c1": {allow("10.255.1.2", 2, UDP, 53, 53), allow("10.255.1.3", 1, TCP, 8080, 8080), allow("10.255.1.3", 1, TCP, 61443, 61443)},
			"c2": {allow("10.255.2.2", 1, TCP, 8080, 8080), allow("10.255.2.2", 1, TCP, 61443, 61443)},
		},
	}, {
		name: "a stopped instance is allowed nothing",
		change: func(s *Snapshot) {
			s.Instances[1].Running, s.Instances[1].IP = false, netip.Addr{}
		},
		want: map[string][]api.Allow{
			"c1": {allow("10.255.1.3", 1, TCP, 8080, 8080), allow("10.255.1.3", 1, TCP, 61443, 61443)},
			"c2": {},
		},
	}, {
		name: "sorted by address, tag, protocol and ports, without duplicates",
		change: func(s *Snapshot) {
			s.Instances = append(s.Instances, Instance{GUID: "b3", AppGUID: "backend", Index: 3, CellGUID: "c1", Running: true, IP: ip("10.255.1.1")})
			s.Policies = []Policy{
				{SourceApp: "x", DestApp: "backend", SourceTag: 9, Protocol: UDP, StartPort: 1, EndPort: 65535},
				{SourceApp: "x", DestApp: "backend", SourceTag: 9, Protocol: TCP, StartPort: 90, EndPort: 99},
				{SourceApp: "x", DestApp: "backend", SourceTag: 9, Protocol: TCP, StartPort: 90, EndPort: 95},
				{SourceApp: "frontend", DestApp: "backend", SourceTag: 1, Protocol: UDP, StartPort: 5, EndPort: 5},
				{SourceApp: "frontend", DestApp: "backend", SourceTag: 1, Protocol: UDP, StartPort: 5, EndPort: 5},
			}
		},
		want: map[string][]api.Allow{
			"c1": {
				allow("10.255.1.1", 1, UDP, 5, 5), allow("10.255.1.1", 9, TCP, 90, 95), allow("10.255.1.1", 9, TCP, 90, 99), allow("10.255.1.1", 9, UDP, 1, 65535),
				allow("10.255.1.3", 1, UDP, 5, 5), allow("10.255.1.3", 9, TCP, 90, 95), allow("10.255.1.3", 9, TCP, 90, 99), allow("10.255.1.3", 9, UDP, 1, 65535),
			},
			"c2": {allow("10.255.2.2", 1, UDP, 5, 5), allow("10.255.2.2", 9, TCP, 90, 95), allow("10.255.2.2", 9, TCP, 90, 99), allow("10.255.2.2", 9, UDP, 1, 65535)},
		},
	}, {
		name: "policies that cannot be enforced are left out",
		change: func(s *Snapshot) {
			s.Policies = []Policy{
				{DestApp: "backend", SourceTag: 3, Protocol: "icmp", StartPort: 1, EndPort: 1},
				{DestApp: "backend", SourceTag: 3, Protocol: TCP, StartPort: 0, EndPort: 10},
				{DestApp: "backend", SourceTag: 3, Protocol: TCP, StartPort: 10, EndPort: 9},
				{DestApp: "backend", SourceTag: 3, Protocol: TCP, StartPort: 10, EndPort: 65536},
				{DestApp: "backend", SourceTag: 3, Protocol: TCP, StartPort: 65535, EndPort: 65535},
			}
		},
		want: map[string][]api.Allow{
			"c1": {allow("10.255.1.3", 3, TCP, 65535, 65535)},
			"c2": {allow("10.255.2.2", 3, TCP, 65535, 65535)},
		},
	}, {
		name: "an instance of a deleted app is no destination",
		change: func(s *Snapshot) {
			s.Apps = s.Apps[1:] // backend gone, its rows not yet
		},
		want: map[string][]api.Allow{"c1": {}, "c2": {}},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			s := foundation()
			tc.change(s)
			got := map[string][]api.Allow{}
			for cell, st := range Compile(s) {
				got[cell] = st.Allows
			}
			if diff := cmp.Diff(tc.want, got, equateAddrs); diff != "" {
				t.Errorf("Compile allows (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCompileCell(t *testing.T) {
	s := foundation()
	got, err := CompileCell(s, "c1")
	if err != nil {
		t.Fatal(err)
	}
	want := api.CellState{
		Revision:   7,
		Cell:       cell1,
		Overlay:    s.Overlay,
		Peers:      []api.Cell{cell2},
		Enforce:    true,
		InstanceCA: s.InstanceCA,
		Instances: []api.DesiredInstance{
			{GUID: "b0", AppGUID: "backend", AppName: "backend", SpaceGUID: "s1", OrgGUID: "o1", Index: 0, Command: []string{"serve"}},
			{GUID: "b2", AppGUID: "backend", AppName: "backend", SpaceGUID: "s1", OrgGUID: "o1", Index: 2, Command: []string{"serve"}},
			{GUID: "f0", AppGUID: "frontend", AppName: "frontend", SpaceGUID: "s1", OrgGUID: "o1", Index: 0, Env: map[string]string{"A": "1"}},
		},
		Allows: []api.Allow{allow("10.255.1.3", 1, TCP, 8080, 8080), allow("10.255.1.3", 1, TCP, 61443, 61443)},
		Apps:   []api.TaggedApp{{GUID: "frontend", Name: "frontend", Tag: 1}, {GUID: "backend", Name: "backend", Tag: 2}},
		Endpoints: []api.Endpoint{
			{IP: ip("10.255.1.3"), Instance: "b0", AppGUID: "backend", AppName: "backend", Index: 0, CellGUID: "c1"},
			{IP: ip("10.255.2.2"), Instance: "b1", AppGUID: "backend", AppName: "backend", Index: 1, CellGUID: "c2"},
			{IP: ip("10.255.1.2"), Instance: "f0", AppGUID: "frontend", AppName: "frontend", Index: 0, CellGUID: "c1"},
		},
		Domains: []string{"apps.internal"},
		Routes: []api.RouteEntry{
			{Host: "api", Domain: "apps.internal", AppGUIDs: []string{"backend"}},
			{Host: "backend", Domain: "apps.internal", AppGUIDs: []string{"backend"}},
			{Host: "www", Domain: "example.com", AppGUIDs: []string{"frontend"}},
		},
		LocalApps: []api.LocalApp{
			{GUID: "backend", Hosts: []string{"api.apps.internal", "backend.apps.internal"}, RequireClientCert: true, TLSClients: []string{"frontend"}},
			{GUID: "frontend", Hosts: []string{}, TLSClients: []string{}},
		},
		Egress: []api.EgressRule{},
	}
	if diff := cmp.Diff(want, got, equateAddrs); diff != "" {
		t.Errorf("CompileCell(c1) (-want +got):\n%s", diff)
	}

	// cell2 has one instance; cell1 is its peer.
	got, err = CompileCell(s, "c2")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Instances) != 1 || got.Instances[0].GUID != "b1" || len(got.Peers) != 1 || got.Peers[0].GUID != "c1" ||
		len(got.LocalApps) != 1 || got.LocalApps[0].GUID != "backend" {
		t.Errorf("CompileCell(c2) = instances %+v, peers %+v, local apps %+v; want b1, cell1, backend", got.Instances, got.Peers, got.LocalApps)
	}
}

func TestCompileEnforcementOff(t *testing.T) {
	s := foundation()
	s.Enforce = false
	for cell, st := range Compile(s) {
		if st.Enforce || len(st.Allows) != 2 {
			t.Errorf("Compile with enforcement off: cell %s enforce %v, allows %v; want false and the allows still sent", cell, st.Enforce, st.Allows)
		}
	}
}

func TestCompileTLSClients(t *testing.T) {
	s := foundation()
	s.Policies = []Policy{
		{SourceApp: "z", DestApp: "backend", SourceTag: 5, Protocol: TCP, StartPort: 60000, EndPort: 62000},
		{SourceApp: "a", DestApp: "backend", SourceTag: 4, Protocol: TCP, StartPort: 61443, EndPort: 61443},
		{SourceApp: "a", DestApp: "backend", SourceTag: 4, Protocol: TCP, StartPort: 61000, EndPort: 61500},
		{SourceApp: "u", DestApp: "backend", SourceTag: 6, Protocol: UDP, StartPort: 61443, EndPort: 61443},
		{SourceApp: "n", DestApp: "backend", SourceTag: 7, Protocol: TCP, StartPort: 8080, EndPort: 8080},
	}
	st, err := CompileCell(s, "c2")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a", "z"}; len(st.LocalApps) != 1 || !cmp.Equal(st.LocalApps[0].TLSClients, want) {
		t.Errorf("CompileCell(c2) local apps = %+v, want backend with TLS clients %v", st.LocalApps, want)
	}
}

func TestCompileUnknownCell(t *testing.T) {
	if _, err := CompileCell(foundation(), "gone"); !errors.Is(err, ErrUnknownCell) {
		t.Errorf("CompileCell(gone) = %v, want ErrUnknownCell", err)
	}
}

// TestCompileEmpty: a cell alone in an empty foundation gets empty lists,
// which the JSON shows as [] (agents and tools read them so), never null.
func TestCompileEmpty(t *testing.T) {
	st, err := CompileCell(&Snapshot{Cells: []api.Cell{cell1}}, "c1")
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "null") {
		t.Errorf("CompileCell of an empty foundation = %s, want no null", b)
	}
}

// TestCompileDeterministic: Compile keeps no state between calls and
// depends on nothing but the snapshot: the same snapshot compiled twice,
// whole or cell by cell, gives equal desired states.
func TestCompileDeterministic(t *testing.T) {
	s := foundation()
	first := Compile(s)
	second := Compile(s)
	if diff := cmp.Diff(first, second, equateAddrs); diff != "" {
		t.Errorf("Compile twice differs (-first +second):\n%s", diff)
	}
	for _, c := range s.Cells {
		st, err := CompileCell(s, c.GUID)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(first[c.GUID], st, equateAddrs); diff != "" {
			t.Errorf("CompileCell(%s) differs from Compile (-Compile +CompileCell):\n%s", c.GUID, diff)
		}
	}
	if diff := cmp.Diff(foundation(), s, equateAddrs); diff != "" {
		t.Errorf("Compile changed its snapshot (-before +after):\n%s", diff)
	}
}
