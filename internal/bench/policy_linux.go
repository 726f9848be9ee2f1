package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/trellis-c2c/trellis/internal/agent"
	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/dataplane"
	"github.com/trellis-c2c/trellis/internal/launcher"
	"github.com/trellis-c2c/trellis/internal/netns"
)

// PolicyOptions configure the policy bench.
type PolicyOptions struct {
	Quick    bool
	Progress io.Writer
	Exe      string // the trellis binary; default the running one
}

// Policy measures how fast policies take effect on a real local foundation
// (API call returns → first allowed SYN succeeds, and → first revoked SYN is
// refused), how fast a cell's dataplane applies large policy sets, and
// what enforcement costs cross-cell throughput and new connections (see
// policyThroughput).
func Policy(ctx context.Context, o PolicyOptions) (rep *Report, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the policy bench needs root: it builds network namespaces")
	}
	progress := o.Progress
	if progress == nil {
		progress = io.Discard
	}
	step := func(format string, args ...any) { fmt.Fprintf(progress, format+"\n", args...) }
	r := &Report{Bench: "policy", Quick: o.Quick, Started: time.Now(), CPUs: runtime.NumCPU(), LoadStart: loadavg(), Samples: map[string][]float64{}}
	defer func() {
		r.Seconds = time.Since(r.Started).Seconds()
		r.LoadEnd = loadavg()
	}()
	rep = r

	if err := policyApply(ctx, rep, o.Quick, step); err != nil {
		return nil, err
	}
	if err := policyThroughput(ctx, rep, o.Quick, progress); err != nil {
		return nil, err
	}
	if err := policyPropagation(ctx, rep, o, step); err != nil {
		return nil, err
	}
	return rep, nil
}

// policyApply times a dataplane's Set of a policy on a throwaway namespace: a full apply of
// 10,000 allows among 1,000 apps, and adding one allow at 100 and at 10,000.
func policyApply(ctx context.Context, rep *Report, quick bool, step func(string, ...any)) error {
	name := NewPrefix() + "apply"
	path, err := netns.Create(name)
	if err != nil {
		return err
	}
	defer netns.Delete(name)
	rep.Prefix = name
	dp := dataplane.New(path, nil)
	set := func(p dataplane.Policy) error {
		_, err := dp.Set(ctx, dataplane.Desired{Policy: &p})
		return err
	}
	allows := func(n int) []dataplane.Allow {
		out := make([]dataplane.Allow, n)
		for i := range out {
			dest := netip.AddrFrom4([4]byte{10, 255, 1, byte(2 + i%100)})
			out[i] = dataplane.Allow{DestIP: dest, SrcTag: uint16(1 + i%1000), Protocol: "tcp", StartPort: uint16(1000 + i/1000), EndPort: uint16(1000 + i/1000)}
		}
		return out
	}
	var locals []dataplane.Local
	for i := 0; i < 100; i++ {
		locals = append(locals, dataplane.Local{IP: netip.AddrFrom4([4]byte{10, 255, 1, byte(2 + i)}), Tag: uint16(i + 1)})
	}
	runs := 5
	if quick {
		runs = 2
	}
	step("policy: full apply of 10,000 allows, %d times", runs)
	var full []float64
	for r := 0; r < runs; r++ {
		dp.TeardownPolicy()
		start := time.Now()
		if err := set(dataplane.Policy{Enforce: true, Locals: locals, Allows: allows(10000)}); err != nil {
			return err
		}
		full = append(full, ms(time.Since(start)))
	}
	rep.Samples["apply-full/trellis"] = full
	rep.Figures = append(rep.Figures, newFigure("policy/apply-10k", "full apply of 10,000 policies (one batch)", "ms",
		median(full), 100, "the goal", &goal{atMost: true, limit: 100}))

	addOne := func(present int) (float64, error) {
		base := allows(present)
		if err := set(dataplane.Policy{Enforce: true, Locals: locals, Allows: base}); err != nil {
			return 0, err
		}
		var xs []float64
		for i := 0; i < 20; i++ {
			more := append(append([]dataplane.Allow(nil), base...), dataplane.Allow{DestIP: locals[0].IP, SrcTag: 2000, Protocol: "udp", StartPort: uint16(20000 + i), EndPort: uint16(20000 + i)})
			start := time.Now()
			if err := set(dataplane.Policy{Enforce: true, Locals: locals, Allows: more}); err != nil {
				return 0, err
			}
			xs = append(xs, ms(time.Since(start)))
		}
		return median(xs), nil
	}
	step("policy: adding one policy at 100 and at 10,000 present")
	small, err := addOne(100)
	if err != nil {
		return err
	}
	large, err := addOne(10000)
	if err != nil {
		return err
	}
	rep.Figures = append(rep.Figures, newFigure("policy/add-one-10k", "add one policy at 10,000 present", "ms",
		large, small, "add one at 100 present", &goal{ratio: true, atMost: true, limit: 2}))
	rep.Notes = append(rep.Notes, "apply: dataplane Set of a policy into a namespace's nftables table, 100 local instances; full = a new table with 10,000 single-port allows; add one = median of 20 adds of one single-port allow (the agent applies a revision's changes the same way)")
	return nil
}

// policyPropagation runs a foundation with two cells, a source and a
// destination app on different cells and 1,000 other policies, and times
// policy adds and deletes until the source's SYNs succeed or are refused.
func policyPropagation(ctx context.Context, rep *Report, o PolicyOptions, step func(string, ...any)) (err error) {
	dir, err := os.MkdirTemp("", "trellis-bench-policy-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	step("policy: starting a local foundation with 2 cells")
	f, err := launcher.Up(ctx, launcher.Options{StateDir: dir, Cells: 2, Exe: o.Exe})
	defer func() {
		if derr := launcher.Down(context.WithoutCancel(ctx), dir, true, io.Discard); derr != nil && err == nil {
			err = derr
		}
	}()
	if err != nil {
		return err
	}
	cfg, err := api.LoadClientConfig(f.Admin)
	if err != nil {
		return err
	}
	c, err := api.NewClient(cfg)
	if err != nil {
		return err
	}
	spaces, err := c.Spaces(ctx, api.SpaceFilter{Names: []string{"default"}})
	if err != nil || len(spaces) == 0 {
		return fmt.Errorf("default space: %v", err)
	}
	cells, err := c.Cells(ctx)
	if err != nil || len(cells) < 2 {
		return fmt.Errorf("cells: %v", err)
	}
	start := func(name, cell string) (api.App, error) {
		a, err := c.CreateApp(ctx, spaces[0].GUID, name)
		if err != nil {
			return a, err
		}
		if _, err := c.UpdateApp(ctx, a.GUID, api.AppUpdate{CellGUID: &cell}); err != nil {
			return a, err
		}
		_, err = c.AppAction(ctx, a.GUID, "start")
		return a, err
	}
	src, err := start("bench-source", cells[0].GUID)
	if err != nil {
		return err
	}
	dst, err := start("bench-destination", cells[1].GUID)
	if err != nil {
		return err
	}
	step("policy: 1,000 other policies among 100 apps")
	var others []api.App
	for i := 0; i < 100; i++ {
		a, err := c.CreateApp(ctx, spaces[0].GUID, fmt.Sprintf("bench-other-%03d", i))
		if err != nil {
			return err
		}
		others = append(others, a)
	}
	var ps []api.Policy
	for i := 0; i < 1000; i++ {
		ps = append(ps, api.Policy{Source: api.Source{ID: others[i%100].GUID},
			Destination: api.Destination{ID: others[(i/100+i%100+1)%100].GUID, Protocol: "tcp", Ports: api.Ports{Start: 8000 + i/100, End: 8000 + i/100}}})
	}
	if err := c.CreatePolicies(ctx, ps); err != nil {
		return err
	}
	// Wait for both instances.
	var srcNS, dstIP string
	for deadline := time.Now().Add(60 * time.Second); srcNS == "" || dstIP == ""; {
		if time.Now().After(deadline) {
			return errors.New("the bench's instances did not start within 60s")
		}
		ins, err := c.Instances(ctx, src.GUID, dst.GUID)
		if err != nil {
			return err
		}
		for _, in := range ins {
			if in.State != "RUNNING" {
				continue
			}
			if in.AppGUID == dst.GUID {
				dstIP = in.IP
			}
			if in.AppGUID == src.GUID {
				for _, cell := range f.Cells {
					if cell.Name == in.CellName {
						if spec, err := agent.InstanceSpec(cell.StateDir, in.GUID); err == nil {
							srcNS = spec.NetNS
						}
					}
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	addr := net.JoinHostPort(dstIP, "8080")
	// until probes from the source until connecting gives want (true:
	// connected; false: refused), and returns how long that took.
	until := func(want bool) (time.Duration, error) { return firstSYN(srcNS, addr, want) }
	if _, err := until(false); err != nil {
		return err
	}
	n := 100
	if o.Quick {
		n = 20
	}
	step("policy: %d adds and deletes of frontend→backend tcp/8080, timing the first allowed and the first refused SYN", n)
	pol := []api.Policy{{Source: api.Source{ID: src.GUID}, Destination: api.Destination{ID: dst.GUID, Protocol: "tcp", Ports: api.Ports{Start: 8080, End: 8080}}}}
	var adds, dels, calls []float64
	for i := 0; i < n; i++ {
		t0 := time.Now()
		if err := c.CreatePolicies(ctx, pol); err != nil {
			return err
		}
		calls = append(calls, ms(time.Since(t0)))
		d, err := until(true)
		if err != nil {
			return fmt.Errorf("after add %d: %w", i+1, err)
		}
		adds = append(adds, ms(d))
		if err := c.DeletePolicies(ctx, pol); err != nil {
			return err
		}
		if d, err = until(false); err != nil {
			return fmt.Errorf("after delete %d: %w", i+1, err)
		}
		dels = append(dels, ms(d))
	}
	rep.Samples["propagation-add/trellis"] = adds
	rep.Samples["propagation-delete/trellis"] = dels
	rep.Samples["api-create/trellis"] = calls
	const cfPoll = 5000.0
	for _, fig := range []struct {
		id, name string
		xs       []float64
		p        float64
	}{
		{"policy/propagation-add-p50", "policy add → first allowed SYN, p50", adds, 50},
		{"policy/propagation-add-p99", "policy add → first allowed SYN, p99", adds, 99},
		{"policy/propagation-delete-p50", "policy delete → first refused SYN, p50", dels, 50},
		{"policy/propagation-delete-p99", "policy delete → first refused SYN, p99", dels, 99},
	} {
		rep.Figures = append(rep.Figures, newFigure(fig.id, fig.name, "ms", percentile(fig.xs, fig.p), cfPoll,
			"Cloud Foundry's policy poll interval (documented, not measured)", &goal{atMost: true, limit: 100}))
	}
	rep.Notes = append(rep.Notes, fmt.Sprintf("propagation: a local foundation (2 cells, controller on SQLite), 1,000 other policies present; the clock starts when the API call returns (median API call %.1f ms) and stops at the first TCP connect from the source instance (cell1) to the destination instance (cell2) that succeeds (add) or is refused (delete), probing every 0.2 ms", median(calls)))
	if f.Outside == nil {
		return errors.New("the local foundation has no outside host")
	}
	probe := func(addr string, want bool) (time.Duration, error) { return firstSYN(srcNS, addr, want) }
	if err := egressPropagation(ctx, rep, c, spaces[0].GUID, f.Outside.IP, n, probe, step); err != nil {
		return err
	}
	return dnsPropagation(ctx, rep, c, dst, srcNS, n, step)
}

// dnsPropagation times how fast a route mapped or unmapped shows in the
// answers of the DNS server of another cell than the destination's: the
// source instance (cell1) asks for the destination's (cell2) name.
func dnsPropagation(ctx context.Context, rep *Report, c *api.Client, dst api.App, srcNS string, n int, step func(string, ...any)) error {
	domains, err := c.Domains(ctx, api.DomainFilter{Names: []string{"apps.internal"}})
	if err != nil || len(domains) == 0 {
		return fmt.Errorf("apps.internal: %v", err)
	}
	route, err := c.CreateRoute(ctx, dst.Relationships.Space.Data.GUID, domains[0].GUID, "bench-destination")
	if err != nil {
		return err
	}
	var conn net.Conn
	if err := netns.Do(srcNS, func() (err error) {
		conn, err = net.Dial("udp", "169.254.0.2:53")
		return err
	}); err != nil {
		return err
	}
	defer conn.Close()
	query := dnsQuery("bench-destination.apps.internal")
	// until probes until the answer holds want addresses, and says how
	// long that took.
	until := func(want int) (time.Duration, error) {
		start := time.Now()
		buf := make([]byte, 512)
		for time.Since(start) < 20*time.Second {
			conn.SetDeadline(time.Now().Add(100 * time.Millisecond))
			if _, err := conn.Write(query); err != nil {
				return 0, err
			}
			k, err := conn.Read(buf)
			if err == nil && k >= 12 && int(buf[6])<<8|int(buf[7]) == want { // ANCOUNT
				return time.Since(start), nil
			}
			time.Sleep(200 * time.Microsecond)
		}
		return 0, fmt.Errorf("the DNS answer did not reach %d addresses within 20s", want)
	}
	answered := func(want bool) (time.Duration, error) {
		if want {
			return until(1)
		}
		return until(0)
	}
	step("dns: %d maps and unmaps of bench-destination.apps.internal, timing the answers on the other cell", n)
	var maps, unmaps []float64
	for i := 0; i < n; i++ {
		if _, err := c.AddRouteDestinations(ctx, route.GUID, dst.GUID); err != nil {
			return err
		}
		d, err := answered(true)
		if err != nil {
			return fmt.Errorf("after map %d: %w", i+1, err)
		}
		maps = append(maps, ms(d))
		if err := c.RemoveRouteDestination(ctx, route.GUID, dst.GUID); err != nil {
			return err
		}
		if d, err = answered(false); err != nil {
			return fmt.Errorf("after unmap %d: %w", i+1, err)
		}
		unmaps = append(unmaps, ms(d))
	}
	rep.Samples["dns-map/trellis"], rep.Samples["dns-unmap/trellis"] = maps, unmaps
	for _, fig := range []struct {
		id, name string
		xs       []float64
	}{
		{"dns/route-map-p99", "route mapped → in another cell's DNS answers, p99", maps},
		{"dns/route-unmap-p99", "route unmapped → gone from another cell's answers, p99", unmaps},
	} {
		rep.Figures = append(rep.Figures, newFigure(fig.id, fig.name, "ms", percentile(fig.xs, 99), 180000,
			"Cloud Foundry's service-discovery staleness threshold (documented, not measured)", &goal{atMost: true, limit: 200}))
	}
	rep.Notes = append(rep.Notes, "dns: the clock starts when the map or unmap API call returns and stops at the first answer of the cell1 DNS server (queried from the source instance every 0.2 ms) that has (map) or lacks (unmap) the cell2 instance")

	// Instances starting and stopping on cell2, seen from cell1's answers.
	if _, err := c.AddRouteDestinations(ctx, route.GUID, dst.GUID); err != nil {
		return err
	}
	if _, err := until(1); err != nil {
		return err
	}
	k := max(n/4, 3)
	step("dns: %d scale-ups and scale-downs of the destination, timing its addresses in the other cell's answers", k)
	var ups, downs, props []float64
	for i := 0; i < k; i++ {
		if _, err := c.ScaleApp(ctx, dst.GUID, 2); err != nil {
			return err
		}
		t0 := time.Now()
		d, err := until(2)
		if err != nil {
			return fmt.Errorf("after scale-up %d: %w", i+1, err)
		}
		ups = append(ups, ms(d))
		// From the instance's registration by its cell (the controller's
		// updated_at, this machine's clock) to the first answer with it.
		ins, err := c.Instances(ctx, dst.GUID)
		if err != nil {
			return err
		}
		for _, in := range ins {
			if in.Index == 1 && in.State == "RUNNING" && !in.UpdatedAt.IsZero() {
				props = append(props, ms(t0.Add(d).Sub(in.UpdatedAt)))
			}
		}
		if _, err := c.ScaleApp(ctx, dst.GUID, 1); err != nil {
			return err
		}
		if d, err = until(1); err != nil {
			return fmt.Errorf("after scale-down %d: %w", i+1, err)
		}
		downs = append(downs, ms(d))
	}
	rep.Samples["dns-instance-start/trellis"], rep.Samples["dns-instance-stop/trellis"] = ups, downs
	rep.Samples["dns-instance-registered/trellis"] = props
	if len(props) != len(ups) {
		return fmt.Errorf("registration time of the started instance found %d times in %d scale-ups", len(props), len(ups))
	}
	rep.Figures = append(rep.Figures,
		newFigure("dns/instance-registered-p99", "instance registered by its cell → in another cell's DNS answers, p99", "ms", percentile(props, 99), 180000,
			"Cloud Foundry's service-discovery staleness threshold (documented, not measured)", &goal{atMost: true, limit: 200}),
		// From the scale call, a start also counts the instance's own
		// start on its cell (scheduling, namespace, CNI ADD, process):
		// informative; the propagation goal is held by the figure above.
		newFigure("dns/instance-start-p99", "scale-up API call → new instance in another cell's DNS answers, p99", "ms", percentile(ups, 99), 180000,
			"Cloud Foundry's service-discovery staleness threshold (documented, not measured)", nil),
		newFigure("dns/instance-stop-p99", "instance stopped → gone from another cell's answers, p99", "ms", percentile(downs, 99), 180000,
			"Cloud Foundry's service-discovery staleness threshold (documented, not measured)", &goal{atMost: true, limit: 200}))
	rep.Notes = append(rep.Notes, "dns instances: the clock starts when the scale API call returns, so a start includes scheduling, the instance's namespace, CNI ADD, its process and its registration; a stop includes stopping the process and CNI DEL; \"registered\" starts at the instance's updated_at in the controller (set when its cell registered it after CNI ADD; same machine clock) and is the propagation alone")
	return nil
}

// dnsQuery is a DNS query for the A records of name, as bytes.
func dnsQuery(name string) []byte {
	q := []byte{0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0}
	for _, label := range strings.Split(name, ".") {
		q = append(q, byte(len(label)))
		q = append(q, label...)
	}
	return append(q, 0, 0, 1, 0, 1)
}

// firstSYN probes from the namespace srcNS until connecting to addr gives
// want (true: connected; false: refused), and returns how long that took.
func firstSYN(srcNS, addr string, want bool) (time.Duration, error) {
	start := time.Now()
	for time.Since(start) < 10*time.Second {
		var conn net.Conn
		err := netns.Do(srcNS, func() (err error) {
			conn, err = net.DialTimeout("tcp", addr, time.Second)
			return err
		})
		if conn != nil {
			conn.Close()
		}
		switch {
		case err == nil && want, errors.Is(err, syscall.ECONNREFUSED) && !want:
			return time.Since(start), nil
		case err != nil && !errors.Is(err, syscall.ECONNREFUSED):
			return 0, fmt.Errorf("probe %s: %w", addr, err)
		}
		time.Sleep(200 * time.Microsecond)
	}
	return 0, fmt.Errorf("no change seen at %s within 10s", addr)
}
