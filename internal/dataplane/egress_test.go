package dataplane

import (
	"net/netip"
	"testing"
)

func TestCompileEgress(t *testing.T) {
	ip := netip.MustParseAddr
	src := ip("10.255.1.2")
	rule := func(proto, lo, hi string, plo, phi uint16, typ, code int) EgressRule {
		return EgressRule{SrcIP: src, Protocol: proto, DestStart: ip(lo), DestEnd: ip(hi), StartPort: plo, EndPort: phi, ICMPType: typ, ICMPCode: code}
	}
	for _, c := range []struct {
		name  string
		rules []EgressRule
		want  string
	}{
		{"none", nil, ""},
		{"one", []EgressRule{rule("tcp", "203.0.113.10", "203.0.113.10", 80, 80, 0, 0)},
			"tcp 10.255.1.2 . 203.0.113.10-203.0.113.10 . 80-80\n"},
		{"contained and duplicate", []EgressRule{
			rule("tcp", "203.0.113.0", "203.0.113.255", 1, 1000, 0, 0),
			rule("tcp", "203.0.113.10", "203.0.113.10", 80, 80, 0, 0),
			rule("tcp", "203.0.113.0", "203.0.113.255", 1, 1000, 0, 0)},
			"tcp 10.255.1.2 . 203.0.113.0-203.0.113.255 . 1-1000\n"},
		{"partial overlap is split", []EgressRule{
			rule("udp", "203.0.113.5", "203.0.113.15", 50, 52, 0, 0),
			rule("udp", "203.0.113.8", "203.0.113.20", 51, 60, 0, 0)},
			"udp 10.255.1.2 . 203.0.113.5-203.0.113.7 . 50-52\n" +
				"udp 10.255.1.2 . 203.0.113.8-203.0.113.15 . 50-60\n" +
				"udp 10.255.1.2 . 203.0.113.16-203.0.113.20 . 51-60\n"},
		{"adjacent ranges join", []EgressRule{
			rule("all", "203.0.113.0", "203.0.113.9", 0, 0, 0, 0),
			rule("all", "203.0.113.10", "203.0.113.20", 0, 0, 0, 0)},
			"all 10.255.1.2 . 203.0.113.0-203.0.113.20\n"},
		{"icmp", []EgressRule{
			rule("icmp", "203.0.113.10", "203.0.113.10", 0, 0, 8, -1),
			rule("icmp", "203.0.113.11", "203.0.113.11", 0, 0, -1, -1)},
			"icmp 10.255.1.2 . 203.0.113.10-203.0.113.10 . type 8-8 code 0-255\n" +
				"icmp 10.255.1.2 . 203.0.113.11-203.0.113.11 . type 0-255 code 0-255\n"},
	} {
		p, err := compileEgress(Egress{Overlay: overlay, Rules: c.rules})
		if err != nil {
			t.Errorf("%s: compileEgress = %v", c.name, err)
			continue
		}
		if got := p.render(); got != c.want {
			t.Errorf("%s: compileEgress(%v) =\n%s\nwant\n%s", c.name, c.rules, got, c.want)
		}
	}
	for _, bad := range []EgressRule{
		rule("tcp", "203.0.113.10", "203.0.113.1", 80, 80, 0, 0),
		rule("tcp", "203.0.113.10", "203.0.113.10", 0, 80, 0, 0),
		rule("sctp", "203.0.113.10", "203.0.113.10", 80, 80, 0, 0),
		rule("icmp", "203.0.113.10", "203.0.113.10", 0, 0, 300, 0),
	} {
		if _, err := compileEgress(Egress{Overlay: overlay, Rules: []EgressRule{bad}}); err == nil {
			t.Errorf("compileEgress(%v) = nil error, want one", bad)
		}
	}
}
