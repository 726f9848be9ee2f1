package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/google/uuid"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/controller"
	"github.com/trellis-c2c/trellis/internal/launcher"
	"github.com/trellis-c2c/trellis/internal/netns"
)

// ScaleOptions configure the scale bench.
type ScaleOptions struct {
	Cells    int // default 50 (quick: 3)
	Quick    bool
	Progress io.Writer
	Exe      string // the trellis binary; default the running one
}

// scaleParams are the sizes of one scale run.
type scaleParams struct {
	cells, apps, policies, instances, adds, dnsRounds, apiRounds int
	// smallPolicies are stored when the cost of a change is measured
	// first, before the rest: the same changes at both sizes.
	smallPolicies int
}

func scaleSizes(o ScaleOptions) scaleParams {
	p := scaleParams{cells: 50, apps: 20000, policies: 60000, smallPolicies: 1000, instances: 1000, adds: 100, dnsRounds: 20, apiRounds: 50}
	if o.Quick {
		p = scaleParams{cells: 3, apps: 150, policies: 450, smallPolicies: 30, instances: 12, adds: 5, dnsRounds: 3, apiRounds: 10}
	}
	if o.Cells > 0 {
		p.cells = o.Cells
	}
	p.instances = max(p.instances, 2*pairSets*p.adds, p.cells)
	return p
}

// pairSets is the number of sets of p.adds pairs of instances, each pair
// of its own two apps on two cells: the first for the timed policy adds,
// the others for the cost of an add at two store sizes. Each set's adds
// are the first policies between their pairs: each wakes both cells (a
// second policy between the same apps changes only the destination's).
const pairSets = 3

// Scale measures the control plane at scale on a local foundation of N
// cells with real agents: the store loaded through the API, instances
// attached through the CNI plugin; API write latency against a controller
// with no cells loaded the same way in the same run, policy add → enforced
// on the affected cells, route change → every cell's DNS, an agent's
// restart with the full store, RSS, and the bytes of the states sent.
func Scale(ctx context.Context, o ScaleOptions) (rep *Report, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the scale bench needs root: it builds network namespaces")
	}
	progress := o.Progress
	if progress == nil {
		progress = io.Discard
	}
	step := func(format string, args ...any) { fmt.Fprintf(progress, "scale: "+format+"\n", args...) }
	p := scaleSizes(o)
	r := &Report{Bench: "scale", Quick: o.Quick, Started: time.Now(), CPUs: runtime.NumCPU(), LoadStart: loadavg(), Samples: map[string][]float64{}}
	defer func() {
		r.Seconds = time.Since(r.Started).Seconds()
		r.LoadEnd = loadavg()
	}()
	dir, err := os.MkdirTemp("", "trellis-bench-scale-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	// The baseline: a controller with no cell, in this process.
	step("starting a baseline controller with no cell")
	bctx, bcancel := context.WithCancel(ctx)
	bdone := make(chan error, 1)
	ready := make(chan string, 1)
	bdir := filepath.Join(dir, "baseline")
	go func() {
		bdone <- controller.Run(bctx, controller.Config{StateDir: bdir, Listen: "127.0.0.1:0",
			Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Ready: func(u string) { ready <- u }})
	}()
	defer func() { bcancel(); <-bdone }()
	select {
	case <-ready:
	case err := <-bdone:
		bdone <- err
		return nil, fmt.Errorf("baseline controller: %w", err)
	case <-time.After(60 * time.Second):
		return nil, errors.New("baseline controller not ready in 60s")
	}
	base, err := clientFrom(filepath.Join(bdir, controller.AdminConfigFile))
	if err != nil {
		return nil, err
	}

	step("starting a local foundation with %d cells", p.cells)
	state := filepath.Join(dir, "foundation")
	f, err := launcher.Up(ctx, launcher.Options{StateDir: state, Cells: p.cells, Exe: o.Exe})
	defer func() {
		if derr := launcher.Down(context.WithoutCancel(ctx), state, true, io.Discard); derr != nil && err == nil {
			err = derr
		}
	}()
	if err != nil {
		return nil, err
	}
	r.Prefix = f.Prefix
	c, err := clientFrom(f.Admin)
	if err != nil {
		return nil, err
	}

	// The foundation gets its apps and the first smallPolicies policies
	// now, the rest after the cost of a change was measured at that size;
	// the baseline controller gets them all.
	step("loading the foundation: %d apps, %d policies", p.apps, p.smallPolicies)
	storeApps, err := loadApps(ctx, c, p)
	if err != nil {
		return nil, fmt.Errorf("load the foundation: %w", err)
	}
	if err := loadPolicies(ctx, c, storeApps, 0, p.smallPolicies); err != nil {
		return nil, fmt.Errorf("load the foundation: %w", err)
	}
	step("loading the baseline controller: %d apps, %d policies", p.apps, p.policies)
	baseApps, err := loadApps(ctx, base, p)
	if err != nil {
		return nil, fmt.Errorf("load the baseline controller: %w", err)
	}
	if err := loadPolicies(ctx, base, baseApps, 0, p.policies); err != nil {
		return nil, fmt.Errorf("load the baseline controller: %w", err)
	}
	space, err := newSpace(ctx, c, "scale-run")
	if err != nil {
		return nil, err
	}
	bspace, err := newSpace(ctx, base, "scale-run")
	if err != nil {
		return nil, err
	}

	// Instances through CNI, spread over the cells. The first
	// 2*pairSets*adds are the policy adds' pairs (source on cell k,
	// destination on cell k+1), each of its own app; the others are
	// instances of apps of the store.
	step("attaching %d instances through the CNI plugin", p.instances)
	cni := libcni.NewCNIConfigWithCacheDir([]string{filepath.Dir(f.CNIPlugin)}, filepath.Join(dir, "cni-cache"), nil)
	lists := make([]*libcni.NetworkConfigList, len(f.Cells))
	for i, cell := range f.Cells {
		if lists[i], err = libcni.ConfListFromFile(cell.CNIConfList); err != nil {
			return nil, err
		}
	}
	type ctr struct {
		ns   string // path
		cell int
		app  string
		ip   netip.Addr
	}
	var ctrs []ctr
	var nsNames []string
	defer func() {
		for _, n := range nsNames {
			netns.Delete(n)
		}
	}()
	for i := range p.instances {
		cell := i % len(f.Cells) // pair k: cells 2k and 2k+1 (mod N)
		var app string
		if i < 2*pairSets*p.adds {
			a, err := c.CreateApp(ctx, space, fmt.Sprintf("pair-%03d-%d", i/2, i%2))
			if err != nil {
				return nil, err
			}
			app = a.GUID
		} else {
			app = storeApps[i%len(storeApps)]
		}
		name := fmt.Sprintf("%s-x%d", f.Prefix, i)
		path, err := netns.Create(name)
		if err != nil {
			return nil, err
		}
		nsNames = append(nsNames, name)
		rt := &libcni.RuntimeConf{ContainerID: name, NetNS: path, IfName: "eth0", Args: [][2]string{
			{"TRELLIS_APP_GUID", app}, {"TRELLIS_INSTANCE_GUID", uuid.NewString()}, {"TRELLIS_INDEX", strconv.Itoa(i)}}}
		var res *types100.Result
		err = netns.Do(netns.Path(f.Cells[cell].NetNS), func() error {
			out, err := cni.AddNetworkList(ctx, lists[cell], rt)
			if err != nil {
				return err
			}
			res, err = types100.NewResultFromResult(out)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("CNI ADD %d on %s: %w", i, f.Cells[cell].Name, err)
		}
		if len(res.IPs) == 0 {
			return nil, fmt.Errorf("CNI ADD %d: no address", i)
		}
		ip, _ := netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
		ctrs = append(ctrs, ctr{ns: path, cell: cell, app: app, ip: ip})
	}

	// The cost of a change (CPU, bytes) at smallPolicies, then with the
	// whole store: policy adds between the pairs (each pair's apps are
	// on two cells), gap apart.
	probe := &costProbe{f: f, idle: 2 * time.Second, gap: 100 * time.Millisecond}
	if o.Quick {
		probe.idle = time.Second
	}
	pairAdd := func(set int) func(k int) error {
		return func(k int) error {
			j := set*p.adds + k
			return c.CreatePolicies(ctx, []api.Policy{{Source: api.Source{ID: ctrs[2*j].app},
				Destination: api.Destination{ID: ctrs[2*j+1].app, Protocol: "tcp", Ports: api.Ports{Start: 8082, End: 8082}}}})
		}
	}
	pairCells := func(set int) func(k int) []int {
		return func(k int) []int { j := set*p.adds + k; return []int{ctrs[2*j].cell, ctrs[2*j+1].cell} }
	}
	step("cost of a policy add with %d policies stored: %d adds", p.smallPolicies, p.adds)
	small, err := probe.measure(ctx, p.adds, pairAdd(1), pairCells(1))
	if err != nil {
		return nil, fmt.Errorf("policy adds at %d policies: %w", p.smallPolicies, err)
	}
	step("loading the foundation's other %d policies", p.policies-p.smallPolicies)
	if err := loadPolicies(ctx, c, storeApps, p.smallPolicies, p.policies); err != nil {
		return nil, fmt.Errorf("load the foundation: %w", err)
	}
	step("cost of a policy add with %d policies stored: %d adds", p.policies, p.adds)
	large, err := probe.measure(ctx, p.adds, pairAdd(2), pairCells(2))
	if err != nil {
		return nil, fmt.Errorf("policy adds at %d policies: %w", p.policies, err)
	}
	sizeName := fmt.Sprintf("the same adds with %d policies stored, same run", p.smallPolicies)
	r.Figures = append(r.Figures,
		newFigure("scale/policy-add-bytes-per-cell", fmt.Sprintf("policy add, %d policies: state bytes read per change per cell (deltas)", p.policies), "bytes",
			large.bytesPerCell, large.fullPer, "the whole states of the cells it woke (what was sent before deltas), per cell", nil),
		newFigure("scale/policy-add-bytes-vs-size", fmt.Sprintf("policy add: state bytes per change per cell, %d policies", p.policies), "bytes",
			large.bytesPerCell, small.bytesPerCell, sizeName, &goal{ratio: true, atMost: true, limit: 1.5}),
		newFigure("scale/policy-add-controller-cpu", fmt.Sprintf("policy add: controller CPU per change, %d policies", p.policies), "ms",
			large.ctrlCPU, small.ctrlCPU, sizeName, &goal{ratio: true, atMost: true, limit: 1.5, slack: 0.5}),
		newFigure("scale/policy-add-agent-cpu", fmt.Sprintf("policy add: CPU of all agents per change, %d policies", p.policies), "ms",
			large.agentCPU, small.agentCPU, sizeName, &goal{ratio: true, atMost: true, limit: 1.5, slack: 0.5}))
	r.Notes = append(r.Notes, small.note(fmt.Sprintf("policy add cost, %d policies", p.smallPolicies)), large.note(fmt.Sprintf("policy add cost, %d policies", p.policies)))

	revs := func() ([]int64, error) {
		out := make([]int64, len(f.Cells))
		for i, cell := range f.Cells {
			st, err := launcher.AgentStatus(ctx, cell.Socket)
			if err != nil {
				return nil, err
			}
			out[i] = st.Revision
		}
		return out, nil
	}

	// API write latency: rounds alternating the foundation and the
	// baseline.
	step("API writes: %d app creates and %d policy creates on each controller, alternating", p.apiRounds, p.apiRounds)
	var appW, appB, polW, polB []float64
	for i := range p.apiRounds {
		for _, side := range []struct {
			c     *api.Client
			space string
			apps  *[]float64
			pols  *[]float64
		}{{c, space, &appW, &polW}, {base, bspace, &appB, &polB}} {
			t0 := time.Now()
			a, err := side.c.CreateApp(ctx, side.space, fmt.Sprintf("api-%03d", i))
			if err != nil {
				return nil, err
			}
			*side.apps = append(*side.apps, ms(time.Since(t0)))
			b, err := side.c.CreateApp(ctx, side.space, fmt.Sprintf("api-%03d-b", i))
			if err != nil {
				return nil, err
			}
			t0 = time.Now()
			if err := side.c.CreatePolicies(ctx, []api.Policy{{Source: api.Source{ID: a.GUID},
				Destination: api.Destination{ID: b.GUID, Protocol: "tcp", Ports: api.Ports{Start: 9000, End: 9000}}}}); err != nil {
				return nil, err
			}
			*side.pols = append(*side.pols, ms(time.Since(t0)))
		}
	}
	r.Samples["api-app-create/watched"], r.Samples["api-app-create/none"] = appW, appB
	r.Samples["api-policy-create/watched"], r.Samples["api-policy-create/none"] = polW, polB
	baseName := "a controller with no cell, same store size, same run"
	r.Figures = append(r.Figures,
		newPairedFigure("scale/api-app-create", fmt.Sprintf("app create with %d cells watching", p.cells), "ms", appW, appB, baseName, &goal{ratio: true, atMost: true, limit: 1.5}),
		newPairedFigure("scale/api-policy-create", fmt.Sprintf("policy create with %d cells watching", p.cells), "ms", polW, polB, baseName, &goal{ratio: true, atMost: true, limit: 1.5}))

	// Policy adds between running pairs: until both cells applied a new
	// revision and a TCP connect from the source reaches the destination.
	step("policy adds: %d, each between a fresh pair of running apps on two cells", p.adds)
	for k := range p.adds {
		d := ctrs[2*k+1]
		var ln net.Listener
		if err := netns.Do(d.ns, func() (err error) { ln, err = net.Listen("tcp", ":8080"); return err }); err != nil {
			return nil, err
		}
		defer ln.Close()
		go func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				conn.Close()
			}
		}()
	}
	var enforced, woken []float64
	for k := range p.adds {
		s, d := ctrs[2*k], ctrs[2*k+1]
		before, err := revs()
		if err != nil {
			return nil, err
		}
		if err := c.CreatePolicies(ctx, []api.Policy{{Source: api.Source{ID: s.app},
			Destination: api.Destination{ID: d.app, Protocol: "tcp", Ports: api.Ports{Start: 8080, End: 8080}}}}); err != nil {
			return nil, err
		}
		t0 := time.Now()
		addr := netip.AddrPortFrom(d.ip, 8080).String()
		applied, connected := false, false
		for !(applied && connected) {
			if time.Since(t0) > 30*time.Second {
				return nil, fmt.Errorf("policy add %d not enforced within 30s (applied %v, connected %v)", k+1, applied, connected)
			}
			if !applied {
				now, err := revs()
				if err != nil {
					return nil, err
				}
				applied = now[s.cell] > before[s.cell] && now[d.cell] > before[d.cell]
			}
			if !connected {
				netns.Do(s.ns, func() error {
					conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
					if err == nil {
						conn.Close()
						connected = true
					}
					return nil
				})
			}
			if !(applied && connected) {
				time.Sleep(time.Millisecond)
			}
		}
		enforced = append(enforced, ms(time.Since(t0)))
		after, err := revs()
		if err != nil {
			return nil, err
		}
		n := 0
		for i := range after {
			if after[i] != before[i] {
				n++
			}
		}
		woken = append(woken, float64(n))
	}
	r.Samples["policy-add-enforced/trellis"], r.Samples["policy-add-cells-woken/trellis"] = enforced, woken
	r.Figures = append(r.Figures,
		newFigure("scale/policy-add-enforced-p50", "policy add → enforced on both affected cells, p50", "ms", percentile(enforced, 50), 5000,
			"Cloud Foundry's policy poll interval (documented, not measured)", &goal{atMost: true, limit: 100}),
		newFigure("scale/policy-add-enforced-p99", "policy add → enforced on both affected cells, p99", "ms", percentile(enforced, 99), 5000,
			"Cloud Foundry's policy poll interval (documented, not measured)", &goal{atMost: true, limit: 100}),
		newFigure("scale/policy-add-cells-woken", "cells whose applied revision moved per policy add, max", "cells", percentile(woken, 100), float64(len(f.Cells)),
			"every cell", &goal{atMost: true, limit: 2}))

	// Route changes: until every cell's DNS server answers from a
	// container on it.
	domains, err := c.Domains(ctx, api.DomainFilter{Names: []string{"apps.internal"}})
	if err != nil || len(domains) == 0 {
		return nil, fmt.Errorf("apps.internal: %v", err)
	}
	route, err := c.CreateRoute(ctx, space, domains[0].GUID, "scale-dns")
	if err != nil {
		return nil, err
	}
	var conns []net.Conn
	for i := range f.Cells {
		var conn net.Conn
		if err := netns.Do(ctrs[i].ns, func() (err error) { conn, err = net.Dial("udp", "169.254.0.2:53"); return err }); err != nil {
			return nil, err
		}
		defer conn.Close()
		conns = append(conns, conn)
	}
	// The cost of a route change: every cell's DNS answers for every
	// route, so each wakes every cell.
	step("cost of a route change: %d maps and unmaps", 2*p.dnsRounds)
	all := make([]int, len(f.Cells))
	for i := range all {
		all[i] = i
	}
	routes, err := probe.measure(ctx, 2*p.dnsRounds, func(k int) error {
		if k%2 == 0 {
			_, err := c.AddRouteDestinations(ctx, route.GUID, ctrs[1].app)
			return err
		}
		return c.RemoveRouteDestination(ctx, route.GUID, ctrs[1].app)
	}, func(int) []int { return all })
	if err != nil {
		return nil, fmt.Errorf("route changes: %w", err)
	}
	r.Figures = append(r.Figures, costFigures("scale/route-change", "route change", routes)...)
	r.Notes = append(r.Notes, routes.note("route change cost"))
	step("route changes: %d maps and unmaps, timed until every cell's DNS answers", p.dnsRounds)
	query := dnsQuery("scale-dns.apps.internal")
	// What the probe costs the cells, and how the cells' answers spread:
	// queries sent, and when the first cell answered, per change.
	var queries int
	var firstTimes []float64
	allAnswer := func(want int) (time.Duration, error) {
		start := time.Now()
		first := time.Duration(0)
		pending := map[int]bool{}
		for i := range conns {
			pending[i] = true
		}
		buf := make([]byte, 512)
		for len(pending) > 0 {
			if time.Since(start) > 30*time.Second {
				return 0, fmt.Errorf("%d cells' DNS did not answer %d addresses within 30s", len(pending), want)
			}
			// Every pending cell is asked at once, then each answer read:
			// a cell slow to answer does not hold back the others' questions.
			for i := range pending {
				conns[i].SetDeadline(time.Now().Add(time.Second))
				if _, err := conns[i].Write(query); err != nil {
					return 0, err
				}
				queries++
			}
			deadline := time.Now().Add(50 * time.Millisecond)
			for i := range pending {
				conns[i].SetReadDeadline(deadline)
			}
			for i := range pending {
				k, err := conns[i].Read(buf)
				if err == nil && k >= 12 && int(buf[6])<<8|int(buf[7]) == want {
					delete(pending, i)
					if first == 0 {
						first = time.Since(start)
					}
				}
			}
		}
		firstTimes = append(firstTimes, ms(first))
		return time.Since(start), nil
	}
	var dnsTimes []float64
	for i := range p.dnsRounds {
		if _, err := c.AddRouteDestinations(ctx, route.GUID, ctrs[1].app); err != nil {
			return nil, err
		}
		d, err := allAnswer(1)
		if err != nil {
			return nil, fmt.Errorf("after map %d: %w", i+1, err)
		}
		dnsTimes = append(dnsTimes, ms(d))
		if err := c.RemoveRouteDestination(ctx, route.GUID, ctrs[1].app); err != nil {
			return nil, err
		}
		if d, err = allAnswer(0); err != nil {
			return nil, fmt.Errorf("after unmap %d: %w", i+1, err)
		}
		dnsTimes = append(dnsTimes, ms(d))
	}
	r.Samples["route-change-all-dns/trellis"] = dnsTimes
	r.Samples["route-change-first-dns/trellis"] = firstTimes
	r.Notes = append(r.Notes, fmt.Sprintf("route change → DNS, how the answers spread: the first cell answered at p50 %.1f / p99 %.1f ms, every cell at p50 %.1f / p99 %.1f ms; the probe sent %.0f DNS queries per change (%d cells)",
		percentile(firstTimes, 50), percentile(firstTimes, 99), percentile(dnsTimes, 50), percentile(dnsTimes, 99), float64(queries)/float64(max(1, len(dnsTimes))), len(conns)))
	r.Figures = append(r.Figures, newFigure("scale/route-change-dns-p99", "route change → every cell's DNS answers it, p99", "ms", percentile(dnsTimes, 99), 180000,
		"Cloud Foundry's service-discovery staleness threshold (documented, not measured)", &goal{atMost: true, limit: 200}))

	// RSS, before the restart below.
	ctrlRSS := rssMiB(f.Controller.PID)
	agentRSS := 0.0
	for _, cell := range f.Cells {
		agentRSS = max(agentRSS, rssMiB(cell.Agent.PID))
	}

	// One agent's restart with the full store: process start → ready.
	last := len(f.Cells) - 1
	step("restarting the agent of %s", f.Cells[last].Name)
	if err := stopPID(f.Cells[last].Agent.PID); err != nil {
		return nil, err
	}
	exe := o.Exe
	if exe == "" {
		if exe, err = os.Executable(); err != nil {
			return nil, err
		}
	}
	t0 := time.Now()
	if err := f.StartAgent(ctx, c, last, exe); err != nil {
		return nil, err
	}
	for {
		st, err := launcher.AgentStatus(ctx, f.Cells[last].Socket)
		if err == nil && st.Ready {
			break
		}
		if time.Since(t0) > 60*time.Second {
			return nil, errors.New("the restarted agent was not ready within 60s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cold := ms(time.Since(t0))
	r.Figures = append(r.Figures,
		newFigure("scale/agent-cold-start", "agent start → first complete apply, full store", "ms", cold, 2000, "the goal", &goal{atMost: true, limit: 2000}),
		newFigure("scale/controller-rss", "controller RSS", "MiB", ctrlRSS, 512, "the goal", &goal{atMost: true, limit: 512}),
		newFigure("scale/agent-rss", "agent RSS, largest of the cells", "MiB", agentRSS, 64, "the goal", &goal{atMost: true, limit: 64}))
	r.Notes = append(r.Notes,
		fmt.Sprintf("scale: a local foundation of %d cells (namespaces, real agent processes, controller on SQLite) loaded through the API with %d apps and %d policies among them, %d instances attached through the CNI plugin (run by libcni from each cell's namespace)", p.cells, p.apps, p.policies, p.instances),
		fmt.Sprintf("api: %d rounds, each an app create and a policy create (between two new apps) on the foundation and then on a controller with no cell (in the bench's process, SQLite, loaded the same way); the ratio is the median of the rounds' ratios", p.apiRounds),
		"policy add: each between two fresh apps running on two cells; the clock starts when the API call returns and stops when both cells' agents report a new applied revision and a TCP connect from the source container reaches the destination's listener (default deny rejects it before); cells woken = agents whose applied revision moved by then",
		fmt.Sprintf("cost of a change: an idle window (%v) measures the controller's and the agents' CPU at rest; then the changes, %v apart (more than the feed's 50 ms coalescing: each is pushed alone), until every affected cell's agent applied a newer state and no revision moved for 500 ms; CPU = the process's CPU clock (clock_gettime of its CPUCLOCK_SCHED clock: user + system, in nanoseconds, exited threads included; until 2026-12-07 the bench read /proc/PID/stat's 10 ms ticks, too coarse for a few ms per change) over that time less the idle rate, per change; bytes = the agents' count of state answer bytes read (deltas, plus 1-byte heartbeats), per change per cell of the foundation; the whole-state baseline = the JSON size of the states the woken cells hold after; the policy adds are the first between two sets of pairs of apps running on two cells, at %d and then %d policies stored, the route changes map and unmap one internal route", probe.idle, probe.gap, p.smallPolicies, p.policies),
		"route change: map and unmap of an internal route to a running app; the clock starts when the API call returns and stops when a container on every cell has had the expected answer from its cell's DNS server (every cell not yet answering is asked at once, then each answer read within 50 ms, again until all answered)",
		"agent start: the agent of the last cell stopped (SIGTERM) and started again on its kept identity, until its status says ready (its first state applied); RSS: VmRSS of the controller and agent processes after the measurements above")
	return r, nil
}

// loadApps creates p.apps apps in one org and space, four writers at a
// time.
func loadApps(ctx context.Context, c *api.Client, p scaleParams) ([]string, error) {
	space, err := newSpace(ctx, c, "scale")
	if err != nil {
		return nil, err
	}
	apps := make([]string, p.apps)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < p.apps; i += 4 {
				a, err := c.CreateApp(ctx, space, fmt.Sprintf("app-%05d", i))
				if err != nil {
					errs <- err
					return
				}
				apps[i] = a.GUID
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		return nil, err
	default:
	}
	return apps, nil
}

// loadPolicies creates the policies from..to-1 among apps (each the same
// on every run), in batches.
func loadPolicies(ctx context.Context, c *api.Client, apps []string, from, to int) error {
	const batch = 100
	n := len(apps)
	for i := from; i < to; i += batch {
		var ps []api.Policy
		for j := i; j < min(i+batch, to); j++ {
			src, dst := apps[j%n], apps[(j*7+1+j/n)%n]
			ps = append(ps, api.Policy{Source: api.Source{ID: src},
				Destination: api.Destination{ID: dst, Protocol: "tcp", Ports: api.Ports{Start: 8000 + j/n, End: 8000 + j/n}}})
		}
		if err := c.CreatePolicies(ctx, ps); err != nil {
			return err
		}
	}
	return nil
}

// newSpace creates an org and a space named name and returns the space.
func newSpace(ctx context.Context, c *api.Client, name string) (string, error) {
	org, err := c.CreateOrg(ctx, name+"-"+uuid.NewString()[:8])
	if err != nil {
		return "", err
	}
	sp, err := c.CreateSpace(ctx, org.GUID, name)
	if err != nil {
		return "", err
	}
	return sp.GUID, nil
}

func clientFrom(path string) (*api.Client, error) {
	cfg, err := api.LoadClientConfig(path)
	if err != nil {
		return nil, err
	}
	return api.NewClient(cfg)
}

// rssMiB reads a process's VmRSS.
func rssMiB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// stopPID sends SIGTERM to a process the launcher started and waits until
// it is gone.
func stopPID(pid int) error {
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return err
	}
	for start := time.Now(); time.Since(start) < 30*time.Second; time.Sleep(10 * time.Millisecond) {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return nil
		}
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && strings.Contains(string(b), ") Z ") {
			return nil // exited, not yet reaped by the launcher's goroutine
		}
	}
	return fmt.Errorf("process %d did not stop within 30s", pid)
}
