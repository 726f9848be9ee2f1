package policy

import (
	"cmp"
	"slices"
	"strings"

	"github.com/trellis-c2c/trellis/internal/api"
)

// SecurityGroup is an application security group: rules that allow egress
// to instances of the spaces it is bound to for the running lifecycle, or
// of every space when it is globally enabled for running.
type SecurityGroup struct {
	GUID, Name    string
	Rules         []Rule
	GlobalRunning bool
	RunningSpaces []string
}

// egress returns the egress rules of the instances attached to cell: for
// each, every rule of every group that applies to its app's space, one
// entry per destination range and port range, sorted. Default deny: an
// instance no group applies to gets nothing.
func egress(src source, cell string) []api.EgressRule {
	groups := src.securityGroups()
	out := []api.EgressRule{}
	if len(groups) == 0 {
		return out
	}
	var global []int
	bySpace := map[string][]int{}
	for i, g := range groups {
		if g.GlobalRunning {
			global = append(global, i)
			continue
		}
		for _, sp := range g.RunningSpaces {
			bySpace[sp] = append(bySpace[sp], i)
		}
	}
	for in := range src.onCell(cell) {
		a := src.app(in.AppGUID)
		if a == nil || !attached(*in) {
			continue
		}
		for _, gi := range append(slices.Clip(global), bySpace[a.SpaceGUID]...) {
			g := &groups[gi]
			for ri, r := range g.Rules {
				out = appendEgress(out, *in, g.Name, ri, r)
			}
		}
	}
	slices.SortFunc(out, compareEgress)
	return slices.CompactFunc(out, func(a, b api.EgressRule) bool { return compareEgress(a, b) == 0 })
}

// appendEgress appends rule r of group to out for instance in.
func appendEgress(out []api.EgressRule, in Instance, group string, ri int, r Rule) []api.EgressRule {
	for _, d := range r.Destinations {
		e := api.EgressRule{SrcIP: in.IP, Protocol: r.Protocol, DestStart: d.From, DestEnd: d.To, Log: r.Log, Group: group, Rule: ri}
		switch r.Protocol {
		case TCP, UDP:
			for _, p := range r.Ports {
				e.StartPort, e.EndPort = p.From, p.To
				out = append(out, e)
			}
		case ICMP:
			e.ICMPType, e.ICMPCode = r.ICMPType, r.ICMPCode
			out = append(out, e)
		default:
			out = append(out, e)
		}
	}
	return out
}

// compareEgress orders egress rules by source, protocol, destination,
// ports, ICMP type and code, then group and rule.
func compareEgress(a, b api.EgressRule) int {
	return cmp.Or(a.SrcIP.Compare(b.SrcIP), strings.Compare(a.Protocol, b.Protocol), a.DestStart.Compare(b.DestStart),
		a.DestEnd.Compare(b.DestEnd), cmp.Compare(a.StartPort, b.StartPort), cmp.Compare(a.EndPort, b.EndPort),
		cmp.Compare(a.ICMPType, b.ICMPType), cmp.Compare(a.ICMPCode, b.ICMPCode), strings.Compare(a.Group, b.Group),
		cmp.Compare(a.Rule, b.Rule), boolCmp(a.Log, b.Log))
}

func boolCmp(a, b bool) int {
	switch {
	case a == b:
		return 0
	case !a:
		return -1
	}
	return 1
}
