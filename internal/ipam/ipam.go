// Package ipam is pure address arithmetic for the overlay: which per-cell
// subnets an overlay network holds, and which container addresses a cell
// subnet hands out. It does no I/O; callers keep the allocations.
package ipam

import (
	"errors"
	"fmt"
	"net/netip"
)

// Defaults, as Cloud Foundry's silk.
var (
	DefaultOverlay      = netip.MustParsePrefix("10.255.0.0/16")
	DefaultSubnetPrefix = 24
)

// ErrFull reports that no address or subnet is free.
var ErrFull = errors.New("full")

// Pool divides an IPv4 overlay network into equal cell subnets.
type Pool struct {
	Overlay   netip.Prefix
	SubnetLen int // prefix length of each cell's subnet
}

// NewPool validates and returns a Pool: IPv4 only, and the subnet prefix
// longer than the overlay's and at most /30 (a cell needs room for its VTEP
// address and at least one container).
func NewPool(overlay netip.Prefix, subnetLen int) (Pool, error) {
	overlay = overlay.Masked()
	switch {
	case !overlay.IsValid() || !overlay.Addr().Is4():
		return Pool{}, fmt.Errorf("overlay %s: must be an IPv4 network", overlay)
	case subnetLen <= overlay.Bits() || subnetLen > 30:
		return Pool{}, fmt.Errorf("subnet prefix length %d: must be longer than the overlay's /%d and at most 30", subnetLen, overlay.Bits())
	case subnetLen-overlay.Bits() > 24:
		return Pool{}, fmt.Errorf("subnet prefix length %d: more than 2^24 subnets in %s", subnetLen, overlay)
	}
	return Pool{Overlay: overlay, SubnetLen: subnetLen}, nil
}

// Size is how many cell subnets the pool leases. The first block is never
// leased (Cloud Foundry keeps it for single-address leases), so a /16 of
// /24s gives 255 cells.
func (p Pool) Size() int { return 1<<(p.SubnetLen-p.Overlay.Bits()) - 1 }

// Subnet returns the i-th leasable subnet, 0 <= i < Size().
func (p Pool) Subnet(i int) netip.Prefix {
	base := p.Overlay.Addr().As4()
	n := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	n += uint32(i+1) << (32 - p.SubnetLen)
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}), p.SubnetLen)
}

// Index is the inverse of Subnet; ok is false for a prefix that is not one
// of the pool's leasable subnets.
func (p Pool) Index(s netip.Prefix) (int, bool) {
	if s.Bits() != p.SubnetLen || !p.Overlay.Contains(s.Addr()) || s.Masked() != s {
		return 0, false
	}
	a, b := p.Overlay.Addr().As4(), s.Addr().As4()
	diff := (uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])) -
		(uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]))
	i := int(diff>>(32-p.SubnetLen)) - 1
	return i, i >= 0 && i < p.Size()
}

// FirstFree returns the lowest leasable subnet not in used.
func (p Pool) FirstFree(used map[netip.Prefix]bool) (netip.Prefix, error) {
	for i := 0; i < p.Size(); i++ {
		if s := p.Subnet(i); !used[s] {
			return s, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("overlay %s: all %d cell subnets of /%d are leased: %w", p.Overlay, p.Size(), p.SubnetLen, ErrFull)
}

// VTEPAddr is the address a cell's VTEP holds: the subnet's first address.
func VTEPAddr(subnet netip.Prefix) netip.Addr { return subnet.Masked().Addr() }

// FirstHost and LastHost bound the container addresses of a cell subnet:
// .0 is the VTEP, .1 is kept back (as Cloud Foundry's host-local does), and
// the broadcast address is never used.
func FirstHost(subnet netip.Prefix) netip.Addr { return VTEPAddr(subnet).Next().Next() }

// LastHost is the highest container address of subnet.
func LastHost(subnet netip.Prefix) netip.Addr {
	a := subnet.Masked().Addr().As4()
	n := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	n |= 1<<(32-subnet.Bits()) - 1
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}).Prev()
}

// NextAddr picks a container address in subnet that is not in used,
// searching upward from the one after last and wrapping around, so a
// released address is reused as late as possible (a new instance does not
// inherit a just-stopped one's address while peers may still hold it).
// A zero last starts at the first host.
func NextAddr(subnet netip.Prefix, used map[netip.Addr]bool, last netip.Addr) (netip.Addr, error) {
	first, end := FirstHost(subnet), LastHost(subnet)
	start := first
	if last.IsValid() && subnet.Contains(last) && last.Compare(first) >= 0 && last.Compare(end) < 0 {
		start = last.Next()
	}
	a := start
	for {
		if !used[a] {
			return a, nil
		}
		if a == end {
			a = first
		} else {
			a = a.Next()
		}
		if a == start {
			return netip.Addr{}, fmt.Errorf("cell subnet %s: all addresses %s-%s are in use: %w", subnet, first, end, ErrFull)
		}
	}
}
