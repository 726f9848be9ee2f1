package bench

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	mdnetlink "github.com/mdlayher/netlink"
	"github.com/trellis-c2c/trellis/internal/dataplane"
	"github.com/trellis-c2c/trellis/internal/netns"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The cross-cell policy figures: a client container on cell1, a server
// container on cell2, four ways of filtering what reaches the server.
const (
	connPort    = 5202 // the new-connection probe: accepts and closes
	deniedPort  = 5203 // the same server, never allowed: proves enforcement
	clientTag   = 1000 // the client's app, one of the 1,000
	serverTag   = 1
	numApps     = 1000
	numPolicies = 10000
	// linearTable is the bench's own table for the iptables-style chain.
	linearTable = "trbench_linear"
)

// filtering is one way cell2 filters the traffic to the server.
type filtering int

const (
	filterNone   filtering = iota // no policy table anywhere: the plain overlay
	filterOne                     // trellis, default deny + the allows needed
	filterMap                     // trellis, default deny + 10,000 allows
	filterLinear                  // 10,000 rules in one chain, no conntrack
	filterCT                      // conntrack on both cells, no policy: what any stateful filter pays
	numFilterings
)

var (
	filterNames = [numFilterings]string{"no policy", "deny + 1 policy", "deny + 10,000 policies", "10,000 linear rules", "conntrack alone"}
	filterKeys  = [numFilterings]string{"none", "deny-1", "deny-10k", "linear-10k", "conntrack"} // in Report.Samples
)

// policyThroughput measures cross-cell TCP throughput and the rate of new
// connections from a client container on cell1 to a server container on
// cell2 under each filtering, interleaving the filterings within each run,
// and appends the figures to rep. It builds the overlay bench's two cells
// in namespaces of its own prefix and deletes them before it returns.
func policyThroughput(ctx context.Context, rep *Report, quick bool, progress io.Writer) (err error) {
	iperf3, err := exec.LookPath("iperf3")
	if err != nil {
		return ErrNoIPerf3
	}
	prefix := NewPrefix()
	r := &run{bench: "policy", ctx: ctx, prefix: prefix, out: cmp.Or(progress, io.Discard), iperf3: iperf3}
	r.logf("cross-cell throughput and connection rate under policy; namespaces: %s*", prefix)
	defer func() {
		if cerr := r.cleanup(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("clean up: %w", cerr))
		}
		if left := Leftovers(prefix); len(left) > 0 {
			err = errors.Join(err, fmt.Errorf("namespaces left behind: %s", strings.Join(left, " ")))
		}
	}()

	t, attach, err := r.buildCells()
	if err != nil {
		return err
	}
	client, server := t.trellisA, t.trellisB
	cell1, cell2 := t.cell1.NetNS, t.cell2.NetNS
	dp1, dp2 := t.cell1.dp, t.cell2.dp
	teardown := func() error { return errors.Join(dp1.TeardownPolicy(), dp2.TeardownPolicy()) }
	if err := r.iperf3Server(server); err != nil {
		return err
	}
	for _, port := range []uint16{connPort, deniedPort} {
		if err := r.acceptClose(server, port); err != nil {
			return err
		}
	}

	needed := []dataplane.Allow{
		{DestIP: server.ip, SrcTag: clientTag, Protocol: "tcp", StartPort: connPort, EndPort: connPort},
		{DestIP: server.ip, SrcTag: clientTag, Protocol: "tcp", StartPort: iperf3Port, EndPort: iperf3Port},
	}
	many := manyAllows(t.cell2.Subnet, needed)
	clientPolicy := dataplane.Policy{Enforce: true, Locals: []dataplane.Local{{IP: client.ip, Tag: clientTag}}}
	serverLocals := []dataplane.Local{{IP: server.ip, Tag: serverTag}}

	// apply makes the cells filter as f says.
	apply := func(f filtering) error {
		if err := errors.Join(delLinear(cell1), delLinear(cell2)); err != nil {
			return err
		}
		switch f {
		case filterNone:
			return teardown()
		case filterLinear:
			if err := teardown(); err != nil {
				return err
			}
			if err := addMarkAll(cell1, clientTag); err != nil {
				return err
			}
			return addLinear(cell2, many)
		case filterCT:
			if err := teardown(); err != nil {
				return err
			}
			return errors.Join(addConntrackOnly(cell1), addConntrackOnly(cell2))
		}
		allows := needed
		if f == filterMap {
			allows = many
		}
		// The source cell marks the client's packets with its tag.
		if _, err := dp1.Set(ctx, dataplane.Desired{Policy: &clientPolicy}); err != nil {
			return err
		}
		_, err := dp2.Set(ctx, dataplane.Desired{Policy: &dataplane.Policy{Enforce: true, Locals: serverLocals, Allows: allows}})
		return err
	}

	p := paramsFor(quick)
	// The connection rate is one sequential client, so it follows every
	// hiccup of the machine: it is measured in many short rounds,
	// interleaved, and the median taken.
	connRounds, connFor := 20, 250*time.Millisecond
	if quick {
		connRounds, connFor = 4, 200*time.Millisecond
	}
	// Warm up the path (neighbours, caches, CPU frequency) so that
	// whichever filtering goes first is not measured on a cold one.
	if err := apply(filterNone); err != nil {
		return err
	}
	if _, err := r.iperf3Client(client, server, 1, overlayParams{seconds: 1}); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	if _, err := r.connRate(client, netip.AddrPortFrom(server.ip, connPort), 200*time.Millisecond); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	var tput, conns [numFilterings][]float64
	// each runs fn under every filtering, starting with the n-th, so that
	// none is always measured first.
	each := func(n int, fn func(f filtering) error) error {
		for i := range numFilterings {
			f := (filtering(n) + i) % numFilterings
			if err := apply(f); err != nil {
				return fmt.Errorf("%s: %w", filterNames[f], err)
			}
			if err := r.checkReach(client, server, f != filterNone && f != filterCT); err != nil {
				return fmt.Errorf("%s: %w", filterNames[f], err)
			}
			if err := fn(f); err != nil {
				return fmt.Errorf("%s: %w", filterNames[f], err)
			}
		}
		return nil
	}
	for n := 1; n <= p.runs; n++ {
		err := each(n-1, func(f filtering) error {
			g, err := r.iperf3Client(client, server, 1, p)
			if err != nil {
				return err
			}
			r.logf("TCP run %d/%d, %-24s %6.2f Gbit/s", n, p.runs, filterNames[f]+":", g)
			tput[f] = append(tput[f], g)
			return nil
		})
		if err != nil {
			return err
		}
	}
	var cpuPer, connP10 [numFilterings][]float64
	for n := range connRounds {
		err := each(n, func(f filtering) error {
			c, p10, cpu, err := r.connRound(client, netip.AddrPortFrom(server.ip, connPort), connFor)
			if err != nil {
				return err
			}
			conns[f] = append(conns[f], c)
			connP10[f] = append(connP10[f], p10)
			cpuPer[f] = append(cpuPer[f], cpu)
			return nil
		})
		if err != nil {
			return err
		}
	}
	for f := range numFilterings {
		r.logf("new connections, %-24s median %6.0f/s of %d rounds (%.0f to %.0f)", filterNames[f]+":",
			median(conns[f]), len(conns[f]), slices.Min(conns[f]), slices.Max(conns[f]))
	}
	if err := apply(filterNone); err != nil {
		return err
	}

	for f := range numFilterings {
		rep.Samples["xcell-tcp-1/"+filterKeys[f]] = tput[f]
		rep.Samples["xcell-conn-rate/"+filterKeys[f]] = conns[f]
		rep.Samples["xcell-conn-cpu/"+filterKeys[f]] = cpuPer[f]
		rep.Samples["xcell-conn-time-p10/"+filterKeys[f]] = connP10[f]
	}
	base := "same path, no policy table"
	ctBase := "same path, conntrack on both cells and no policy"
	for _, f := range []filtering{filterOne, filterMap, filterLinear} {
		// Throughput is held to the path with no nftables; new
		// connections to conntrack alone, which any design that keeps
		// trellis's semantics pays (replies pass by state, revocation cuts
		// flows): against no nftables they are informative.
		var g *goal
		if f != filterLinear {
			g = &goal{ratio: true, limit: 0.95}
		}
		rep.Figures = append(rep.Figures,
			newPairedFigure("policy/xcell-tcp-1-"+filterKeys[f], "cross-cell TCP, 1 stream, "+filterNames[f], "Gbit/s",
				tput[f], tput[filterNone], base, g),
			newPairedFigure("policy/xcell-conn-rate-"+filterKeys[f], "cross-cell new connections, "+filterNames[f], "conn/s",
				conns[f], conns[filterNone], base, nil))
	}
	// What conntrack alone costs, and trellis measured against it: the
	// part of the gap to the bare path that any stateful enforcement pays.
	rep.Figures = append(rep.Figures,
		newPairedFigure("policy/xcell-conn-rate-conntrack", "cross-cell new connections, conntrack alone", "conn/s",
			conns[filterCT], conns[filterNone], base, nil))
	for _, f := range []filtering{filterOne, filterMap} {
		rep.Figures = append(rep.Figures,
			newPairedFigure("policy/xcell-conn-rate-"+filterKeys[f]+"-vs-conntrack", "cross-cell new connections, "+filterNames[f]+", vs conntrack alone", "conn/s",
				conns[f], conns[filterCT], ctBase, &goal{ratio: true, limit: 0.95}),
			newPairedFigure("policy/xcell-tcp-1-"+filterKeys[f]+"-vs-conntrack", "cross-cell TCP, 1 stream, "+filterNames[f]+", vs conntrack alone", "Gbit/s",
				tput[f], tput[filterCT], ctBase, nil),
			newPairedFigure("policy/xcell-conn-time-p10-"+filterKeys[f]+"-vs-conntrack", "time of a new connection, 10th percentile of each round, "+filterNames[f]+", vs conntrack alone", "µs",
				connP10[f], connP10[filterCT], ctBase, nil))
	}
	for _, x := range []struct {
		f, base  filtering
		baseName string
	}{{filterOne, filterNone, base}, {filterMap, filterNone, base}, {filterCT, filterNone, base}, {filterOne, filterCT, ctBase}} {
		rep.Figures = append(rep.Figures, newPairedFigure("policy/xcell-conn-cpu-"+filterKeys[x.f]+"-vs-"+filterKeys[x.base],
			"CPU per new connection (whole machine), "+filterNames[x.f], "µs", cpuPer[x.f], cpuPer[x.base], x.baseName, nil))
	}
	how := fmt.Sprintf("median of %d runs of %d s (first %d s left out)", p.runs, p.seconds, p.omit)
	if p.runs == 1 {
		how = fmt.Sprintf("one run of %d s", p.seconds)
	}
	rep.Notes = append(rep.Notes, fmt.Sprintf("cross-cell policy figures: client container on cell1 (tag %d), server container on cell2, "+
		"the overlay bench's topology; throughput: iperf3 TCP, 1 stream, receiver's rate, client pinned to CPU 0 and server to CPU 1, %s; new connections: sequential blocking connect + close, one client thread pinned to CPU 0 "+
		"(SO_LINGER 0, so no TIME_WAIT) from the client to a server that accepts and closes, median of %d rounds of %v, measured after the throughput runs; the time of a new connection: the 10th percentile of each round's connections (connect and close), which a load from elsewhere moves much less than the rate; CPU per new connection: the machine's busy time (/proc/stat, all CPUs: client, server and both cells' kernels run here) over the connections of the round. "+
		"After a warm-up, filterings interleaved within each run or round, each starting with the next filtering: no policy table on either cell; trellis with default deny and the 2 allows the client needs "+
		"(tcp %d and %d); trellis with %d allows among %d app tags including those 2 (set lookups); "+
		"and, with trellis's tables removed and every packet of the client marked on cell1 (iptables-style), the same %d allows as %d rules of one chain "+
		"(ip daddr, meta mark & 0xffff, l4proto tcp, th dport → accept; the 2 needed last, then reject) in cell2's forward hook, "+
		"walked by every packet to the server with no conntrack fast path, as iptables-style enforcement does; "+
		"and conntrack alone: a table on each cell whose one rule accepts established and related packets (the rest passes too), so both cells track every instance connection and police nothing (VXLAN packets on the underlay untracked, as with trellis). "+
		"Before each measurement, tcp %d (not allowed) is checked to be refused under every filtering and reachable without.",
		clientTag, how, connRounds, connFor,
		connPort, iperf3Port, numPolicies, numApps, numPolicies, numPolicies, deniedPort))
	return r.egressThroughput(rep, attach, t.cell1, client, quick)
}

// manyAllows returns numPolicies allows ending with needed: the others
// from numApps tags to 100 addresses of subnet (the server's included) on
// ports 8000-8009, none of which admits anything needed does not.
func manyAllows(subnet netip.Prefix, needed []dataplane.Allow) []dataplane.Allow {
	out := make([]dataplane.Allow, 0, numPolicies)
	for i := 0; i < numPolicies-len(needed); i++ {
		port := uint16(8000 + i/numApps)
		out = append(out, dataplane.Allow{
			DestIP: nthAddr(subnet, 2+i%100), SrcTag: uint16(1 + i%numApps),
			Protocol: "tcp", StartPort: port, EndPort: port,
		})
	}
	return append(out, needed...)
}

// acceptClose serves port on e: it accepts connections and closes them at
// once, until the end of the run.
func (r *run) acceptClose(e endpoint, port uint16) error {
	var ln net.Listener
	at := netip.AddrPortFrom(e.ip, port)
	err := netns.Do(e.ns, func() (err error) {
		ln, err = net.Listen("tcp4", at.String())
		return err
	})
	if err != nil {
		return fmt.Errorf("listen on %s: %w", at, err)
	}
	r.onCleanup(ln.Close)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			c.Close()
		}
	}()
	return nil
}

// dialClose connects to to and closes with a reset (SO_LINGER 0), so that
// no TIME_WAIT is left to run out of ports. It must run in the client's
// namespace.
func dialClose(ctx context.Context, d *net.Dialer, to string) error {
	c, err := d.DialContext(ctx, "tcp4", to)
	if err != nil {
		return err
	}
	c.(*net.TCPConn).SetLinger(0)
	return c.Close()
}

// checkReach checks from the client that the probe port of the server is
// reachable and that deniedPort is refused when filtered (and reachable
// when not).
func (r *run) checkReach(from, to endpoint, filtered bool) error {
	return netns.Do(from.ns, func() error {
		d := &net.Dialer{Timeout: 2 * time.Second}
		if err := dialClose(r.ctx, d, netip.AddrPortFrom(to.ip, connPort).String()); err != nil {
			return fmt.Errorf("allowed connection to %s port %d: %w", to.ip, connPort, err)
		}
		err := dialClose(r.ctx, d, netip.AddrPortFrom(to.ip, deniedPort).String())
		switch {
		case filtered && err == nil:
			return fmt.Errorf("connection to %s port %d, which no policy allows, succeeded", to.ip, deniedPort)
		case filtered && !errors.Is(err, syscall.ECONNREFUSED):
			return fmt.Errorf("connection to %s port %d: want refused, got %w", to.ip, deniedPort, err)
		case !filtered && err != nil:
			return fmt.Errorf("unfiltered connection to %s port %d: %w", to.ip, deniedPort, err)
		}
		return nil
	})
}

// connRate connects from the client to `to` and closes, one connection
// after the other for d, and returns the rate. The client is one thread
// pinned to CPU 0 making blocking system calls (socket, connect, close with
// SO_LINGER 0, so no TIME_WAIT): each connect waits in the kernel and wakes
// on the SYN-ACK directly, with no runtime poller or thread handoff between,
// and the whole path of a connection — both cells' forwarding, VXLAN, the
// server's SYN-ACK — runs on that CPU, as softirq work of its sends. What
// the rate measures is then the kernel's work per connection, not which CPU
// the scheduler woke.
func (r *run) connRate(from endpoint, to netip.AddrPort, d time.Duration) (float64, error) {
	rate, _, err := r.connRateTimed(from, to, d)
	return rate, err
}

// connRateTimed is connRate that also returns the 10th percentile of the
// connections' times (connect and close), in µs. On a machine that others
// load, the rate follows their load; the fastest connections still take
// the kernel's own time, so their times compare filterings more steadily.
func (r *run) connRateTimed(from endpoint, to netip.AddrPort, d time.Duration) (rate, p10 float64, err error) {
	times, took, err := connTimes(r.ctx, from, to, d)
	if err != nil {
		return 0, 0, err
	}
	return float64(len(times)) / took.Seconds(), percentile(times, 10), nil
}

// connRound is one round of connRateTimed that also returns the machine's
// CPU time per connection in µs (busyTime over the round's connections:
// client, server and every cell's kernel run here), which follows the
// rules' cost much more steadily than the rate of one sequential client,
// which waits on every wakeup of a VM.
func (r *run) connRound(from endpoint, to netip.AddrPort, d time.Duration) (rate, p10, cpuPer float64, err error) {
	busy0, err := busyTime()
	if err != nil {
		return 0, 0, 0, err
	}
	rate, p10, err = r.connRateTimed(from, to, d)
	if err != nil {
		return 0, 0, 0, err
	}
	busy1, err := busyTime()
	if err != nil {
		return 0, 0, 0, err
	}
	return rate, p10, float64((busy1 - busy0).Microseconds()) / (rate * d.Seconds()), nil
}

// connTimes opens and resets connections from from to to, one after
// another for d, on one thread pinned to CPU 0 (so that it measures the
// kernel's work per connection, not the Go runtime's wakeups). It returns
// each connection's time in µs and how long the loop ran.
func connTimes(ctx context.Context, from endpoint, to netip.AddrPort, d time.Duration) (times []float64, took time.Duration, err error) {
	sa := &unix.SockaddrInet4{Addr: to.Addr().As4(), Port: int(to.Port())}
	err = netns.Do(from.ns, func() error {
		var old, one unix.CPUSet
		if err := unix.SchedGetaffinity(0, &old); err != nil {
			return err
		}
		one.Set(0)
		if err := unix.SchedSetaffinity(0, &one); err != nil {
			return err
		}
		defer unix.SchedSetaffinity(0, &old)
		start := time.Now()
		for took = 0; took < d; took = time.Since(start) {
			if err := ctx.Err(); err != nil {
				return err
			}
			t0 := time.Now()
			if err := connectReset(sa); err != nil {
				return fmt.Errorf("connection %d to %s: %w", len(times)+1, to, err)
			}
			times = append(times, float64(time.Since(t0).Nanoseconds())/1e3)
		}
		return nil
	})
	return times, took, err
}

// connectReset connects a blocking TCP socket to sa and closes it with a
// reset, on the calling thread.
func connectReset(sa *unix.SockaddrInet4) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
		return err
	}
	// A connect that gets no answer gives up after 2 s.
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &unix.Timeval{Sec: 2}); err != nil {
		return err
	}
	err = unix.Connect(fd, sa)
	if err != unix.EINTR {
		return err
	}
	// A signal (the Go runtime preempts with SIGURG) cut the wait short;
	// the connect goes on: wait for it, then ask how it ended.
	for {
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}, 2000)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return err
		case n == 0:
			return unix.ETIMEDOUT
		}
		soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			return err
		}
		if soerr != 0 {
			return unix.Errno(soerr)
		}
		return nil
	}
}

// busyTime is the time all CPUs of the machine spent not idle, from
// /proc/stat (user, nice, system, irq, softirq, steal), in USER_HZ ticks.
func busyTime() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var busy int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} { // user nice system (idle iowait) irq softirq steal
		v, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		busy += v
	}
	return time.Duration(busy) * time.Second / userHZ, nil
}

// userHZ is the unit of /proc/stat: 100 on every Linux architecture Go
// supports.
const userHZ = 100

// linearTableOf is the bench's table of the iptables-style chain.
var linearTableOf = &nftables.Table{Name: linearTable, Family: nftables.TableFamilyINet}

// openNft opens an nftables connection in the namespace at path with
// socket buffers big enough for 10,000 rules in one batch.
func openNft(path string) (*nftables.Conn, func(), error) {
	fd, err := vnetns.GetFromPath(path)
	if err != nil {
		return nil, nil, fmt.Errorf("netns %s: %w", path, err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(fd)), nftables.AsLasting(),
		nftables.WithSockOptions(func(c *mdnetlink.Conn) error {
			rc, err := c.SyscallConn()
			if err != nil {
				return err
			}
			var serr error
			if err := rc.Control(func(fd uintptr) {
				for _, o := range []int{unix.SO_SNDBUFFORCE, unix.SO_RCVBUFFORCE} {
					serr = errors.Join(serr, unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o, 32<<20))
				}
			}); err != nil {
				return err
			}
			return serr
		}))
	if err != nil {
		fd.Close()
		return nil, nil, fmt.Errorf("nftables in netns %s: %w", path, err)
	}
	return c, func() { c.CloseLasting(); fd.Close() }, nil
}

// addLinear makes the iptables-style enforcement in the namespace at path,
// in one batch: a forward hook sends every IPv4 packet to a host veth
// ("s-*", an instance) through one chain of one rule per allow, in order,
// each matching destination address, tag, protocol and port, and rejects
// what none accepts. There is no conntrack: every packet walks the chain.
func addLinear(path string, allows []dataplane.Allow) error {
	c, done, err := openNft(path)
	if err != nil {
		return err
	}
	defer done()
	tbl := c.AddTable(linearTableOf)
	accept := nftables.ChainPolicyAccept
	fwd := c.AddChain(&nftables.Chain{
		Name: "forward", Table: tbl, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	chain := c.AddChain(&nftables.Chain{Name: "to-instance", Table: tbl})
	c.AddRule(&nftables.Rule{Table: tbl, Chain: fwd, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte("s-")},
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		&expr.Verdict{Kind: expr.VerdictGoto, Chain: chain.Name},
	}})
	for _, a := range allows {
		proto := byte(unix.IPPROTO_TCP)
		if a.Protocol == "udp" {
			proto = unix.IPPROTO_UDP
		}
		if a.StartPort != a.EndPort {
			return fmt.Errorf("linear chain: %v: port ranges are not supported", a)
		}
		c.AddRule(&nftables.Rule{Table: tbl, Chain: chain, Exprs: []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.DestIP.AsSlice()},
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(dataplane.TagMask), Xor: binaryutil.NativeEndian.PutUint32(0)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(uint32(a.SrcTag))},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, a.StartPort)},
			&expr.Verdict{Kind: expr.VerdictAccept},
		}})
	}
	c.AddRule(&nftables.Rule{Table: tbl, Chain: chain, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Reject{Type: unix.NFT_REJECT_TCP_RST},
	}})
	c.AddRule(&nftables.Rule{Table: tbl, Chain: chain, Exprs: []expr.Any{
		&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH},
	}})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("linear chain of %d rules in %s: %w", len(allows), path, err)
	}
	return nil
}

// addConntrackOnly turns conntrack on in the namespace at path with one
// rule that needs it (established and related accepted, everything else
// too): the cost of a stateful filter without any policy. Like trellis's
// table it leaves the VXLAN packets on the underlay untracked, so that
// only the instances' connections are tracked.
func addConntrackOnly(path string) error {
	err := addBaseRule(path, "forward", nftables.ChainHookForward, nftables.ChainPriorityFilter,
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Verdict{Kind: expr.VerdictAccept})
	for _, h := range []struct {
		name string
		hook *nftables.ChainHook
	}{{"notrack_in", nftables.ChainHookPrerouting}, {"notrack_out", nftables.ChainHookOutput}} {
		if err != nil {
			break
		}
		err = addBaseRule(path, h.name, h.hook, nftables.ChainPriorityRaw,
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(dataplane.DefaultPort)},
			&expr.Notrack{})
	}
	return err
}

// addMarkAll marks every IPv4 packet from an instance ("s-*") in the
// namespace at path with tag, as iptables-style source marking does: the
// linear chain at the destination, without conntrack, needs the mark on
// every packet, as trellis's table does.
func addMarkAll(path string, tag uint16) error {
	return addBaseRule(path, "prerouting", nftables.ChainHookPrerouting, nftables.ChainPriorityMangle,
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte("s-")},
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(uint32(tag))},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1})
}

// addBaseRule adds, in one batch, the bench's table to the namespace at
// path with a base chain name on hook at prio (policy accept) holding one
// rule of exprs.
func addBaseRule(path, name string, hook *nftables.ChainHook, prio *nftables.ChainPriority, exprs ...expr.Any) error {
	c, done, err := openNft(path)
	if err != nil {
		return err
	}
	defer done()
	tbl := c.AddTable(linearTableOf)
	accept := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Name: name, Table: tbl, Type: nftables.ChainTypeFilter,
		Hooknum: hook, Priority: prio, Policy: &accept})
	c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: exprs})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("%s rule of the bench in %s: %w", name, path, err)
	}
	return nil
}

// delLinear deletes the bench's linear table from the namespace at path,
// if it is there.
func delLinear(path string) error {
	c, done, err := openNft(path)
	if err != nil {
		return err
	}
	defer done()
	c.AddTable(linearTableOf) // makes the delete valid when there is none
	c.DelTable(linearTableOf)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("delete table %s in %s: %w", linearTable, path, err)
	}
	return nil
}
