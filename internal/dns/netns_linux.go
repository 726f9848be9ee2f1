package dns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/trellis-c2c/trellis/internal/netns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// inNamespace runs fn on a thread in the network namespace at path, or
// right here when path is "".
func inNamespace(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	return netns.Do(path, fn)
}

// AddAddress gives the loopback device of the network namespace at nsPath
// the address ip (/32), so that a server can listen on it and the
// namespace's containers reach it through their default route. It is
// idempotent. nsPath must name a namespace: the address is never added to
// the calling process's own namespace by default.
func AddAddress(nsPath string, ip netip.Addr) error {
	if nsPath == "" {
		return errors.New("dns: add address: no network namespace given")
	}
	if !ip.Is4() {
		return fmt.Errorf("dns: add address %s: not an IPv4 address", ip)
	}
	h, err := netns.Handle(nsPath)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("dns: lo in %s: %w", nsPath, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	if err := h.AddrAdd(lo, a); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("dns: add %s to lo in %s: %w", ip, nsPath, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("dns: set lo up in %s: %w", nsPath, err)
	}
	return nil
}
