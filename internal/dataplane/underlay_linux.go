package dataplane

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/trellis-c2c/trellis/internal/netns"
)

// FindUnderlay finds the underlay device in the namespace at nsPath: the
// device called name, or, if name is "", the device of the IPv4 default
// route; and its first IPv4 address and its MTU.
func FindUnderlay(nsPath, name string) (Underlay, error) {
	h, err := netns.Handle(nsPath)
	if err != nil {
		return Underlay{}, err
	}
	defer h.Close()
	var link netlink.Link
	if name != "" {
		link, err = retryDump(func() (netlink.Link, error) { return h.LinkByName(name) })
		if err != nil {
			return Underlay{}, fmt.Errorf("underlay device %s: %w", name, err)
		}
	} else {
		routes, err := retryDump(func() ([]netlink.Route, error) { return h.RouteList(nil, netlink.FAMILY_V4) })
		if err != nil {
			return Underlay{}, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			if r.Dst == nil || r.Dst.IP.IsUnspecified() {
				link, err = retryDump(func() (netlink.Link, error) { return h.LinkByIndex(r.LinkIndex) })
				if err != nil {
					return Underlay{}, fmt.Errorf("device of the default route: %w", err)
				}
				break
			}
		}
		if link == nil {
			return Underlay{}, ErrNoDefaultRoute
		}
	}
	attrs := link.Attrs()
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(link, netlink.FAMILY_V4) })
	if err != nil {
		return Underlay{}, fmt.Errorf("addresses of underlay device %s: %w", attrs.Name, err)
	}
	if len(addrs) == 0 {
		return Underlay{}, fmt.Errorf("underlay device %s has no IPv4 address", attrs.Name)
	}
	ip, _ := netip.AddrFromSlice(addrs[0].IP.To4())
	return Underlay{Device: attrs.Name, IP: ip, MTU: attrs.MTU}, nil
}
