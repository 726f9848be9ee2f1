package dataplane

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// mac is a comparable Ethernet address.
type mac [6]byte

func (m mac) String() string { return net.HardwareAddr(m[:]).String() }

func (m mac) hw() net.HardwareAddr { return net.HardwareAddr(m[:]) }

// macFor returns prefix0:prefix1 followed by the four bytes of the IPv4
// address a, the scheme silk uses so that a MAC can be derived from an IP
// without asking anyone.
func macFor(p0, p1 byte, a netip.Addr) mac {
	b := a.As4()
	return mac{p0, p1, b[0], b[1], b[2], b[3]}
}

func macFromHW(hw net.HardwareAddr) (mac, bool) {
	var m mac
	if len(hw) != len(m) {
		return m, false
	}
	copy(m[:], hw)
	return m, true
}

// An op is one kernel change. Its String is the equivalent iproute2 command,
// which is what golden tests compare and what errors quote. Ops are plain
// data: planning them does no I/O, and the *_linux.go files execute them.
type op interface {
	String() string
}

type (
	// sysctlSet writes a sysctl in the namespace being programmed.
	sysctlSet struct{ Key, Value string }

	// vtepAdd creates the VXLAN device.
	vtepAdd struct {
		Name string
		VTEP vtepState
	}

	// vethAdd creates a veth pair in the host namespace; with PeerNetNS
	// the peer is created directly in that namespace (moving a device
	// between namespaces afterwards costs the kernel an RCU grace period,
	// about 15 ms here, most of a container's setup time).
	vethAdd struct {
		Name      string
		MAC       mac
		PeerName  string
		PeerMAC   mac
		PeerNetNS string
		MTU       int
		// Group is the host end's device group (0: the kernel's default).
		Group uint32
	}

	linkDel    struct{ Name string }
	linkSetMTU struct {
		Name string
		MTU  int
	}
	linkSetUp     struct{ Name string }
	linkSetARPOff struct{ Name string }
	linkRename    struct{ Name, NewName string }
	// linkSetNetNS moves a link into the namespace at path NetNS.
	linkSetNetNS struct{ Name, NetNS string }

	// addrAdd adds Local to Dev; with a valid Peer it is a point-to-point
	// address. LinkScope gives the address scope link.
	addrAdd struct {
		Dev       string
		Local     netip.Prefix
		Peer      netip.Prefix
		LinkScope bool
	}
	addrDel struct {
		Dev   string
		Local netip.Prefix
	}

	routeReplace struct {
		Dev   string
		Route routeState
	}
	routeDel struct {
		Dev string
		Dst netip.Prefix
	}

	// neighReplace installs a permanent ARP entry.
	neighReplace struct {
		Dev string
		IP  netip.Addr
		MAC mac
	}
	neighDel struct {
		Dev string
		IP  netip.Addr
	}

	// fdbAdd installs a permanent VXLAN forwarding entry, MAC -> remote
	// VTEP Dst. Replace rewrites the entry's first remote instead of
	// adding a new entry.
	fdbAdd struct {
		Dev     string
		MAC     mac
		Dst     netip.Addr
		Replace bool
	}
	fdbDel struct {
		Dev string
		MAC mac
		Dst netip.Addr
	}

	// inContainer runs Op in the container's namespace rather than the
	// host's.
	inContainer struct{ Op op }
)

func (o sysctlSet) String() string { return fmt.Sprintf("sysctl -w %s=%s", o.Key, o.Value) }

func (o vtepAdd) String() string {
	v := o.VTEP
	s := fmt.Sprintf("ip link add %s address %s mtu %d group %#x type vxlan id %d local %s dev %s dstport %d",
		o.Name, v.MAC, v.MTU, VTEPGroup, v.VNI, v.Local, v.Dev, v.Port)
	if v.GBP {
		s += " gbp"
	}
	if !v.Learning {
		s += " nolearning"
	}
	return s
}

func (o vethAdd) String() string {
	s := fmt.Sprintf("ip link add %s address %s mtu %d", o.Name, o.MAC, o.MTU)
	if o.Group != 0 {
		s += fmt.Sprintf(" group %#x", o.Group)
	}
	s += fmt.Sprintf(" type veth peer name %s address %s mtu %d", o.PeerName, o.PeerMAC, o.MTU)
	if o.PeerNetNS != "" {
		s += " netns " + o.PeerNetNS
	}
	return s
}

func (o linkDel) String() string       { return "ip link del " + o.Name }
func (o linkSetMTU) String() string    { return fmt.Sprintf("ip link set %s mtu %d", o.Name, o.MTU) }
func (o linkSetUp) String() string     { return "ip link set " + o.Name + " up" }
func (o linkSetARPOff) String() string { return "ip link set " + o.Name + " arp off" }
func (o linkRename) String() string    { return "ip link set " + o.Name + " name " + o.NewName }
func (o linkSetNetNS) String() string  { return "ip link set " + o.Name + " netns " + o.NetNS }

func (o addrAdd) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "ip addr add %s", o.Local)
	if o.Peer.IsValid() {
		fmt.Fprintf(&b, " peer %s", o.Peer)
	}
	fmt.Fprintf(&b, " dev %s", o.Dev)
	if o.LinkScope {
		b.WriteString(" scope link")
	}
	return b.String()
}

func (o addrDel) String() string { return fmt.Sprintf("ip addr del %s dev %s", o.Local, o.Dev) }

func (o routeReplace) String() string {
	r := o.Route
	dst := r.Dst.String()
	if r.Dst.Bits() == 0 {
		dst = "default"
	}
	s := fmt.Sprintf("ip route replace %s via %s dev %s", dst, r.Gw, o.Dev)
	if r.Src.IsValid() {
		s += " src " + r.Src.String()
	}
	if r.OnLink {
		s += " onlink"
	}
	return s
}

func (o routeDel) String() string { return fmt.Sprintf("ip route del %s dev %s", o.Dst, o.Dev) }

func (o neighReplace) String() string {
	return fmt.Sprintf("ip neigh replace %s lladdr %s dev %s nud permanent", o.IP, o.MAC, o.Dev)
}

func (o neighDel) String() string { return fmt.Sprintf("ip neigh del %s dev %s", o.IP, o.Dev) }

func (o fdbAdd) String() string {
	verb := "add"
	if o.Replace {
		verb = "replace"
	}
	return fmt.Sprintf("bridge fdb %s %s dev %s dst %s self permanent", verb, o.MAC, o.Dev, o.Dst)
}

func (o fdbDel) String() string {
	return fmt.Sprintf("bridge fdb del %s dev %s dst %s self", o.MAC, o.Dev, o.Dst)
}

func (o inContainer) String() string { return "container: " + o.Op.String() }
