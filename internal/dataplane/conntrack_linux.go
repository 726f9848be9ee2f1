package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/trellis-c2c/trellis/internal/netns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// CutFlows deletes the conntrack entries of the cell's namespace that
// match any of flows and returns how many it deleted. Run it on the
// destination's cell after its policy revoked an allow: the next packet of
// a cut connection is new again, meets the policy and is rejected (TCP
// gets a reset). Entries are matched on their original direction.
func (d *Dataplane) CutFlows(flows []Flow) (int, error) {
	filters := make([]netlink.CustomConntrackFilter, 0, len(flows))
	for _, f := range flows {
		ff, err := newFlowFilter(f)
		if err != nil {
			return 0, fmt.Errorf("cut flows: %w", err)
		}
		filters = append(filters, ff)
	}
	if len(filters) == 0 {
		return 0, nil
	}
	n, err := deleteConntrack(d.ns, filters...)
	if err != nil {
		return n, fmt.Errorf("cut flows in %s: %w", d.ns, err)
	}
	return n, nil
}

// cutDisallowed is CutDisallowed for plan, which enforces.
func (d *Dataplane) cutDisallowed(plan *policyPlan) (int, error) {
	locals := make(map[netip.Addr]bool, len(plan.localIDs))
	for _, id := range plan.localIDs {
		locals[id.IP] = true
	}
	n, err := deleteConntrack(d.ns, disallowedFilter{locals, plan.allows})
	if err != nil {
		return n, fmt.Errorf("cut disallowed flows in %s: %w", d.ns, err)
	}
	return n, nil
}

// deleteConntrack deletes the IPv4 conntrack entries matching any filter,
// dumping again when the kernel interrupted the dump.
func deleteConntrack(nsPath string, filters ...netlink.CustomConntrackFilter) (int, error) {
	h, err := netns.Handle(nsPath)
	if err != nil {
		return 0, err
	}
	defer h.Close()
	total := 0
	for range dumpAttempts {
		n, err := h.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, filters...)
		total += int(n)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return total, err
		}
	}
	return total, fmt.Errorf("conntrack dump interrupted %d times", dumpAttempts)
}

type flowFilter struct {
	srcs   []netip.Addr
	tag    uint16
	dst    netip.Addr
	proto  uint8
	lo, hi uint16
}

func newFlowFilter(f Flow) (flowFilter, error) {
	proto, ok := protoNumber(f.Protocol)
	switch {
	case !f.DestIP.Is4():
		return flowFilter{}, fmt.Errorf("flow to %v: destination is not an IPv4 address", f.DestIP)
	case !ok:
		return flowFilter{}, fmt.Errorf("flow to %s: protocol %q is not tcp or udp", f.DestIP, f.Protocol)
	case f.StartPort == 0 || f.EndPort < f.StartPort:
		return flowFilter{}, fmt.Errorf("flow to %s: ports %d-%d are not a range within 1-65535", f.DestIP, f.StartPort, f.EndPort)
	}
	for _, s := range f.SrcIPs {
		if !s.Is4() {
			return flowFilter{}, fmt.Errorf("flow to %s: source %v is not an IPv4 address", f.DestIP, s)
		}
	}
	return flowFilter{f.SrcIPs, f.SrcTag, f.DestIP, proto, f.StartPort, f.EndPort}, nil
}

// MatchConntrackFlow reports whether the entry is one of the flow's
// connections.
func (f flowFilter) MatchConntrackFlow(c *netlink.ConntrackFlow) bool {
	t := c.Forward
	if t.Protocol != f.proto || addrOf(t.DstIP) != f.dst || t.DstPort < f.lo || t.DstPort > f.hi {
		return false
	}
	if len(f.srcs) > 0 && !slices.Contains(f.srcs, addrOf(t.SrcIP)) {
		return false
	}
	return f.tag == 0 || (c.Mark&ctMarkPoliced != 0 && uint16(c.Mark&TagMask) == f.tag)
}

type disallowedFilter struct {
	locals map[netip.Addr]bool
	allows []allowElem // sorted
}

// MatchConntrackFlow reports whether the entry is a connection accepted to
// a local instance that the allows no longer cover.
func (f disallowedFilter) MatchConntrackFlow(c *netlink.ConntrackFlow) bool {
	dst := addrOf(c.Forward.DstIP)
	if c.Mark&ctMarkPoliced == 0 || !dst.Is4() || !f.locals[dst] {
		return false
	}
	g := packGroup(dst, uint16(c.Mark&TagMask), c.Forward.Protocol)
	port := c.Forward.DstPort
	i, _ := slices.BinarySearchFunc(f.allows, g, func(e allowElem, g uint64) int {
		if e.group < g {
			return -1
		} else if e.group > g {
			return 1
		}
		return 0
	})
	for ; i < len(f.allows) && f.allows[i].group == g; i++ {
		if port >= f.allows[i].lo && port <= f.allows[i].hi {
			return false
		}
	}
	return true
}
