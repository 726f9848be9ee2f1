package dataplane

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// HostGateway is the address every container uses as its default gateway.
// Each host-side veth holds it as a /32 point-to-point address whose peer is
// the container, so all containers share it and no subnet is spent on links.
var HostGateway = netip.MustParseAddr("169.254.0.1")

// Container describes one container interface to wire into the cell: what a
// CNI plugin is asked for, with the cell namespace as its host namespace.
type Container struct {
	HostNS string     // path of the host (cell) namespace; "" means the process's own
	NetNS  string     // path of the container's namespace
	IfName string     // interface name inside the container, e.g. "eth0"
	IP     netip.Addr // the container's overlay address
	MTU    int        // MTU of both veth ends, normally the VTEP's
}

// Result is what AddContainer made, for the CNI result.
type Result struct {
	HostVeth     string           // host-side veth name, HostVethName(IP)
	HostMAC      net.HardwareAddr // MAC of the host-side veth
	ContainerMAC net.HardwareAddr // MAC of IfName inside the container
}

// HostVethName returns the name of the host-side veth of the container with
// address ip: "s-" and the four zero-padded octets, e.g. s-010255001002 for
// 10.255.1.2. The name is derived from the address alone, so deleting needs
// nothing but the IP, and a second container with the same IP fails.
func HostVethName(ip netip.Addr) string { return octetName("s-", ip) }

func octetName(prefix string, ip netip.Addr) string {
	b := ip.As4()
	return fmt.Sprintf("%s%03d%03d%03d%03d", prefix, b[0], b[1], b[2], b[3])
}

// hostMAC and containerMAC are derived from the container IP, as in silk.
func hostMAC(ip netip.Addr) mac      { return macFor(0xaa, 0xaa, ip) }
func containerMAC(ip netip.Addr) mac { return macFor(0xee, 0xee, ip) }

func (c Container) validate() error {
	switch {
	case c.NetNS == "":
		return fmt.Errorf("container netns path is empty")
	case !c.IP.Is4() || c.IP.IsUnspecified() || c.IP == HostGateway:
		return fmt.Errorf("container IP %v is not a usable IPv4 address", c.IP)
	case c.MTU < 68 || c.MTU > 65535:
		return fmt.Errorf("container MTU %d is outside 68..65535", c.MTU)
	}
	return checkIfName(c.IfName)
}

func checkIfName(name string) error {
	if name == "" || len(name) > 15 || name == "." || name == ".." ||
		strings.ContainsAny(name, "/: \t\n") {
		return fmt.Errorf("invalid interface name %q (1-15 characters, no '/', ':' or spaces)", name)
	}
	return nil
}

// confKey names the per-device sysctl net.<family>.conf.<dev>.<name>,
// using the slash form when the device name contains a dot.
func confKey(family, dev, name string) string {
	if strings.Contains(dev, ".") {
		return "net/" + family + "/conf/" + dev + "/" + name
	}
	return "net." + family + ".conf." + dev + "." + name
}

// planContainer returns the ops that wire c from scratch. The first op makes
// the veth pair; every later op changes only that pair, so deleting the
// host end undoes all of them.
func planContainer(c Container) []op {
	host := HostVethName(c.IP)
	ifName := c.IfName
	self := netip.PrefixFrom(c.IP, 32)
	gw := netip.PrefixFrom(HostGateway, 32)
	return []op{
		// The host end is in HostVethGroup from its first moment, so the
		// policy table's dispatch sees it as a host veth at once.
		vethAdd{Name: host, MAC: hostMAC(c.IP), PeerName: ifName, PeerMAC: containerMAC(c.IP), PeerNetNS: c.NetNS, MTU: c.MTU, Group: HostVethGroup},

		// IPv6 off before the link is up, so it never gets an address.
		inContainer{sysctlSet{confKey("ipv6", ifName, "disable_ipv6"), "1"}},
		inContainer{linkSetARPOff{ifName}},
		inContainer{addrAdd{Dev: ifName, Local: self, Peer: gw}},
		inContainer{linkSetUp{ifName}},

		sysctlSet{confKey("ipv6", host, "disable_ipv6"), "1"},
		sysctlSet{confKey("ipv4", host, "rp_filter"), "1"},
		linkSetARPOff{host},
		addrAdd{Dev: host, Local: gw, Peer: self},
		linkSetUp{host},

		// Neighbours last: taking a link down flushes even permanent ones.
		// With ARP off they are the only way each end learns the other's
		// MAC; without them the kernel would address frames to its own.
		inContainer{neighReplace{ifName, HostGateway, hostMAC(c.IP)}},
		inContainer{routeReplace{ifName, routeState{
			Dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), Gw: HostGateway, Src: c.IP, OnLink: true,
		}}},
		neighReplace{host, c.IP, containerMAC(c.IP)},
	}
}
