package dataplane

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/trellis-c2c/trellis/internal/wireguard"
)

// Overlay defaults, from Cloud Foundry silk.
const (
	// VTEPName is the VXLAN device every cell uses.
	VTEPName = "trellis-vtep"
	// DefaultVNI is the VXLAN network identifier used when Cell.VNI is 0.
	DefaultVNI = 1
	// DefaultPort is the VXLAN UDP port used when Cell.Port is 0.
	DefaultPort = 4789
	// VXLANOverhead is what VXLAN adds to every packet on an IPv4
	// underlay: outer IPv4 (20), UDP (8), VXLAN (8) and inner Ethernet (14).
	VXLANOverhead = 50
)

// Cell describes one host of the overlay (whose network namespace is its
// Dataplane's): its underlay connection, and the overlay subnet leased to
// it.
type Cell struct {
	UnderlayDevice string       // the device that carries VXLAN, e.g. "eth0"
	UnderlayIP     netip.Addr   // this cell's address on UnderlayDevice
	Subnet         netip.Prefix // this cell's lease, e.g. 10.255.1.0/24
	Overlay        netip.Prefix // the whole overlay, e.g. 10.255.0.0/16
	VNI            int          // VXLAN network identifier; 0 means DefaultVNI
	Port           int          // VXLAN UDP port; 0 means DefaultPort
	MTU            int          // underlay MTU; 0 means read it from UnderlayDevice
	// WireGuard, when set, carries VXLAN between cells inside the cell's
	// WireGuard device (see WireGuardAddr); nil sends it on the underlay.
	WireGuard *WireGuard
}

// Peer is another cell as this cell needs to know it: where its VTEP is on
// the underlay and which overlay subnet lives behind it.
type Peer struct {
	UnderlayIP netip.Addr
	Subnet     netip.Prefix
	// WireGuardKey is the peer's WireGuard public key (zero: none
	// registered yet) and WireGuardPort its device's port (0: the
	// default); used while encryption is on.
	WireGuardKey  wireguard.Key
	WireGuardPort int
}

// vtepAddr is the address a cell's VTEP holds: the first address of its
// subnet. Overlay routes use it as gateway and as source.
func vtepAddr(subnet netip.Prefix) netip.Addr { return subnet.Masked().Addr() }

// vtepMAC is the MAC of the VTEP whose address is a, derivable by every
// other cell.
func vtepMAC(a netip.Addr) mac { return macFor(0xee, 0xee, a) }

// vtepState is the part of the VXLAN device planOverlay manages.
type vtepState struct {
	Kind     string // link type; anything but "vxlan" is replaced
	VNI      int
	Port     int
	GBP      bool
	Learning bool
	Local    netip.Addr
	Dev      string
	MAC      mac
	MTU      int
	Up       bool
	Addrs    []netip.Prefix // IPv4 addresses, sorted
}

// sameDevice reports whether have can be kept rather than recreated: these
// attributes are fixed when a VXLAN device is made.
func (v vtepState) sameDevice(want vtepState) bool {
	return v.Kind == want.Kind && v.VNI == want.VNI && v.Port == want.Port &&
		v.GBP == want.GBP && v.Learning == want.Learning && v.Local == want.Local &&
		v.Dev == want.Dev && v.MAC == want.MAC
}

type routeState struct {
	Dst    netip.Prefix
	Gw     netip.Addr
	Src    netip.Addr
	OnLink bool
}

type neighState struct {
	IP        netip.Addr
	MAC       mac
	Permanent bool
}

// fdbState is the forwarding entry for one MAC on the VTEP: its remote VTEPs
// in kernel order, and whether the entry is permanent.
type fdbState struct {
	Dsts      []netip.Addr
	Permanent bool
}

// overlayState is what the kernel has, or should have, for the overlay in a
// cell's namespace. Routes, neighbours and FDB entries are those on the
// VTEP; routes the kernel made for the VTEP's own address are left out.
type overlayState struct {
	Forwarding bool
	VTEP       *vtepState // nil: no device
	Routes     map[netip.Prefix]routeState
	Neighs     map[netip.Addr]neighState
	FDB        map[mac]fdbState
}

// desiredOverlay is the state Set converges the overlay to. underlayMTU is
// c.MTU, or the device's MTU when that is 0.
func desiredOverlay(c Cell, peers []Peer, underlayMTU int) (overlayState, error) {
	var want overlayState
	if err := c.validate(); err != nil {
		return want, err
	}
	mtu := OverlayMTU(underlayMTU, c.WireGuard != nil)
	if mtu < 68 {
		return want, fmt.Errorf("underlay MTU %d leaves overlay MTU %d, below the IPv4 minimum 68", underlayMTU, mtu)
	}
	local := vtepAddr(c.Subnet)
	// The VTEP's own address, and the underlay it sends on: the cell's
	// device and address, or its WireGuard device's while encryption is
	// on.
	dev, src := c.UnderlayDevice, c.UnderlayIP
	if c.WireGuard != nil {
		dev, src = WGName, WireGuardAddr(c.Subnet)
	}
	want = overlayState{
		Forwarding: true,
		VTEP: &vtepState{
			Kind:     "vxlan",
			VNI:      cmp.Or(c.VNI, DefaultVNI),
			Port:     cmp.Or(c.Port, DefaultPort),
			GBP:      true,
			Learning: false,
			Local:    src,
			Dev:      dev,
			MAC:      vtepMAC(local),
			MTU:      mtu,
			Up:       true,
			Addrs:    []netip.Prefix{netip.PrefixFrom(local, c.Overlay.Bits())},
		},
		Routes: map[netip.Prefix]routeState{},
		Neighs: map[netip.Addr]neighState{},
		FDB:    map[mac]fdbState{},
	}
	for _, p := range peers {
		if p.UnderlayIP == c.UnderlayIP && p.Subnet == c.Subnet {
			continue // this cell itself, as a list of all leases includes it
		}
		if err := c.validatePeer(p); err != nil {
			return want, err
		}
		for dst := range want.Routes {
			if dst.Overlaps(p.Subnet) {
				return want, fmt.Errorf("peer %s: subnet %s overlaps another peer's %s", p.UnderlayIP, p.Subnet, dst)
			}
		}
		gw := vtepAddr(p.Subnet)
		m := vtepMAC(gw)
		want.Routes[p.Subnet] = routeState{Dst: p.Subnet, Gw: gw, Src: local, OnLink: true}
		want.Neighs[gw] = neighState{IP: gw, MAC: m, Permanent: true}
		remote := p.UnderlayIP
		if c.WireGuard != nil {
			remote = WireGuardAddr(p.Subnet)
		}
		want.FDB[m] = fdbState{Dsts: []netip.Addr{remote}, Permanent: true}
	}
	return want, nil
}

func (c Cell) validate() error {
	switch {
	case c.UnderlayDevice == "":
		return fmt.Errorf("cell underlay device is empty")
	case !c.UnderlayIP.Is4():
		return fmt.Errorf("cell underlay IP %v is not an IPv4 address", c.UnderlayIP)
	case !c.Overlay.IsValid() || !c.Overlay.Addr().Is4() || c.Overlay != c.Overlay.Masked():
		return fmt.Errorf("overlay %v is not an IPv4 network address with prefix", c.Overlay)
	case !c.Subnet.IsValid() || !c.Subnet.Addr().Is4() || c.Subnet != c.Subnet.Masked():
		return fmt.Errorf("cell subnet %v is not an IPv4 network address with prefix", c.Subnet)
	case c.Subnet.Bits() <= c.Overlay.Bits() || !c.Overlay.Contains(c.Subnet.Addr()):
		return fmt.Errorf("cell subnet %s is not a subnet of overlay %s", c.Subnet, c.Overlay)
	case c.VNI < 0 || c.VNI >= 1<<24:
		return fmt.Errorf("VNI %d is outside 1..16777215", c.VNI)
	case c.Port < 0 || c.Port > 65535:
		return fmt.Errorf("VXLAN port %d is outside 1..65535", c.Port)
	case c.MTU < 0:
		return fmt.Errorf("underlay MTU %d is negative", c.MTU)
	}
	return nil
}

func (c Cell) validatePeer(p Peer) error {
	switch {
	case !p.UnderlayIP.Is4():
		return fmt.Errorf("peer %v: underlay IP is not an IPv4 address", p.UnderlayIP)
	case !p.Subnet.IsValid() || !p.Subnet.Addr().Is4() || p.Subnet != p.Subnet.Masked():
		return fmt.Errorf("peer %s: subnet %v is not an IPv4 network address with prefix", p.UnderlayIP, p.Subnet)
	case p.Subnet.Bits() <= c.Overlay.Bits() || !c.Overlay.Contains(p.Subnet.Addr()):
		return fmt.Errorf("peer %s: subnet %s is not a subnet of overlay %s", p.UnderlayIP, p.Subnet, c.Overlay)
	case p.Subnet.Overlaps(c.Subnet):
		return fmt.Errorf("peer %s: subnet %s overlaps this cell's %s", p.UnderlayIP, p.Subnet, c.Subnet)
	}
	return nil
}

// planOverlay returns the ops that turn have into want, in an order that
// keeps working paths working: the device first, then removals, then
// forwarding entries before the routes that use them. It returns nothing
// when have already matches want.
func planOverlay(have, want overlayState) []op {
	var ops []op
	if want.Forwarding && !have.Forwarding {
		ops = append(ops, sysctlSet{"net.ipv4.ip_forward", "1"})
	}
	if want.VTEP == nil {
		if have.VTEP != nil {
			ops = append(ops, linkDel{VTEPName})
		}
		return ops
	}
	w := *want.VTEP
	if have.VTEP != nil && !have.VTEP.sameDevice(w) {
		ops = append(ops, linkDel{VTEPName})
		have = overlayState{Forwarding: have.Forwarding}
	}
	if have.VTEP == nil {
		ops = append(ops, vtepAdd{VTEPName, w})
		for _, a := range w.Addrs {
			ops = append(ops, addrAdd{Dev: VTEPName, Local: a, LinkScope: true})
		}
		ops = append(ops, linkSetUp{VTEPName})
		// A new device has no routes, neighbours or FDB entries.
		have = overlayState{Forwarding: have.Forwarding, VTEP: &w}
	}
	h := *have.VTEP
	if h.MTU != w.MTU {
		ops = append(ops, linkSetMTU{VTEPName, w.MTU})
	}
	for _, a := range h.Addrs {
		if !slices.Contains(w.Addrs, a) {
			ops = append(ops, addrDel{VTEPName, a})
		}
	}
	for _, a := range w.Addrs {
		if !slices.Contains(h.Addrs, a) {
			ops = append(ops, addrAdd{Dev: VTEPName, Local: a, LinkScope: true})
		}
	}
	if !h.Up {
		ops = append(ops, linkSetUp{VTEPName})
	}

	// Removals: whatever no peer accounts for.
	for _, dst := range sortedKeys(have.Routes, netip.Prefix.Compare) {
		if _, ok := want.Routes[dst]; !ok {
			ops = append(ops, routeDel{VTEPName, dst})
		}
	}
	for _, ip := range sortedKeys(have.Neighs, netip.Addr.Compare) {
		// Entries the kernel made itself (incomplete, failed, ...) age
		// out; only permanent ones are ours to remove.
		if _, ok := want.Neighs[ip]; !ok && have.Neighs[ip].Permanent {
			ops = append(ops, neighDel{VTEPName, ip})
		}
	}
	for _, m := range sortedKeys(have.FDB, compareMAC) {
		if _, ok := want.FDB[m]; !ok {
			for _, dst := range have.FDB[m].Dsts {
				ops = append(ops, fdbDel{VTEPName, m, dst})
			}
		}
	}

	// Additions and corrections, link layer first.
	for _, m := range sortedKeys(want.FDB, compareMAC) {
		ops = append(ops, planFDB(m, have.FDB[m], want.FDB[m].Dsts[0])...)
	}
	for _, ip := range sortedKeys(want.Neighs, netip.Addr.Compare) {
		if n := want.Neighs[ip]; have.Neighs[ip] != n {
			ops = append(ops, neighReplace{VTEPName, ip, n.MAC})
		}
	}
	for _, dst := range sortedKeys(want.Routes, netip.Prefix.Compare) {
		if r := want.Routes[dst]; have.Routes[dst] != r {
			ops = append(ops, routeReplace{VTEPName, r})
		}
	}
	return ops
}

// planFDB makes the entry for m exactly "permanent, one remote: dst".
func planFDB(m mac, have fdbState, dst netip.Addr) []op {
	if len(have.Dsts) == 0 {
		return []op{fdbAdd{VTEPName, m, dst, false}}
	}
	var ops []op
	keep := dst
	if !have.Permanent || !slices.Contains(have.Dsts, dst) {
		// Replace rewrites the first remote unless dst is already one.
		ops = append(ops, fdbAdd{VTEPName, m, dst, true})
		if !slices.Contains(have.Dsts, dst) {
			keep = have.Dsts[0]
		}
	}
	for _, d := range have.Dsts {
		if d != keep && d != dst {
			ops = append(ops, fdbDel{VTEPName, m, d})
		}
	}
	return ops
}

func compareMAC(a, b mac) int { return slices.Compare(a[:], b[:]) }

func sortedKeys[K comparable, V any](m map[K]V, cmp func(a, b K) int) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, cmp)
	return keys
}
