package dataplane

import (
	"fmt"

	"github.com/trellis-c2c/trellis/internal/netns"
)

// SetContainerMTU sets the MTU of an attached container's interface ifName
// in its namespace and of its host veth in the cell's: how a container
// follows the overlay's MTU (OverlayMTU) when encryption is turned on or
// off while it runs. An interface already at mtu is left alone.
func SetContainerMTU(hostNS, containerNS, ifName, hostVeth string, mtu int) error {
	for _, l := range []struct{ ns, name string }{{containerNS, ifName}, {hostNS, hostVeth}} {
		if l.name == "" {
			continue
		}
		h, err := netns.Handle(l.ns)
		if err != nil {
			return err
		}
		link, err := h.LinkByName(l.name)
		if err == nil && link.Attrs().MTU != mtu {
			err = h.LinkSetMTU(link, mtu)
		}
		h.Close()
		if err != nil {
			return fmt.Errorf("set MTU of %s in %s to %d: %w", l.name, l.ns, mtu, err)
		}
	}
	return nil
}
