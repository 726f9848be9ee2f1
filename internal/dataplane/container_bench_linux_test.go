package dataplane

import (
	"net/netip"
	"testing"

	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
)

// BenchmarkAddContainer wires a container into a cell namespace, what the
// CNI plugin does at every container start; removing it again is not
// timed (deleting a veth waits for the kernel's RCU grace period, many
// times the wiring). Compare builds in interleaved runs.
func BenchmarkAddContainer(b *testing.B) {
	c := Container{
		HostNS: dataplanetest.Namespace(b, "bench-cell"),
		NetNS:  dataplanetest.Namespace(b, "bench-ctr"),
		IfName: "eth0",
		IP:     netip.MustParseAddr("10.255.1.2"),
		MTU:    1450,
	}
	b.ReportAllocs()
	for range b.N {
		if _, err := AddContainer(c); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := DelContainer(c); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
