package dataplane

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// containerKernel executes container ops: inContainer ops in the container
// namespace, all others in the host namespace. Every container start runs
// it, so it spends as few kernel round trips as it can: its netlink
// handles speak rtnetlink only (a handle for every family opens three
// sockets, each by switching a thread into the namespace), it looks up
// each veth end once and then addresses it by index (nsKernel.apply looks
// the link up again for every op, and every netlink answer costs the
// plugin a fresh 64 KiB buffer), and it writes the host's sysctls
// directly when the host namespace is the process's own.
type containerKernel struct {
	host, ctr nsKernel
	// hostIsSelf: the host namespace is the process's own, so its
	// sysctls need no switch of namespace.
	hostIsSelf bool
	// links are the veth ends looked up so far, by namespace.
	hostLinks, ctrLinks map[string]netlink.Link
}

func (k *containerKernel) apply(o op) error {
	side, links, inCtr := k.host, k.hostLinks, false
	if ic, ok := o.(inContainer); ok {
		side, links, inCtr, o = k.ctr, k.ctrLinks, true, ic.Op
	}
	link := func(name string) (netlink.Link, error) {
		if l, ok := links[name]; ok {
			return l, nil
		}
		l, err := side.mustLink(name)
		if err == nil {
			links[name] = l
		}
		return l, err
	}
	switch o := o.(type) {
	case vethAdd:
		// As nsKernel.apply makes it, keeping the link it returns: the
		// host end's index is then known without asking again.
		v := o.link()
		ns, err := vnetns.GetFromPath(o.PeerNetNS)
		if err != nil {
			return fmt.Errorf("container netns %s: %w", o.PeerNetNS, err)
		}
		defer ns.Close()
		v.PeerNamespace = netlink.NsFd(ns)
		if err := side.h.LinkAdd(v); err != nil {
			return err
		}
		if v.Index != 0 {
			links[o.Name] = v
		}
		return nil
	case sysctlSet:
		if !inCtr && k.hostIsSelf {
			return writeSysctl(o.Key, o.Value)
		}
	case linkSetARPOff:
		l, err := link(o.Name)
		if err != nil {
			return err
		}
		return side.h.LinkSetARPOff(l)
	case linkSetUp:
		l, err := link(o.Name)
		if err != nil {
			return err
		}
		return side.h.LinkSetUp(l)
	case addrAdd:
		l, err := link(o.Dev)
		if err != nil {
			return err
		}
		a := &netlink.Addr{IPNet: ipnet(o.Local)}
		if o.Peer.IsValid() {
			a.Peer = ipnet(o.Peer)
		}
		return side.h.AddrAdd(l, a)
	case neighReplace:
		l, err := link(o.Dev)
		if err != nil {
			return err
		}
		return side.h.NeighSet(&netlink.Neigh{
			LinkIndex: l.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
			IP: o.IP.AsSlice(), HardwareAddr: o.MAC.hw(),
		})
	case routeReplace:
		l, err := link(o.Dev)
		if err != nil {
			return err
		}
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipnet(o.Route.Dst), Gw: o.Route.Gw.AsSlice(), Scope: netlink.SCOPE_UNIVERSE}
		if o.Route.Src.IsValid() {
			r.Src = o.Route.Src.AsSlice()
		}
		if o.Route.OnLink {
			r.Flags = int(netlink.FLAG_ONLINK)
		}
		return side.h.RouteReplace(r)
	}
	return side.apply(o)
}

func (k *containerKernel) close() {
	k.host.close()
	k.ctr.close()
}

// writeSysctl sets the sysctl key in the process's own namespace, the one
// every thread not locked into another namespace is in.
func writeSysctl(key, value string) error {
	if key == "" || strings.Contains(key, "..") {
		return fmt.Errorf("invalid sysctl key %q", key)
	}
	if !strings.Contains(key, "/") {
		key = strings.ReplaceAll(key, ".", "/")
	}
	if err := os.WriteFile("/proc/sys/"+key, []byte(value), 0); err != nil {
		return fmt.Errorf("set sysctl %s=%s: %w", key, value, err)
	}
	return nil
}

// openRoute binds an rtnetlink handle to the namespace at path, or to the
// process's own when path is "".
func openRoute(path string) (nsKernel, error) {
	if path == "" {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return nsKernel{}, fmt.Errorf("netlink handle: %w", err)
		}
		return nsKernel{h: h, path: selfNetNS}, nil
	}
	ns, err := vnetns.GetFromPath(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nsKernel{}, fmt.Errorf("netns %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nsKernel{}, fmt.Errorf("netlink handle in netns %s: %w", path, err)
	}
	return nsKernel{h: h, path: path}, nil
}

func openContainer(c Container, needCtr bool) (*containerKernel, error) {
	k := &containerKernel{hostIsSelf: c.HostNS == "", hostLinks: map[string]netlink.Link{}, ctrLinks: map[string]netlink.Link{}}
	var err error
	if k.host, err = openRoute(c.HostNS); err != nil {
		return nil, fmt.Errorf("host %w", err)
	}
	if needCtr {
		if k.ctr, err = openRoute(c.NetNS); err != nil {
			k.host.close()
			return nil, fmt.Errorf("container %w", err)
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

	// Never touch a veth this call did not make: the kernel creates the
	// pair only when neither name is taken, and says EEXIST otherwise
	// (looking both names up first would cost every start two round trips).
	made := false
	for _, o := range planContainer(c) {
		err := k.apply(o)
		if _, ok := o.(vethAdd); ok {
			if err == nil {
				made = true
			} else if errors.Is(err, unix.EEXIST) {
				return res, k.taken(c, host, err)
			}
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

// taken explains why the veth pair could not be made (err): which of its
// names is in use.
func (k *containerKernel) taken(c Container, host string, err error) error {
	if _, found, lerr := k.host.link(host); lerr == nil && found {
		return fmt.Errorf("host veth %s already exists: is %s already in use?", host, c.IP)
	}
	if _, found, lerr := k.ctr.link(c.IfName); lerr == nil && found {
		return fmt.Errorf("interface %s already exists in container netns %s", c.IfName, c.NetNS)
	}
	return err
}

// DelContainer removes the container's veth pair by deleting its host end.
// It needs only HostNS and IP, works when the container namespace is already
// gone, and is not an error when there is nothing to delete.
func DelContainer(c Container) error {
	if !c.IP.Is4() {
		return fmt.Errorf("delete container: IP %v is not an IPv4 address", c.IP)
	}
	host := HostVethName(c.IP)
	k, err := openRoute(c.HostNS)
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
