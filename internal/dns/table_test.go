package dns_test

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-c2c/trellis/internal/dns"
)

func TestTableRecords(t *testing.T) {
	got := testTable().Records()
	want := []dns.Record{
		{Name: "0.backend.apps.internal", IP: b0, Index: 0},
		{Name: "0.shared.apps.internal", IP: b0, Index: 0},
		{Name: "0.shared.apps.internal", IP: c0, Index: 0},
		{Name: "1.backend.apps.internal", IP: b1, Index: 1},
		{Name: "1.shared.apps.internal", IP: b1, Index: 1},
		{Name: "2.backend.apps.internal", IP: b2, Index: 2},
		{Name: "2.shared.apps.internal", IP: b2, Index: 2},
		{Name: "api.other.internal", IP: c0, Index: 0},
		{Name: "backend.apps.internal", IP: b0, Index: 0},
		{Name: "backend.apps.internal", IP: b2, Index: 2},
		{Name: "backend.apps.internal", IP: b1, Index: 1},
		{Name: "0.api.other.internal", IP: c0, Index: 0},
		{Name: "shared.apps.internal", IP: b0, Index: 0},
		{Name: "shared.apps.internal", IP: c0, Index: 0},
		{Name: "shared.apps.internal", IP: b2, Index: 2},
		{Name: "shared.apps.internal", IP: b1, Index: 1},
	}
	sortRecords(want)
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("Records() (-want +got):\n%s", diff)
	}
	if n := testTable().Len(); n != len(want) {
		t.Errorf("Len() = %d, want %d", n, len(want))
	}
	if d := testTable().Domains(); !cmp.Equal(d, []string{"apps.internal", "other.internal"}) {
		t.Errorf("Domains() = %v", d)
	}
}

func sortRecords(rs []dns.Record) {
	// Records sorts by name, index, address; so does this, by insertion.
	for i := 1; i < len(rs); i++ {
		for j := i; j > 0 && less(rs[j], rs[j-1]); j-- {
			rs[j], rs[j-1] = rs[j-1], rs[j]
		}
	}
}

func less(a, b dns.Record) bool {
	if a.Name != b.Name {
		return a.Name < b.Name
	}
	if a.Index != b.Index {
		return a.Index < b.Index
	}
	return a.IP.Less(b.IP)
}

func TestTableLookup(t *testing.T) {
	tab := dns.NewTable([]string{"apps.internal", "", "bad..domain", "a.apps.internal"},
		[]dns.Route{
			{Host: "web", Domain: "apps.internal", Apps: []string{"w", "w"}}, // twice: no duplicates
			{Host: "0.web", Domain: "apps.internal", Apps: []string{"x"}},    // a route named like an INDEX name wins
			{Host: "", Domain: "a.apps.internal", Apps: []string{"x"}},       // a route on the domain itself
			{Host: "bad name", Domain: "apps.internal", Apps: []string{"w"}},
			{Host: "deep.er", Domain: "apps.internal", Apps: []string{"x"}},
		},
		[]dns.Instance{
			{App: "w", Index: 0, IP: b0},
			{App: "w", Index: 1, IP: b0}, // the same address twice
			{App: "w", Index: 2, IP: netip.MustParseAddr("fd00::1")},
			{App: "w", Index: -1, IP: b2}, // no index: no INDEX name
			{App: "x", Index: 0, IP: c0},
		})
	for _, c := range []struct {
		name  string
		want  []netip.Addr
		found bool
	}{
		{"web.apps.internal", []netip.Addr{b0, b2}, true},
		{"WEB.apps.internal.", []netip.Addr{b0, b2}, true},
		{"0.web.apps.internal", []netip.Addr{c0}, true},
		{"1.web.apps.internal", []netip.Addr{b0}, true},
		{"2.web.apps.internal", nil, false},
		{"-1.web.apps.internal", nil, false},
		{"a.apps.internal", []netip.Addr{c0}, true},
		{"0.a.apps.internal", []netip.Addr{c0}, true},
		{"deep.er.apps.internal", []netip.Addr{c0}, true},
		{"er.apps.internal", nil, true}, // an empty non-terminal exists
		{"apps.internal", nil, true},
		{"bad name.apps.internal", nil, false},
		{"nope.apps.internal", nil, false},
		{"", nil, false},
	} {
		got, found := tab.Lookup(c.name)
		if found != c.found || !cmp.Equal(sorted(got), sorted(c.want), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })) {
			t.Errorf("Lookup(%q) = %v, %v, want %v, %v", c.name, got, found, c.want, c.found)
		}
	}
	for name, want := range map[string]bool{
		"apps.internal": true, "x.y.apps.internal.": true, "APPS.INTERNAL": true,
		"internal": false, "xapps.internal": false, "example.com": false, "": false,
	} {
		if got := tab.Internal(name); got != want {
			t.Errorf("Internal(%q) = %v, want %v", name, got, want)
		}
	}
	if d := tab.Domains(); !cmp.Equal(d, []string{"a.apps.internal", "apps.internal"}) {
		t.Errorf("Domains() = %v, want the valid ones", d)
	}
}

func BenchmarkNewTable(b *testing.B) {
	routes, instances := benchTable(1000, 5)
	for b.Loop() {
		dns.NewTable([]string{"apps.internal"}, routes, instances)
	}
}

// benchTable returns n routes app0000..appN.apps.internal with per
// instances each.
func benchTable(n, per int) ([]dns.Route, []dns.Instance) {
	var routes []dns.Route
	var instances []dns.Instance
	for i := range n {
		app := "app-guid-" + itoa(i)
		routes = append(routes, dns.Route{Host: "app" + itoa(i), Domain: "apps.internal", Apps: []string{app}})
		for j := range per {
			k := i*per + j
			instances = append(instances, dns.Instance{App: app, Index: j,
				IP: netip.AddrFrom4([4]byte{10, 255, byte(1 + k/250), byte(2 + k%250)})})
		}
	}
	return routes, instances
}

func itoa(i int) string {
	s := []byte("0000")
	for p := 3; p >= 0; p-- {
		s[p] = byte('0' + i%10)
		i /= 10
	}
	return string(s)
}
