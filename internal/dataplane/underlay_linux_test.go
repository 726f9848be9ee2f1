package dataplane

import (
	"errors"
	"net"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
)

// TestFindUnderlay finds a cell's underlay device by name and by its
// default route, and says which of the two is missing when neither helps.
func TestFindUnderlay(t *testing.T) {
	u := dataplanetest.NewUnderlay(t, 1)
	c := u.Cells[0]
	want := Underlay{Device: c.Device, IP: c.IP, MTU: 1500}

	if got, err := FindUnderlay(c.NetNS, c.Device); err != nil || got != want {
		t.Fatalf("FindUnderlay(%s) = %+v, %v, want %+v", c.Device, got, err, want)
	}
	if _, err := FindUnderlay(c.NetNS, ""); !errors.Is(err, ErrNoDefaultRoute) {
		t.Fatalf("FindUnderlay without a default route: err = %v, want %v", err, ErrNoDefaultRoute)
	}
	if _, err := FindUnderlay(c.NetNS, "nosuch0"); err == nil {
		t.Fatal("FindUnderlay(nosuch0) found a device")
	}

	h := dataplanetest.Handle(t, c.NetNS)
	dev, err := h.LinkByName(c.Device)
	if err != nil {
		t.Fatal(err)
	}
	gw := net.IPv4(198, 51, 100, 1)
	if err := h.RouteAdd(&netlink.Route{LinkIndex: dev.Attrs().Index, Gw: gw}); err != nil {
		t.Fatalf("add default route: %v", err)
	}
	if got, err := FindUnderlay(c.NetNS, ""); err != nil || got != want {
		t.Fatalf("FindUnderlay by the default route = %+v, %v, want %+v", got, err, want)
	}

	// A device without an IPv4 address is no underlay.
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br9"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := FindUnderlay(c.NetNS, "br9"); err == nil {
		t.Fatal("FindUnderlay(br9) found a device with no IPv4 address")
	}
}
