package dataplane

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// setOverlay is Set's overlay part. It converges the cell's overlay to c
// and peers: the VTEP with its address, and for every peer a route, a
// permanent ARP entry and a permanent FDB entry on the VTEP. Entries for
// cells that are no longer peers are removed. It reads what the kernel has
// and changes only what differs, so calling it again with the same input
// writes nothing. A peer equal to the cell itself is ignored. It returns
// the ops it applied.
func (d *Dataplane) setOverlay(ctx context.Context, c Cell, peers []Peer) ([]op, error) {
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("set overlay: %w", err)
	}
	k, err := openKernel(d.ns)
	if err != nil {
		return nil, fmt.Errorf("set overlay: cell %w", err)
	}
	defer k.close()
	// Check the device before planning: a plan for a wrong device would
	// start by deleting the working VTEP.
	dev, err := k.mustLink(c.UnderlayDevice)
	if err != nil {
		return nil, fmt.Errorf("set overlay in %s: underlay device: %w", d.ns, err)
	}
	mtu := cmp.Or(c.MTU, dev.Attrs().MTU)
	want, err := desiredOverlay(c, peers, mtu)
	if err != nil {
		return nil, fmt.Errorf("set overlay in %s: %w", d.ns, err)
	}
	have, err := readOverlay(k)
	if err != nil {
		return nil, fmt.Errorf("set overlay in %s: %w", d.ns, err)
	}
	// The WireGuard device is there before the VTEP sends through it, and
	// goes after the VTEP stopped.
	var wgOps []op
	if c.WireGuard != nil {
		if wgOps, err = d.setWireGuard(k, c, peers, mtu); err != nil {
			return wgOps, fmt.Errorf("set overlay in %s: WireGuard: %w", d.ns, err)
		}
	}
	ops := planOverlay(have, want)
	if slices.Contains(ops, op(linkDel{VTEPName})) {
		// The VTEP is remade (encryption went on or off): keep packets to
		// the overlay from failing fast or leaking meanwhile.
		if err := k.h.RouteReplace(overlayFallback(c.Overlay)); err != nil {
			return wgOps, fmt.Errorf("set overlay in %s: fallback route: %w", d.ns, err)
		}
	}
	for i, o := range ops {
		if err := ctx.Err(); err != nil {
			return append(wgOps, ops[:i]...), fmt.Errorf("set overlay in %s: %w", d.ns, err)
		}
		if err := k.apply(o); err != nil {
			return append(wgOps, ops[:i]...), fmt.Errorf("set overlay in %s: %v: %w", d.ns, o, err)
		}
	}
	ops = append(wgOps, ops...)
	// Plain VXLAN from the underlay is refused while encryption is on
	// (set once the VTEP sends inside WireGuard, removed once it no
	// longer does).
	if err := d.setVXLANGuard(c.WireGuard != nil, cmp.Or(c.Port, DefaultPort)); err != nil {
		return ops, fmt.Errorf("set overlay in %s: %w", d.ns, err)
	}
	if c.WireGuard == nil {
		rm, err := d.removeWireGuard(k)
		ops = append(ops, rm...)
		if err != nil {
			return ops, fmt.Errorf("set overlay in %s: WireGuard: %w", d.ns, err)
		}
	}
	return ops, nil
}

// TeardownOverlay deletes the cell's VTEP, and with it every overlay route,
// neighbour and FDB entry. It is not an error if there is none.
func (d *Dataplane) TeardownOverlay() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	k, err := openKernel(d.ns)
	if err != nil {
		return fmt.Errorf("teardown overlay: cell %w", err)
	}
	defer k.close()
	if err := k.apply(linkDel{VTEPName}); err != nil {
		return fmt.Errorf("teardown overlay in %s: delete %s: %w", d.ns, VTEPName, err)
	}
	if _, err := d.removeWireGuard(k); err != nil {
		return fmt.Errorf("teardown overlay in %s: %w", d.ns, err)
	}
	d.guardSet = false
	if err := d.setVXLANGuard(false, 0); err != nil {
		return fmt.Errorf("teardown overlay in %s: %w", d.ns, err)
	}
	return nil
}

// readOverlay dumps the overlay part of the namespace's kernel state.
func readOverlay(k nsKernel) (overlayState, error) {
	var s overlayState
	fwd, err := k.getSysctl("net.ipv4.ip_forward")
	if err != nil {
		return s, err
	}
	s.Forwarding = fwd == "1"

	l, found, err := k.link(VTEPName)
	if err != nil || !found {
		return s, err
	}
	a := l.Attrs()
	v := &vtepState{Kind: l.Type(), MTU: a.MTU, Up: a.Flags&net.FlagUp != 0}
	v.MAC, _ = macFromHW(a.HardwareAddr)
	if vx, ok := l.(*netlink.Vxlan); ok {
		v.VNI, v.Port, v.GBP, v.Learning = vx.VxlanId, vx.Port, vx.GBP, vx.Learning
		v.Local = addrOf(vx.SrcAddr)
		if vx.VtepDevIndex != 0 {
			dev, err := retryDump(func() (netlink.Link, error) { return k.h.LinkByIndex(vx.VtepDevIndex) })
			if err != nil {
				return s, fmt.Errorf("find underlay device of %s: %w", VTEPName, err)
			}
			v.Dev = dev.Attrs().Name
		}
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return k.h.AddrList(l, unix.AF_INET) })
	if err != nil {
		return s, fmt.Errorf("list addresses of %s: %w", VTEPName, err)
	}
	for _, ad := range addrs {
		if p, ok := prefixOf(ad.IPNet); ok {
			v.Addrs = append(v.Addrs, p)
		}
	}
	slices.SortFunc(v.Addrs, netip.Prefix.Compare)
	s.VTEP = v

	routes, err := retryDump(func() ([]netlink.Route, error) { return k.h.RouteList(l, unix.AF_INET) })
	if err != nil {
		return s, fmt.Errorf("list routes on %s: %w", VTEPName, err)
	}
	s.Routes = map[netip.Prefix]routeState{}
	for _, r := range routes {
		dst, ok := prefixOf(r.Dst)
		if !ok || r.Protocol == unix.RTPROT_KERNEL {
			continue // the kernel's route for the VTEP's own address
		}
		s.Routes[dst] = routeState{
			Dst:    dst,
			Gw:     addrOf(r.Gw),
			Src:    addrOf(r.Src),
			OnLink: r.Flags&int(netlink.FLAG_ONLINK) != 0,
		}
	}

	idx := a.Index
	neighs, err := retryDump(func() ([]netlink.Neigh, error) { return k.h.NeighList(idx, unix.AF_INET) })
	if err != nil {
		return s, fmt.Errorf("list neighbours on %s: %w", VTEPName, err)
	}
	s.Neighs = map[netip.Addr]neighState{}
	for _, n := range neighs {
		ip := addrOf(n.IP)
		if !ip.IsValid() {
			continue
		}
		m, _ := macFromHW(n.HardwareAddr)
		s.Neighs[ip] = neighState{IP: ip, MAC: m, Permanent: n.State&netlink.NUD_PERMANENT != 0}
	}

	fdb, err := retryDump(func() ([]netlink.Neigh, error) { return k.h.NeighList(idx, unix.AF_BRIDGE) })
	if err != nil {
		return s, fmt.Errorf("list FDB of %s: %w", VTEPName, err)
	}
	s.FDB = map[mac]fdbState{}
	for _, n := range fdb {
		m, ok := macFromHW(n.HardwareAddr)
		if !ok {
			continue
		}
		e := s.FDB[m]
		e.Dsts = append(e.Dsts, addrOf(n.IP))
		e.Permanent = n.State&netlink.NUD_PERMANENT != 0
		s.FDB[m] = e
	}
	return s, nil
}
