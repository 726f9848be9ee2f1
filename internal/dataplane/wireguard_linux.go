package dataplane

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/trellis-c2c/trellis/internal/wireguard"
)

// setWireGuard converges the cell's WireGuard device to c and peers: the
// engine running with the cell's key and port (made, or adopted from this
// process or the kernel), the device's MTU, its address, a route to every
// peer's device address, and the peer set. It comes before the VTEP that
// sends through it. It returns the kernel ops it applied.
func (d *Dataplane) setWireGuard(k nsKernel, c Cell, peers []Peer, underlayMTU int) ([]op, error) {
	wg := c.WireGuard
	mtu := underlayMTU - wireguard.Overhead
	if d.wg == nil {
		if d.engines.Up == nil {
			return nil, errNoEngines
		}
		e, err := d.engines.Up(wireguard.Config{NetNS: d.ns, Name: WGName, PrivateKey: wg.PrivateKey,
			ListenPort: wg.ListenPort, MTU: mtu, Kind: wg.Engine, Log: d.log})
		if err != nil {
			return nil, err
		}
		d.setWG(e)
		d.log.Info("WireGuard device up", "engine", e.Kind(), "public_key", e.PublicKey().String(), "port", e.ListenPort())
	} else if d.wg.PublicKey() != wg.PrivateKey.PublicKey() {
		if err := d.wg.SetKey(wg.PrivateKey); err != nil {
			return nil, err
		}
		d.log.Info("WireGuard key replaced", "public_key", d.wg.PublicKey().String())
	}
	l, err := k.mustLink(WGName)
	if err != nil {
		return nil, err
	}
	local := netip.PrefixFrom(WireGuardAddr(c.Subnet), 32)
	var ops []op
	if l.Attrs().MTU != mtu {
		ops = append(ops, linkSetMTU{WGName, mtu})
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return k.h.AddrList(l, unix.AF_INET) })
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", WGName, err)
	}
	var have []netip.Prefix
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); ok {
			have = append(have, p)
		}
	}
	for _, p := range have {
		if p != local {
			ops = append(ops, addrDel{WGName, p})
		}
	}
	if !slices.Contains(have, local) {
		ops = append(ops, addrAdd{Dev: WGName, Local: local})
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		ops = append(ops, linkSetUp{WGName})
	}
	routes, err := retryDump(func() ([]netlink.Route, error) { return k.h.RouteList(l, unix.AF_INET) })
	if err != nil {
		return nil, fmt.Errorf("list routes on %s: %w", WGName, err)
	}
	haveRoutes := map[netip.Prefix]routeState{}
	for _, r := range routes {
		if dst, ok := prefixOf(r.Dst); ok && r.Protocol != unix.RTPROT_KERNEL {
			haveRoutes[dst] = routeState{Dst: dst, Gw: addrOf(r.Gw), Src: addrOf(r.Src), OnLink: r.Flags&int(netlink.FLAG_ONLINK) != 0}
		}
	}
	wantRoutes := map[netip.Prefix]routeState{}
	for _, p := range peers {
		if p.UnderlayIP == c.UnderlayIP && p.Subnet == c.Subnet {
			continue
		}
		dst := netip.PrefixFrom(WireGuardAddr(p.Subnet), 32)
		wantRoutes[dst] = routeState{Dst: dst, Src: local.Addr()}
	}
	for _, dst := range sortedKeys(haveRoutes, netip.Prefix.Compare) {
		if _, ok := wantRoutes[dst]; !ok {
			ops = append(ops, routeDel{WGName, dst})
		}
	}
	for _, dst := range sortedKeys(wantRoutes, netip.Prefix.Compare) {
		if r := wantRoutes[dst]; haveRoutes[dst] != r {
			ops = append(ops, routeReplace{WGName, r})
		}
	}
	for i, o := range ops {
		if err := k.apply(o); err != nil {
			return ops[:i], fmt.Errorf("%v: %w", o, err)
		}
	}
	if err := d.wg.SetPeers(wgPeers(c, peers)); err != nil {
		return ops, err
	}
	return ops, nil
}

// removeWireGuard deletes the cell's WireGuard device (after the VTEP
// stopped sending through it): the engine this value runs, or one it finds
// (made by an earlier agent in this process, or a kernel device).
func (d *Dataplane) removeWireGuard(k nsKernel) ([]op, error) {
	if d.wg != nil {
		err := d.wg.Close()
		d.setWG(nil)
		d.log.Info("WireGuard device removed")
		return []op{linkDel{WGName}}, err
	}
	if _, found, err := k.link(WGName); err != nil || !found {
		return nil, err
	}
	if d.engines.Down == nil {
		return nil, errNoEngines
	}
	if err := d.engines.Down(d.ns, WGName); err != nil {
		return nil, err
	}
	d.log.Info("WireGuard device removed")
	return []op{linkDel{WGName}}, nil
}

// errNoEngines: a Set needs WireGuard and d was given no engines.
var errNoEngines = errors.New("this dataplane has no WireGuard engines (UseWireGuard)")

// blackholeMetric is the metric of the overlay's fallback route: the worst,
// so that any other route to the overlay wins.
const blackholeMetric = 1<<32 - 1

// overlayFallback is the route that drops packets to the overlay silently
// while the VTEP (and the routes on it) is being remade — when encryption
// is turned on or off — instead of answering "network unreachable" (which
// fails a connection at once where a dropped SYN is only retried) or
// letting them out by a default route in plaintext.
func overlayFallback(overlay netip.Prefix) *netlink.Route {
	return &netlink.Route{Dst: ipnet(overlay), Type: unix.RTN_BLACKHOLE, Priority: blackholeMetric}
}
