package dataplane

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
)

// BenchmarkEgressConnect measures new TCP connections per second from an
// instance to the outside host through its cell (dial, read the greeting,
// close): with no egress table (plain routing: the outside host routes the
// overlay back to the cell, no NAT), and through the egress table (NAT,
// set lookups) with 1 and with 1,000 rules.
//
//	go test ./internal/dataplane -run '^$' -bench EgressConnect -benchtime 2000x
func BenchmarkEgressConnect(b *testing.B) {
	u, cells := meshed(b, 1)
	o := u.AddOutside(b)
	cell := cells[0]
	a := addContainerNS(b, cell, "a", "10.255.1.2")
	outside := Container{NetNS: o.NetNS, IP: o.IP}
	listenTCP(b, outside, 80)
	// For the run without NAT, the outside host routes the overlay to the cell.
	oh := dataplanetest.Handle(b, o.NetNS)
	dev, err := oh.LinkByName("eth0")
	if err != nil {
		b.Fatal(err)
	}
	if err := oh.RouteAdd(&netlink.Route{LinkIndex: dev.Attrs().Index, Gw: cell.UnderlayIP.AsSlice(),
		Dst: &net.IPNet{IP: net.IP{10, 255, 0, 0}, Mask: net.CIDRMask(16, 32)}}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cell.dp.TeardownEgress() })
	allow := EgressRule{SrcIP: a.IP, Protocol: "tcp", DestStart: o.IP, DestEnd: o.IP, StartPort: 80, EndPort: 80}
	many := []EgressRule{allow}
	for i := 1; len(many) < 1000; i++ { // other instances' rules, other destinations
		src := netip.AddrFrom4([4]byte{10, 255, 1, byte(3 + i%250)})
		dst := netip.AddrFrom4([4]byte{192, 0, byte(2 + i/250), byte(i % 250)})
		many = append(many, EgressRule{SrcIP: src, Protocol: "tcp", DestStart: dst, DestEnd: dst, StartPort: uint16(1000 + i), EndPort: uint16(1000 + i)})
	}
	for _, c := range []struct {
		name  string
		rules []EgressRule // nil: no egress table
	}{{"no-table", nil}, {"rules=1", []EgressRule{allow}}, {"rules=1000", many}} {
		b.Run(c.name, func(b *testing.B) {
			cell.dp.TeardownEgress()
			if c.rules != nil {
				if _, err := cell.dp.Set(context.Background(), Desired{Egress: &Egress{Overlay: overlay, Rules: c.rules}}); err != nil {
					b.Fatal(err)
				}
			}
			want := cell.UnderlayIP.String() // masqueraded
			if c.rules == nil {
				want = a.IP.String()
			}
			addr := net.JoinHostPort(o.IP.String(), "80")
			inNS(b, a.NetNS, func() error {
				b.ResetTimer()
				for range b.N {
					conn, err := net.DialTimeout("tcp4", addr, 5*time.Second)
					if err != nil {
						return err
					}
					conn.SetDeadline(time.Now().Add(5 * time.Second))
					line, err := bufio.NewReader(conn).ReadString('\n')
					conn.Close()
					if err != nil {
						return err
					}
					if got := strings.TrimSpace(line); got != want {
						return fmt.Errorf("the outside host saw %s, want %s", got, want)
					}
				}
				return nil
			})
		})
	}
}
