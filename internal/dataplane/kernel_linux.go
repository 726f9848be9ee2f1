package dataplane

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"

	"github.com/trellis-c2c/trellis/internal/netns"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// nsKernel executes ops in one network namespace.
type nsKernel struct {
	h    *netlink.Handle
	path string
}

// openKernel binds to the namespace at path, or to the process's own
// namespace when path is "".
func openKernel(path string) (nsKernel, error) {
	if path == "" {
		path = selfNetNS
	}
	if _, err := os.Stat(path); err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nsKernel{}, fmt.Errorf("netns %s: %w", path, err)
	}
	h, err := netns.Handle(path)
	if err != nil {
		return nsKernel{}, err
	}
	return nsKernel{h: h, path: path}, nil
}

func (k nsKernel) close() {
	if k.h != nil {
		k.h.Close()
	}
}

func (k nsKernel) sysctl(key, value string) error { return netns.Sysctl(k.path, key, value) }

func (k nsKernel) getSysctl(key string) (string, error) { return netns.GetSysctl(k.path, key) }

// link finds a link by name, telling "absent" apart with found.
func (k nsKernel) link(name string) (l netlink.Link, found bool, err error) {
	l, err = retryDump(func() (netlink.Link, error) { return k.h.LinkByName(name) })
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("find link %s: %w", name, err)
	}
	return l, true, nil
}

func (k nsKernel) mustLink(name string) (netlink.Link, error) {
	l, found, err := k.link(name)
	if err == nil && !found {
		err = fmt.Errorf("link %s not found", name)
	}
	return l, err
}

// dumpAttempts bounds retries of a dump the kernel interrupted because the
// table changed while it was being read.
const dumpAttempts = 10

// retryDump calls f again while it fails with netlink.ErrDumpInterrupted:
// the partial result of an interrupted dump cannot be trusted.
func retryDump[T any](f func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for range dumpAttempts {
		v, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, fmt.Errorf("dump interrupted %d times: %w", dumpAttempts, err)
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

// apply executes one op.
func (k nsKernel) apply(o op) error {
	switch o := o.(type) {
	case sysctlSet:
		return k.sysctl(o.Key, o.Value)
	case vtepAdd:
		dev, err := k.mustLink(o.VTEP.Dev)
		if err != nil {
			return fmt.Errorf("underlay device: %w", err)
		}
		v := o.VTEP
		return k.h.LinkAdd(&netlink.Vxlan{
			LinkAttrs:    netlink.LinkAttrs{Name: o.Name, MTU: v.MTU, HardwareAddr: v.MAC.hw(), Group: VTEPGroup},
			VxlanId:      v.VNI,
			VtepDevIndex: dev.Attrs().Index,
			SrcAddr:      v.Local.AsSlice(),
			Port:         v.Port,
			GBP:          v.GBP,
			Learning:     v.Learning,
		})
	case vethAdd:
		v := o.link()
		if o.PeerNetNS != "" {
			ns, err := vnetns.GetFromPath(o.PeerNetNS)
			if err != nil {
				return fmt.Errorf("container netns %s: %w", o.PeerNetNS, err)
			}
			defer ns.Close()
			v.PeerNamespace = netlink.NsFd(ns)
		}
		return k.h.LinkAdd(v)
	case linkDel:
		l, found, err := k.link(o.Name)
		if err != nil || !found {
			return err
		}
		return k.h.LinkDel(l)
	}

	// Everything else acts on an existing link.
	var name string
	switch o := o.(type) {
	case linkSetMTU:
		name = o.Name
	case linkSetUp:
		name = o.Name
	case linkSetARPOff:
		name = o.Name
	case linkRename:
		name = o.Name
	case linkSetNetNS:
		name = o.Name
	case addrAdd:
		name = o.Dev
	case addrDel:
		name = o.Dev
	case routeReplace:
		name = o.Dev
	case routeDel:
		name = o.Dev
	case neighReplace:
		name = o.Dev
	case neighDel:
		name = o.Dev
	case fdbAdd:
		name = o.Dev
	case fdbDel:
		name = o.Dev
	default:
		return fmt.Errorf("unknown op %T", o)
	}
	l, err := k.mustLink(name)
	if err != nil {
		return err
	}
	idx := l.Attrs().Index
	switch o := o.(type) {
	case linkSetMTU:
		return k.h.LinkSetMTU(l, o.MTU)
	case linkSetUp:
		return k.h.LinkSetUp(l)
	case linkSetARPOff:
		return k.h.LinkSetARPOff(l)
	case linkRename:
		return k.h.LinkSetName(l, o.NewName)
	case linkSetNetNS:
		fd, err := vnetns.GetFromPath(o.NetNS)
		if err != nil {
			return fmt.Errorf("netns %s: %w", o.NetNS, err)
		}
		defer fd.Close()
		return k.h.LinkSetNsFd(l, int(fd))
	case addrAdd:
		a := &netlink.Addr{IPNet: ipnet(o.Local)}
		if o.Peer.IsValid() {
			a.Peer = ipnet(o.Peer)
		}
		if o.LinkScope {
			a.Scope = int(netlink.SCOPE_LINK)
		}
		return k.h.AddrAdd(l, a)
	case addrDel:
		return k.h.AddrDel(l, &netlink.Addr{IPNet: ipnet(o.Local)})
	case routeReplace:
		r := &netlink.Route{
			LinkIndex: idx,
			Dst:       ipnet(o.Route.Dst),
			Gw:        o.Route.Gw.AsSlice(),
			Scope:     netlink.SCOPE_UNIVERSE,
		}
		if o.Route.Src.IsValid() {
			r.Src = o.Route.Src.AsSlice()
		}
		if o.Route.OnLink {
			r.Flags = int(netlink.FLAG_ONLINK)
		}
		return k.h.RouteReplace(r)
	case routeDel:
		return k.h.RouteDel(&netlink.Route{LinkIndex: idx, Dst: ipnet(o.Dst)})
	case neighReplace:
		return k.h.NeighSet(&netlink.Neigh{
			LinkIndex: idx, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
			IP: o.IP.AsSlice(), HardwareAddr: o.MAC.hw(),
		})
	case neighDel:
		return k.h.NeighDel(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_INET, IP: o.IP.AsSlice()})
	case fdbAdd:
		n := &netlink.Neigh{
			LinkIndex: idx, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF,
			IP: o.Dst.AsSlice(), HardwareAddr: o.MAC.hw(),
		}
		if o.Replace {
			return k.h.NeighSet(n)
		}
		return k.h.NeighAdd(n)
	case fdbDel:
		return k.h.NeighDel(&netlink.Neigh{
			LinkIndex: idx, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
			IP: o.Dst.AsSlice(), HardwareAddr: o.MAC.hw(),
		})
	}
	panic("unreachable")
}

// link is the veth pair o makes, as netlink describes it.
func (o vethAdd) link() *netlink.Veth {
	return &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: o.Name, MTU: o.MTU, HardwareAddr: o.MAC.hw(), Group: o.Group},
		PeerName:         o.PeerName,
		PeerHardwareAddr: o.PeerMAC.hw(),
		PeerMTU:          uint32(o.MTU),
	}
}
