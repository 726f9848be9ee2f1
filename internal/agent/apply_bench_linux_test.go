package agent

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/dataplane"
	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
	"github.com/trellis-c2c/trellis/internal/dns"
)

// BenchmarkApplyDelta times one change through a cell agent's apply path,
// as the agent meets it after its poll: the controller's delta decoded
// from JSON and applied to the agent's copy, then Agent.apply (DNS table,
// overlay check, policy and egress into the kernel of a real namespace,
// the state saved). The cell is cell01 of a foundation shaped like `trellis
// bench scale`'s (50 cells, 20,000 apps, 1,000 instances), at 1,000 and
// 60,000 policies; "dense" puts every policy's destination on an app with
// an instance, so that the cell's allows grow with the store. The changes:
// a policy add and a policy removal (the first policy of two apps on cells
// 0 and 1), and a route mapped or unmapped to an app on the cell. The
// figures are per change (ns/change; cpu-ns/change is the process's CPU,
// every thread, as the bench counts an agent's). The goal is a cost per
// change independent of the store's size: compare across the sizes.
func BenchmarkApplyDelta(b *testing.B) {
	dataplanetest.RequireRoot(b)
	for _, shape := range []struct {
		name string
		s    foundationShape
	}{
		{"policies=1000", foundationShape{cells: 50, apps: 20000, policies: 1000, instances: 1000, pairs: 200}},
		{"policies=60000", foundationShape{cells: 50, apps: 20000, policies: 60000, instances: 1000, pairs: 200}},
		{"dense/policies=1000", foundationShape{cells: 50, apps: 20000, policies: 1000, instances: 1000, pairs: 200, dense: true}},
		{"dense/policies=60000", foundationShape{cells: 50, apps: 20000, policies: 60000, instances: 1000, pairs: 200, dense: true}},
	} {
		f := newFoundation(b, shape.s)
		cell := f.cells[1].GUID
		src, dst := f.insts[0].AppGUID, f.insts[1].AppGUID // on cells 0 and 1
		for _, change := range []string{"policy-add", "policy-remove", "route-change"} {
			b.Run(shape.name+"/"+change, func(b *testing.B) {
				st0 := f.state(b, cell)
				var d1, d2 []byte
				switch change {
				case "policy-add", "policy-remove":
					add, id := f.addPolicy(src, dst, 8082)
					st1 := f.apply(b, add, cell)
					f.apply(b, removePolicy(add, id), cell)
					d1, d2 = deltaJSON(b, &st0, &st1), deltaJSON(b, &st1, &st0)
				case "route-change":
					st1 := f.apply(b, f.mapRoute(dst, false), cell)
					f.apply(b, f.mapRoute(dst, true), cell)
					d1, d2 = deltaJSON(b, &st0, &st1), deltaJSON(b, &st1, &st0)
				}
				a := benchAgent(b, f, cell)
				ctx := context.Background()
				a.apply(ctx, st0, nil)
				if !a.ready() {
					b.Fatalf("first apply: %v", a.applyErr)
				}
				step := func(raw []byte) {
					var d api.CellDelta
					if err := json.Unmarshal(raw, &d); err != nil {
						b.Fatal(err)
					}
					have := a.desired()
					d.Base, d.Revision = have.Revision, have.Revision+1
					st, err := have.Apply(d)
					if err != nil {
						b.Fatal(err)
					}
					a.apply(ctx, st, &d)
				}
				// A policy's add is timed and its removal not (or the
				// reverse): a removal revokes, and cutting flows is a cost
				// of its own (a dump of conntrack). A route is mapped and
				// unmapped, both timed.
				timed := [2]bool{change != "policy-remove", change != "policy-add"}
				var cpu int64
				b.ResetTimer()
				for range b.N {
					for k, raw := range [][]byte{d1, d2} {
						if !timed[k] {
							b.StopTimer()
							step(raw)
							b.StartTimer()
							continue
						}
						c0 := processCPU(b)
						step(raw)
						cpu += processCPU(b) - c0
					}
				}
				b.StopTimer()
				n := b.N
				if timed[0] && timed[1] {
					n *= 2
				}
				b.ReportMetric(float64(cpu)/float64(n), "cpu-ns/change")
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/change")
				b.ReportMetric(float64(len(st0.Allows)), "allows")
				b.ReportMetric(float64(len(st0.Endpoints)), "endpoints")
				if !a.ready() {
					b.Fatalf("apply: %v", a.applyErr)
				}
			})
		}
	}
}

// processCPU is the CPU time the process used so far (user and system,
// every thread), in nanoseconds: what `bench scale` counts for an agent.
func processCPU(tb testing.TB) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// deltaJSON is the controller's delta from o to n, as the wire carries it.
func deltaJSON(tb testing.TB, o, n *api.CellState) []byte {
	tb.Helper()
	d, err := api.Diff(o, n)
	if err != nil {
		tb.Fatal(err)
	}
	if d.Empty() {
		tb.Fatal("the change changes nothing on the cell")
	}
	b, err := json.Marshal(d)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// benchAgent is the agent of cell in a namespace of its own, with a dummy
// underlay device, the cell's containers recorded, and no controller.
func benchAgent(tb testing.TB, f *foundation, cell string) *Agent {
	tb.Helper()
	var c api.Cell
	for _, x := range f.cells {
		if x.GUID == cell {
			c = x
		}
	}
	ns := dataplanetest.Namespace(tb, "agentdelta-"+c.Name)
	h := dataplanetest.Handle(tb, ns)
	// A veth pair (the machine may lack the dummy driver), both ends here.
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ul0", MTU: 1500}, PeerName: "ul1"}); err != nil {
		tb.Fatal(err)
	}
	ul, err := h.LinkByName("ul0")
	if err != nil {
		tb.Fatal(err)
	}
	if peer, err := h.LinkByName("ul1"); err != nil || h.LinkSetUp(peer) != nil {
		tb.Fatalf("ul1: %v", err)
	}
	if err := h.AddrAdd(ul, &netlink.Addr{IPNet: &net.IPNet{IP: c.UnderlayIP.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
		tb.Fatal(err)
	}
	if err := h.LinkSetUp(ul); err != nil {
		tb.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	dir := tb.TempDir()
	a := &Agent{cfg: Config{StateDir: dir}, log: log, nsPath: ns, saved: newStateFile(dir),
		cell: dataplane.Cell{UnderlayDevice: "ul0", UnderlayIP: c.UnderlayIP, Subnet: c.Subnet, MTU: 1500}}
	a.containers = &containers{subnet: c.Subnet, mtu: 1450, records: f.localRecords(cell)}
	if a.keys, err = newCellKeys(log, dir, nil); err != nil {
		tb.Fatal(err)
	}
	a.enforcer = newEnforcer(dataplane.New(ns, log), log, a.containers, a.desired, nil, prometheus.NewRegistry())
	a.dns = dns.NewServer(dns.Options{Registerer: prometheus.NewRegistry(), Logger: log})
	return a
}
