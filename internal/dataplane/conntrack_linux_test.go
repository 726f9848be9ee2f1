package dataplane

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

func ctFlow(src, dst string, proto uint8, dport uint16, mark uint32) *netlink.ConntrackFlow {
	return &netlink.ConntrackFlow{
		FamilyType: 2,
		Forward:    netlink.IPTuple{SrcIP: net.ParseIP(src), DstIP: net.ParseIP(dst), Protocol: proto, SrcPort: 40000, DstPort: dport},
		Mark:       mark,
	}
}

func TestFlowFilter(t *testing.T) {
	f, err := newFlowFilter(Flow{
		SrcIPs: []netip.Addr{addr("10.255.1.2"), addr("10.255.3.2")}, SrcTag: 1,
		DestIP: addr("10.255.2.2"), Protocol: "tcp", StartPort: 8000, EndPort: 8080,
	})
	if err != nil {
		t.Fatal(err)
	}
	accepted := uint32(ctMarkPoliced | 1)
	tests := []struct {
		name string
		flow *netlink.ConntrackFlow
		want bool
	}{
		{"match", ctFlow("10.255.1.2", "10.255.2.2", protoTCP, 8080, accepted), true},
		{"other source", ctFlow("10.255.3.2", "10.255.2.2", protoTCP, 8000, accepted), true},
		{"source not listed", ctFlow("10.255.1.3", "10.255.2.2", protoTCP, 8080, accepted), false},
		{"port above", ctFlow("10.255.1.2", "10.255.2.2", protoTCP, 8081, accepted), false},
		{"port below", ctFlow("10.255.1.2", "10.255.2.2", protoTCP, 7999, accepted), false},
		{"UDP", ctFlow("10.255.1.2", "10.255.2.2", protoUDP, 8080, accepted), false},
		{"other destination", ctFlow("10.255.1.2", "10.255.2.3", protoTCP, 8080, accepted), false},
		{"other tag", ctFlow("10.255.1.2", "10.255.2.2", protoTCP, 8080, ctMarkPoliced|2), false},
		{"not accepted by trellis", ctFlow("10.255.1.2", "10.255.2.2", protoTCP, 8080, 1), false},
	}
	for _, tt := range tests {
		if got := f.MatchConntrackFlow(tt.flow); got != tt.want {
			t.Errorf("%s: MatchConntrackFlow(%v) = %v, want %v", tt.name, tt.flow, got, tt.want)
		}
	}

	any, err := newFlowFilter(Flow{DestIP: addr("10.255.2.2"), Protocol: "udp", StartPort: 53, EndPort: 53})
	if err != nil {
		t.Fatal(err)
	}
	if !any.MatchConntrackFlow(ctFlow("10.255.9.9", "10.255.2.2", protoUDP, 53, 0)) {
		t.Errorf("a flow without sources or tag does not match every source")
	}

	for _, bad := range []Flow{
		{DestIP: addr("fd00::1"), Protocol: "tcp", StartPort: 1, EndPort: 1},
		{DestIP: addr("10.255.2.2"), Protocol: "sctp", StartPort: 1, EndPort: 1},
		{DestIP: addr("10.255.2.2"), Protocol: "tcp", StartPort: 2, EndPort: 1},
		{DestIP: addr("10.255.2.2"), Protocol: "tcp", StartPort: 1, EndPort: 1, SrcIPs: []netip.Addr{addr("fd00::2")}},
	} {
		if _, err := New("/nonexistent", nil).CutFlows([]Flow{bad}); err == nil || !strings.Contains(err.Error(), "cut flows") {
			t.Errorf("CutFlows(%+v) = %v, want a validation error", bad, err)
		}
	}
}

func TestDisallowedFilter(t *testing.T) {
	plan, err := compilePolicy(Policy{Enforce: true, Locals: cell1Locals, Allows: []Allow{
		{addr("10.255.1.2"), 3, "tcp", 8080, 8080},
		{addr("10.255.1.2"), 3, "tcp", 9000, 9100},
		{addr("10.255.1.3"), 1, "udp", 53, 53},
	}})
	if err != nil {
		t.Fatal(err)
	}
	locals := map[netip.Addr]bool{}
	for _, id := range plan.localIDs {
		locals[id.IP] = true
	}
	f := disallowedFilter{locals, plan.allows}
	tests := []struct {
		name string
		flow *netlink.ConntrackFlow
		cut  bool
	}{
		{"allowed port", ctFlow("10.255.2.2", "10.255.1.2", protoTCP, 8080, ctMarkPoliced|3), false},
		{"allowed range", ctFlow("10.255.2.2", "10.255.1.2", protoTCP, 9050, ctMarkPoliced|3), false},
		{"allowed UDP", ctFlow("10.255.2.9", "10.255.1.3", protoUDP, 53, ctMarkPoliced|1), false},
		{"port not allowed", ctFlow("10.255.2.2", "10.255.1.2", protoTCP, 8081, ctMarkPoliced|3), true},
		{"tag not allowed", ctFlow("10.255.2.2", "10.255.1.2", protoTCP, 8080, ctMarkPoliced|4), true},
		{"protocol not allowed", ctFlow("10.255.2.2", "10.255.1.2", protoUDP, 8080, ctMarkPoliced|3), true},
		{"ICMP", ctFlow("10.255.2.2", "10.255.1.2", 1, 0, ctMarkPoliced|3), true},
		{"not accepted by trellis", ctFlow("169.254.0.1", "10.255.1.2", protoTCP, 22, 0), false},
		{"not to a local", ctFlow("10.255.1.2", "10.255.2.2", protoTCP, 8080, ctMarkPoliced|1), false},
	}
	for _, tt := range tests {
		if got := f.MatchConntrackFlow(tt.flow); got != tt.cut {
			t.Errorf("%s: disallowed(%v) = %v, want %v", tt.name, tt.flow, got, tt.cut)
		}
	}
}
