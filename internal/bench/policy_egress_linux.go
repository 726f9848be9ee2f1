package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/dataplane"
	"github.com/trellis-c2c/trellis/internal/underlay"
)

// The egress figures: the client container on cell1 to a host outside the
// overlay, through cell1's masquerade, with 1 and with 1,000 security
// group rules in trellis's egress table against conntrack + masquerade
// alone.
type egressMode int

const (
	egressNAT  egressMode = iota // the bench's own table: conntrack + masquerade, no filtering
	egressOne                    // trellis's egress table, the 1 rule the client needs
	egressMany                   // trellis's egress table, 1,000 rules including that one
	numEgressModes
)

var (
	egressNames = [numEgressModes]string{"conntrack + NAT alone", "egress, 1 ASG rule", "egress, 1,000 ASG rules"}
	egressKeys  = [numEgressModes]string{"nat", "asg-1", "asg-1k"} // in Report.Samples and figure IDs
)

// egressRules returns the client's one rule (tcp to the outside host on
// the iperf3 and connection ports, not deniedPort) and, for many, 999
// rules of other instances of cell1 to other destinations before it.
func egressRules(client netip.Addr, many bool) []dataplane.EgressRule {
	allow := dataplane.EgressRule{SrcIP: client, Protocol: "tcp", DestStart: underlay.OutsideIP, DestEnd: underlay.OutsideIP,
		StartPort: iperf3Port, EndPort: connPort}
	if !many {
		return []dataplane.EgressRule{allow}
	}
	var out []dataplane.EgressRule
	for i := 1; len(out) < 999; i++ {
		src := netip.AddrFrom4([4]byte{10, 255, 1, byte(3 + i%250)})
		dst := netip.AddrFrom4([4]byte{192, 0, byte(2 + i/250), byte(i % 250)})
		out = append(out, dataplane.EgressRule{SrcIP: src, Protocol: "tcp", DestStart: dst, DestEnd: dst, StartPort: uint16(1000 + i), EndPort: uint16(1000 + i)})
	}
	return append(out, allow)
}

// buildOutside attaches an outside host to the bench's underlay (at
// 198.51.100.1, holding underlay.OutsideIP on its loopback, as the local
// foundation's) and routes cell1 to it. The outside host has no route to
// the overlay: only masqueraded traffic gets answers.
func (r *run) buildOutside(attach attachFunc, cell benchCell) (endpoint, error) {
	path, gw, err := attach("outside", 1)
	if err != nil {
		return endpoint{}, err
	}
	oh, err := r.handle(path)
	if err != nil {
		return endpoint{}, err
	}
	lo, err := oh.LinkByName("lo")
	if err == nil {
		err = oh.LinkSetUp(lo)
	}
	if err == nil {
		err = oh.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: underlay.OutsideIP.AsSlice(), Mask: net.CIDRMask(32, 32)}})
	}
	if err != nil {
		return endpoint{}, fmt.Errorf("outside host %s: %w", underlay.OutsideIP, err)
	}
	ch, err := r.handle(cell.NetNS)
	if err != nil {
		return endpoint{}, err
	}
	dev, err := ch.LinkByName(cell.UnderlayDevice)
	if err == nil {
		err = ch.RouteAdd(&netlink.Route{LinkIndex: dev.Attrs().Index, Gw: gw.AsSlice(), Dst: ipNet(underlay.OutsidePrefix)})
	}
	if err != nil {
		return endpoint{}, fmt.Errorf("route to %s in %s: %w", underlay.OutsidePrefix, cell.NetNS, err)
	}
	return endpoint{ns: path, ip: underlay.OutsideIP}, nil
}

// addMasquerade makes the bench's table in the namespace at path
// masquerade what leaves the overlay from it (ip saddr in overlay, ip
// daddr not), as trellis's egress table does, and nothing else: the cost
// of conntrack + NAT alone.
func addMasquerade(path string, overlay netip.Prefix) error {
	c, done, err := openNft(path)
	if err != nil {
		return err
	}
	defer done()
	tbl := c.AddTable(linearTableOf)
	accept := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Name: "postrouting", Table: tbl, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})
	mask := net.CIDRMask(overlay.Bits(), 32)
	in := func(off uint32, op expr.CmpOp) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: op, Register: 1, Data: overlay.Masked().Addr().AsSlice()},
		}
	}
	exprs := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{2}}, // NFPROTO_IPV4
	}
	exprs = append(exprs, in(12, expr.CmpOpEq)...)
	exprs = append(exprs, in(16, expr.CmpOpNeq)...)
	exprs = append(exprs, &expr.Masq{})
	c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: exprs})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("masquerade of the bench in %s: %w", path, err)
	}
	return nil
}

// egressThroughput measures TCP throughput and new connections per second
// from the client container on cell1 to an outside host under each egress
// mode, interleaved as the cross-cell policy figures are, and appends the
// figures to rep. cell1 must have no policy table.
func (r *run) egressThroughput(rep *Report, attach attachFunc, cell benchCell, client endpoint, quick bool) error {
	outside, err := r.buildOutside(attach, cell)
	if err != nil {
		return err
	}
	if err := r.iperf3Server(outside); err != nil {
		return err
	}
	for _, port := range []uint16{connPort, deniedPort} {
		if err := r.acceptClose(outside, port); err != nil {
			return err
		}
	}
	r.onCleanup(func() error { return errors.Join(delLinear(cell.NetNS), cell.dp.TeardownEgress()) })
	apply := func(m egressMode) error {
		if err := errors.Join(delLinear(cell.NetNS), cell.dp.TeardownEgress()); err != nil {
			return err
		}
		if m == egressNAT {
			return addMasquerade(cell.NetNS, overlayNet)
		}
		_, err := cell.dp.Set(r.ctx, dataplane.Desired{Egress: &dataplane.Egress{Overlay: overlayNet,
			Guarded: []netip.Addr{cell.UnderlayIP}, Rules: egressRules(client.ip, m == egressMany)}})
		return err
	}
	each := func(n int, fn func(m egressMode) error) error {
		for i := range numEgressModes {
			m := (egressMode(n) + i) % numEgressModes
			if err := apply(m); err != nil {
				return fmt.Errorf("%s: %w", egressNames[m], err)
			}
			if err := r.checkReach(client, outside, m != egressNAT); err != nil {
				return fmt.Errorf("%s: %w", egressNames[m], err)
			}
			if err := fn(m); err != nil {
				return fmt.Errorf("%s: %w", egressNames[m], err)
			}
		}
		return nil
	}
	p := paramsFor(quick)
	connRounds, connFor := 20, 250*time.Millisecond
	if quick {
		connRounds, connFor = 4, 200*time.Millisecond
	}
	// Warm-up of the new path.
	if err := apply(egressNAT); err != nil {
		return err
	}
	if _, err := r.connRate(client, netip.AddrPortFrom(outside.ip, connPort), 200*time.Millisecond); err != nil {
		return fmt.Errorf("egress warm-up: %w", err)
	}
	var tput, conns, cpuPer [numEgressModes][]float64
	for n := 1; n <= p.runs; n++ {
		if err := each(n-1, func(m egressMode) error {
			g, err := r.iperf3Client(client, outside, 1, p)
			if err != nil {
				return err
			}
			r.logf("egress TCP run %d/%d, %-24s %6.2f Gbit/s", n, p.runs, egressNames[m]+":", g)
			tput[m] = append(tput[m], g)
			return nil
		}); err != nil {
			return err
		}
	}
	for n := range connRounds {
		if err := each(n, func(m egressMode) error {
			c, _, cpu, err := r.connRound(client, netip.AddrPortFrom(outside.ip, connPort), connFor)
			if err != nil {
				return err
			}
			conns[m] = append(conns[m], c)
			cpuPer[m] = append(cpuPer[m], cpu)
			return nil
		}); err != nil {
			return err
		}
	}
	for m := range numEgressModes {
		r.logf("egress new connections, %-24s median %6.0f/s of %d rounds (%.0f to %.0f)", egressNames[m]+":",
			median(conns[m]), len(conns[m]), slices.Min(conns[m]), slices.Max(conns[m]))
		rep.Samples["egress-tcp-1/"+egressKeys[m]] = tput[m]
		rep.Samples["egress-conn-rate/"+egressKeys[m]] = conns[m]
		rep.Samples["egress-conn-cpu/"+egressKeys[m]] = cpuPer[m]
	}
	if err := errors.Join(delLinear(cell.NetNS), cell.dp.TeardownEgress()); err != nil {
		return err
	}
	base := "same path, conntrack + masquerade alone (no egress filtering)"
	for _, m := range []egressMode{egressOne, egressMany} {
		g := &goal{ratio: true, limit: 0.95}
		rep.Figures = append(rep.Figures,
			newPairedFigure("policy/egress-tcp-1-"+egressKeys[m], "egress TCP to the outside host, 1 stream, "+egressNames[m], "Gbit/s",
				tput[m], tput[egressNAT], base, g),
			newPairedFigure("policy/egress-conn-rate-"+egressKeys[m], "egress new connections to the outside host, "+egressNames[m], "conn/s",
				conns[m], conns[egressNAT], base, g),
			newPairedFigure("policy/egress-conn-cpu-"+egressKeys[m], "CPU per egress new connection (whole machine), "+egressNames[m], "µs",
				cpuPer[m], cpuPer[egressNAT], base, nil))
	}
	how := fmt.Sprintf("median of %d runs of %d s (first %d s left out)", p.runs, p.seconds, p.omit)
	if p.runs == 1 {
		how = fmt.Sprintf("one run of %d s", p.seconds)
	}
	rep.Notes = append(rep.Notes, fmt.Sprintf("egress figures: the client container on cell1 to an outside host (%s on the loopback of a namespace on the underlay, "+
		"routed from cell1, with no route back to the overlay, so every answer needs cell1's masquerade), after the cross-cell figures with no policy table; "+
		"throughput: iperf3 TCP, 1 stream, client pinned to CPU 0 and server to CPU 1, %s; new connections and the CPU per new connection: as the cross-cell ones, median of %d rounds of %v. Interleaved within each run or round: "+
		"the baseline, a table of the bench's own that masquerades what leaves the overlay (conntrack + NAT, no filtering); "+
		"trellis's egress table (dataplane Set, as the agent programs it: default deny, masquerade, set lookups) with the 1 rule the client needs "+
		"(tcp %d-%d to %s) and with 1,000 rules (999 of other instances to other destinations, then that one). "+
		"A path with no nftables at all is not measured: without NAT the outside host cannot answer. "+
		"Before each measurement, tcp %d to the outside host is checked to be refused under trellis's table and reachable under the baseline.",
		underlay.OutsideIP, how, connRounds, connFor, iperf3Port, connPort, underlay.OutsideIP, deniedPort))
	return nil
}

// egressPropagation times, on the local foundation, how fast binding a
// security group to the source's space lets the source instance's first
// SYN to the outside host through (and unbinding refuses it again): probe
// says how long until a connection succeeds (true) or is refused (false).
func egressPropagation(ctx context.Context, rep *Report, c *api.Client, space, outside string, n int,
	probe func(addr string, want bool) (time.Duration, error), step func(string, ...any)) error {
	addr := net.JoinHostPort(outside, "80")
	if _, err := probe(addr, false); err != nil {
		return fmt.Errorf("egress before any security group: %w", err)
	}
	name := "bench-egress"
	rules := []api.SecurityGroupRule{{Protocol: "tcp", Destination: outside, Ports: "80"}}
	g, err := c.CreateSecurityGroup(ctx, api.SecurityGroupRequest{Name: &name, Rules: &rules})
	if err != nil {
		return err
	}
	step("egress: %d binds and unbinds of a security group (tcp %s) to the source's space, timing the first allowed and the first refused SYN", n, addr)
	var binds, unbinds, calls []float64
	for i := 0; i < n; i++ {
		t0 := time.Now()
		if err := c.BindSecurityGroup(ctx, g.GUID, "running", []string{space}); err != nil {
			return err
		}
		calls = append(calls, ms(time.Since(t0)))
		d, err := probe(addr, true)
		if err != nil {
			return fmt.Errorf("after bind %d: %w", i+1, err)
		}
		binds = append(binds, ms(d))
		if err := c.UnbindSecurityGroup(ctx, g.GUID, "running", space); err != nil {
			return err
		}
		if d, err = probe(addr, false); err != nil {
			return fmt.Errorf("after unbind %d: %w", i+1, err)
		}
		unbinds = append(unbinds, ms(d))
	}
	if err := c.DeleteSecurityGroup(ctx, g.GUID); err != nil {
		return err
	}
	rep.Samples["egress-bind/trellis"], rep.Samples["egress-unbind/trellis"] = binds, unbinds
	rep.Samples["api-bind-security-group/trellis"] = calls
	const cfASGPoll = 60000.0
	cfBase := "Cloud Foundry's dynamic-ASG poll interval, asg_poll_interval_seconds (documented, not measured)"
	rep.Figures = append(rep.Figures,
		newFigure("policy/egress-bind-p50", "security group bind → first allowed SYN to the outside host, p50", "ms", percentile(binds, 50), cfASGPoll, cfBase, &goal{atMost: true, limit: 100}),
		newFigure("policy/egress-bind-p99", "security group bind → first allowed SYN to the outside host, p99", "ms", percentile(binds, 99), cfASGPoll, cfBase, &goal{atMost: true, limit: 100}))
	rep.Notes = append(rep.Notes, fmt.Sprintf("egress propagation: the same local foundation; a security group allowing tcp to %s is bound to (running) and unbound from the source's space %d times; "+
		"the clock starts when the bind API call returns (median call %.1f ms) and stops at the first TCP connect from the source instance to the outside host's sample app that succeeds; "+
		"after each unbind the probe waits for a refused connect (median %.1f ms, p99 %.1f ms, in the samples), probing every 0.2 ms", addr, n, median(calls), median(unbinds), percentile(unbinds, 99)))
	return nil
}
