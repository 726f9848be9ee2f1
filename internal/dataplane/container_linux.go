package dataplane

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// containerKernel executes container ops: inContainer ops in the container
// namespace, all others in the host namespace.
type containerKernel struct{ host, ctr nsKernel }

func (k containerKernel) apply(o op) error {
	if ic, ok := o.(inContainer); ok {
		return k.ctr.apply(ic.Op)
	}
	return k.host.apply(o)
}

func (k containerKernel) close() {
	k.host.close()
	k.ctr.close()
}

func openContainer(c Container, needCtr bool) (containerKernel, error) {
	var k containerKernel
	var err error
	if k.host, err = openKernel(c.HostNS); err != nil {
		return k, fmt.Errorf("host %w", err)
	}
	if needCtr {
		if k.ctr, err = openKernel(c.NetNS); err != nil {
			k.host.close()
			return k, fmt.Errorf("container %w", err)
		}
	}
	return k, nil
}

// AddContainer wires the container into the cell the way silk does: a veth
// pair whose host end HostVethName(IP) holds HostGateway/32 with the
// container as peer, and whose container end IfName holds IP/32 with
// HostGateway as peer and the default route. ARP is off on both ends and
// each has a permanent neighbour entry for the other; the host end filters
// spoofed sources (rp_filter=1); IPv6 is off on both. If anything fails,
// AddContainer removes what it made before returning the error.
func AddContainer(c Container) (Result, error) {
	return addContainer(c, nil)
}

// addContainer is AddContainer with a hook that can fail any op, so that
// tests can prove every failure is rolled back.
func addContainer(c Container, hook func(op) error) (res Result, err error) {
	if err := c.validate(); err != nil {
		return res, fmt.Errorf("add container: %w", err)
	}
	host := HostVethName(c.IP)
	defer func() {
		if err != nil {
			err = fmt.Errorf("add container %s (%s): %w", c.IP, host, err)
		}
	}()
	k, err := openContainer(c, true)
	if err != nil {
		return res, err
	}
	defer k.close()

	// Never touch a veth this call did not make.
	if _, found, err := k.host.link(host); err != nil {
		return res, err
	} else if found {
		return res, fmt.Errorf("host veth %s already exists: is %s already in use?", host, c.IP)
	}
	if _, found, err := k.ctr.link(c.IfName); err != nil {
		return res, err
	} else if found {
		return res, fmt.Errorf("interface %s already exists in container netns %s", c.IfName, c.NetNS)
	}
	made := false
	for _, o := range planContainer(c) {
		err := k.apply(o)
		if _, ok := o.(vethAdd); ok && err == nil {
			made = true
		}
		if err == nil && hook != nil {
			err = hook(o)
		}
		if err == nil {
			continue
		}
		err = fmt.Errorf("%v: %w", o, err)
		if made { // deleting the host end removes the pair and all on it
			if derr := k.host.apply(linkDel{host}); derr != nil {
				err = errors.Join(err, fmt.Errorf("roll back: delete %s: %w", host, derr))
			}
		}
		return res, err
	}
	return Result{
		HostVeth:     host,
		HostMAC:      hostMAC(c.IP).hw(),
		ContainerMAC: containerMAC(c.IP).hw(),
	}, nil
}

// DelContainer removes the container's veth pair by deleting its host end.
// It needs only HostNS and IP, works when the container namespace is already
// gone, and is not an error when there is nothing to delete.
func DelContainer(c Container) error {
	if !c.IP.Is4() {
		return fmt.Errorf("delete container: IP %v is not an IPv4 address", c.IP)
	}
	host := HostVethName(c.IP)
	k, err := openKernel(c.HostNS)
	if err != nil {
		return fmt.Errorf("delete container %s: host %w", c.IP, err)
	}
	defer k.close()
	for _, name := range []string{host} {
		l, found, err := k.link(name)
		if err == nil && found {
			if l.Type() != "veth" {
				err = fmt.Errorf("%s is a %s, not a veth; not deleting it", name, l.Type())
			} else {
				err = k.h.LinkDel(l)
			}
		}
		if err != nil {
			return fmt.Errorf("delete container %s: %s: %w", c.IP, name, err)
		}
	}
	return nil
}

// CheckContainer verifies that the container's wiring is still what
// AddContainer made. The error lists every difference found.
func CheckContainer(c Container) error {
	if err := c.validate(); err != nil {
		return fmt.Errorf("check container: %w", err)
	}
	k, err := openContainer(c, true)
	if err != nil {
		return fmt.Errorf("check container %s: %w", c.IP, err)
	}
	defer k.close()
	host := HostVethName(c.IP)
	self := netip.PrefixFrom(c.IP, 32)
	gw := netip.PrefixFrom(HostGateway, 32)

	var problems []string
	hl := checkEnd(&problems, k.host, "host veth "+host, host, c.MTU, hostMAC(c.IP), gw, self, c.IP, containerMAC(c.IP))
	cl := checkEnd(&problems, k.ctr, "container "+c.IfName, c.IfName, c.MTU, containerMAC(c.IP), self, gw, HostGateway, hostMAC(c.IP))
	if hl != nil && cl != nil && (hl.Attrs().ParentIndex != cl.Attrs().Index || cl.Attrs().ParentIndex != hl.Attrs().Index) {
		problems = append(problems, fmt.Sprintf("container %s is not the peer of host veth %s", c.IfName, host))
	}
	if hl != nil {
		checkSysctl(&problems, k.host, "host veth "+host, confKey("ipv4", host, "rp_filter"), "1")
		checkSysctl(&problems, k.host, "host veth "+host, confKey("ipv6", host, "disable_ipv6"), "1")
	}
	if cl != nil {
		checkSysctl(&problems, k.ctr, "container "+c.IfName, confKey("ipv6", c.IfName, "disable_ipv6"), "1")
		checkDefaultRoute(&problems, k.ctr, cl, c)
	}
	if len(problems) > 0 {
		return fmt.Errorf("check container %s: %s", c.IP, strings.Join(problems, "; "))
	}
	return nil
}

// checkEnd checks one veth end and returns it if it exists.
func checkEnd(problems *[]string, k nsKernel, what, name string, mtu int, m mac, local, peer netip.Prefix, neighIP netip.Addr, neighMAC mac) netlink.Link {
	add := func(format string, args ...any) {
		*problems = append(*problems, what+": "+fmt.Sprintf(format, args...))
	}
	l, found, err := k.link(name)
	if err != nil {
		add("%v", err)
		return nil
	}
	if !found {
		add("missing")
		return nil
	}
	a := l.Attrs()
	if l.Type() != "veth" {
		add("is a %s, want veth", l.Type())
	}
	if got, _ := macFromHW(a.HardwareAddr); got != m {
		add("MAC %s, want %s", a.HardwareAddr, m)
	}
	if a.MTU != mtu {
		add("MTU %d, want %d", a.MTU, mtu)
	}
	if a.Flags&net.FlagUp == 0 {
		add("down, want up")
	}
	if a.RawFlags&unix.IFF_NOARP == 0 {
		add("ARP on, want off")
	}

	addrs, err := retryDump(func() ([]netlink.Addr, error) { return k.h.AddrList(l, unix.AF_INET) })
	if err != nil {
		add("list addresses: %v", err)
	} else {
		var got []string
		ok := false
		for _, ad := range addrs {
			lp, _ := prefixOf(ad.IPNet)
			pp, _ := prefixOf(ad.Peer)
			ok = ok || (lp == local && pp == peer)
			got = append(got, fmt.Sprintf("%v peer %v", lp, pp))
		}
		if !ok || len(addrs) != 1 {
			add("addresses [%s], want [%s peer %s]", strings.Join(got, ", "), local, peer)
		}
	}

	neighs, err := retryDump(func() ([]netlink.Neigh, error) { return k.h.NeighList(a.Index, unix.AF_INET) })
	if err != nil {
		add("list neighbours: %v", err)
	} else {
		ok := false
		for _, n := range neighs {
			nm, _ := macFromHW(n.HardwareAddr)
			ok = ok || (addrOf(n.IP) == neighIP && nm == neighMAC && n.State&netlink.NUD_PERMANENT != 0)
		}
		if !ok {
			add("no permanent neighbour %s lladdr %s", neighIP, neighMAC)
		}
	}
	return l
}

func checkSysctl(problems *[]string, k nsKernel, what, key, want string) {
	got, err := k.getSysctl(key)
	switch {
	case err != nil:
		*problems = append(*problems, fmt.Sprintf("%s: %v", what, err))
	case got != want:
		*problems = append(*problems, fmt.Sprintf("%s: %s=%s, want %s", what, key, got, want))
	}
}

func checkDefaultRoute(problems *[]string, k nsKernel, l netlink.Link, c Container) {
	routes, err := retryDump(func() ([]netlink.Route, error) { return k.h.RouteList(l, unix.AF_INET) })
	if err != nil {
		*problems = append(*problems, fmt.Sprintf("container %s: list routes: %v", c.IfName, err))
		return
	}
	for _, r := range routes {
		if dst, ok := prefixOf(r.Dst); ok && dst.Bits() != 0 {
			continue
		}
		if addrOf(r.Gw) == HostGateway && addrOf(r.Src) == c.IP {
			return
		}
	}
	*problems = append(*problems, fmt.Sprintf("container %s: no default route via %s src %s", c.IfName, HostGateway, c.IP))
}
