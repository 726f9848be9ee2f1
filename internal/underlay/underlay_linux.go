// Package underlay builds the local foundation's stand-in for a data-centre
// network: an underlay namespace holding a bridge, and cell namespaces
// attached to it by veths with addresses from 198.51.100.0/24. Nothing is
// created outside the namespaces it names, so it is safe on a shared machine.
package underlay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"

	"github.com/trellis-c2c/trellis/internal/netns"
)

// Defaults of the local underlay. 198.51.100.0/24 is a documentation
// network (192.0.2.0/24 is taken by the machines' own uplink here).
var (
	Prefix = netip.MustParsePrefix("198.51.100.0/24")
	MTU    = 1500
)

// Bridge is the name of the underlay bridge; Device the cells' underlay device.
const (
	Bridge = "br0"
	Device = "eth0"
)

// The outside world of the local foundation: a host in the documentation
// network 203.0.113.0/24, reached from the cells through a router on the
// underlay. Nothing of the overlay routes to it: instances reach it only
// through their cell's egress (security groups, masquerade).
var (
	OutsidePrefix = netip.MustParsePrefix("203.0.113.0/24")
	OutsideIP     = netip.MustParseAddr("203.0.113.10")
	RouterIP      = netip.MustParseAddr("198.51.100.254")
)

// Underlay is an underlay namespace with cells attached.
type Underlay struct {
	NetNS string // namespace name
	Cells []Cell
	// Outside is the namespace of the outside host (prefix+"-outside"):
	// the router at RouterIP on the underlay, holding OutsideIP.
	Outside string
}

// Cell is one cell namespace on the underlay.
type Cell struct {
	Name  string     // cell1, cell2, ...
	NetNS string     // namespace name
	IP    netip.Addr // 198.51.100.(10+i)
	Port  string     // its veth's bridge port in the underlay namespace
}

// Build makes namespace prefix+"-underlay" with a bridge and n cells named
// prefix+"-cellI", cell I at 198.51.100.(10+I). On failure it removes what
// it made.
func Build(prefix string, n int) (u *Underlay, err error) {
	if n < 1 || n > 200 {
		return nil, fmt.Errorf("cells: %d: must be 1 to 200", n)
	}
	u = &Underlay{NetNS: prefix + "-underlay"}
	defer func() {
		if err != nil {
			u.Destroy()
		}
	}()
	if _, err := netns.Create(u.NetNS); err != nil {
		return u, err
	}
	uh, err := netns.Handle(netns.Path(u.NetNS))
	if err != nil {
		return u, err
	}
	defer uh.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: Bridge, MTU: MTU}}
	if err := uh.LinkAdd(br); err != nil {
		return u, fmt.Errorf("add bridge in %s: %w", u.NetNS, err)
	}
	if err := uh.LinkSetUp(br); err != nil {
		return u, fmt.Errorf("set bridge up in %s: %w", u.NetNS, err)
	}
	for i := 1; i <= n; i++ {
		c := Cell{Name: fmt.Sprintf("cell%d", i), IP: netip.AddrFrom4([4]byte{198, 51, 100, byte(10 + i)})}
		c.NetNS, c.Port = prefix+"-"+c.Name, c.Name
		if _, err := netns.Create(c.NetNS); err != nil {
			return u, err
		}
		u.Cells = append(u.Cells, c)
		// Denied UDP is answered with ICMP port unreachable, which the
		// kernel rate-limits per peer (about 1/s after a burst of 6): in
		// the cells of a local foundation every denial is answered.
		if err := netns.Sysctl(netns.Path(c.NetNS), "net/ipv4/icmp_ratelimit", "0"); err != nil {
			return u, err
		}
		if err := attach(uh, br, c); err != nil {
			return u, fmt.Errorf("attach %s to the underlay: %w", c.Name, err)
		}
	}
	if err := u.buildOutside(uh, br, prefix); err != nil {
		return u, fmt.Errorf("build the outside host: %w", err)
	}
	return u, nil
}

// buildOutside makes the outside namespace: attached to the bridge at
// RouterIP, OutsideIP on its loopback, and a route to OutsidePrefix
// through it in every cell.
func (u *Underlay) buildOutside(uh *netlink.Handle, br *netlink.Bridge, prefix string) error {
	u.Outside = prefix + "-outside"
	if _, err := netns.Create(u.Outside); err != nil {
		return err
	}
	o := Cell{Name: "outside", NetNS: u.Outside, IP: RouterIP, Port: "outside"}
	if err := attach(uh, br, o); err != nil {
		return err
	}
	oh, err := netns.Handle(netns.Path(u.Outside))
	if err != nil {
		return err
	}
	defer oh.Close()
	lo, err := oh.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := oh.LinkSetUp(lo); err != nil {
		return err
	}
	if err := oh.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: OutsideIP.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		return fmt.Errorf("add %s: %w", OutsideIP, err)
	}
	// Its answers leave from OutsideIP, also those of sockets bound to
	// the wildcard address (a UDP echo): the cells' conntrack matches
	// replies by address.
	dev, err := oh.LinkByName(Device)
	if err != nil {
		return err
	}
	if err := oh.RouteReplace(&netlink.Route{LinkIndex: dev.Attrs().Index, Scope: netlink.SCOPE_LINK, Src: OutsideIP.AsSlice(),
		Dst: &net.IPNet{IP: Prefix.Addr().AsSlice(), Mask: net.CIDRMask(Prefix.Bits(), 32)}}); err != nil {
		return fmt.Errorf("route to the underlay from %s: %w", OutsideIP, err)
	}
	for _, c := range u.Cells {
		ch, err := netns.Handle(netns.Path(c.NetNS))
		if err != nil {
			return err
		}
		dev, err := ch.LinkByName(Device)
		if err == nil {
			err = ch.RouteAdd(&netlink.Route{LinkIndex: dev.Attrs().Index, Gw: RouterIP.AsSlice(),
				Dst: &net.IPNet{IP: OutsidePrefix.Addr().AsSlice(), Mask: net.CIDRMask(OutsidePrefix.Bits(), 32)}})
		}
		ch.Close()
		if err != nil {
			return fmt.Errorf("route to %s in %s: %w", OutsidePrefix, c.NetNS, err)
		}
	}
	return nil
}

func attach(uh *netlink.Handle, br *netlink.Bridge, c Cell) error {
	fd, err := vnetns.GetFromPath(netns.Path(c.NetNS))
	if err != nil {
		return err
	}
	defer fd.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: c.Port, MTU: MTU, MasterIndex: br.Attrs().Index},
		PeerName:      Device,
		PeerMTU:       uint32(MTU),
		PeerNamespace: netlink.NsFd(fd),
	}
	if err := uh.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s: %w", c.Port, err)
	}
	if err := uh.LinkSetUp(veth); err != nil {
		return fmt.Errorf("set %s up: %w", c.Port, err)
	}
	ch, err := netns.Handle(netns.Path(c.NetNS))
	if err != nil {
		return err
	}
	defer ch.Close()
	dev, err := ch.LinkByName(Device)
	if err != nil {
		return err
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: c.IP.AsSlice(), Mask: net.CIDRMask(Prefix.Bits(), 32)}}
	if err := ch.AddrAdd(dev, a); err != nil {
		return fmt.Errorf("add %s to %s: %w", c.IP, Device, err)
	}
	return ch.LinkSetUp(dev)
}

// Destroy deletes the underlay's namespaces (and with them every link in
// them). It goes on after errors and returns them all.
func (u *Underlay) Destroy() error {
	var errs []error
	for _, c := range u.Cells {
		errs = append(errs, netns.Delete(c.NetNS))
	}
	if u.Outside != "" {
		errs = append(errs, netns.Delete(u.Outside))
	}
	errs = append(errs, netns.Delete(u.NetNS))
	return errors.Join(errs...)
}
