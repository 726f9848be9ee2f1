package dataplane

import (
	"errors"
	"net/netip"
)

// Underlay is the device a cell's VXLAN runs over, as FindUnderlay finds it.
type Underlay struct {
	Device string     // e.g. "eth0"
	IP     netip.Addr // its first IPv4 address: the cell's VTEP address on the underlay
	MTU    int        // its MTU; the overlay's is VXLANOverhead less
}

// ErrNoDefaultRoute is FindUnderlay, asked for the device of the default
// route, finding no default route.
var ErrNoDefaultRoute = errors.New("no default route to find the underlay device by")
