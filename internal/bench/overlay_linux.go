package bench

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/trellis-c2c/trellis/internal/dataplane"
	"github.com/trellis-c2c/trellis/internal/netns"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
)

// Addresses of the overlay topology. The underlay is the documentation
// network DESIGN.md reserves for local foundations; everything lives in the
// run's own namespaces.
var (
	underlayNet  = netip.MustParsePrefix("198.51.100.0/24")
	overlayNet   = netip.MustParsePrefix("10.255.0.0/16")
	bareVXLANNet = netip.MustParsePrefix("10.99.0.0/24") // the bare VXLAN pair
	vethNet      = netip.MustParsePrefix("10.98.0.0/24") // the direct veth pair
	bridgeNet    = netip.MustParsePrefix("10.97.0.0/16") // the setup baseline's bridge
	// plainNet is the topology without trellis: its VXLAN link is
	// 10.96.0.0/24, its cells' container subnets 10.96.1.0/24 and
	// 10.96.2.0/24.
	plainNet = netip.MustParsePrefix("10.96.0.0/16")
)

const (
	underlayMTU = 1500
	overlayMTU  = underlayMTU - dataplane.VXLANOverhead
	iperf3Port  = 5201
	echoPort    = 7007
	// probeResend is how long a setup probe waits for its echo before it
	// sends again, and so the resolution of a setup time whose first
	// datagram the kernel dropped (a veth drops until its queue is
	// activated, shortly after it comes up); probeTimeout is when it gives
	// up.
	probeResend  = time.Millisecond
	probeTimeout = 2 * time.Second
	// maxAdds keeps every setup container inside cell1's /24.
	maxAdds = 240
)

// Leftovers lists the named network namespaces whose names start with
// prefix: after a run with that prefix, anything listed was not cleaned up.
// With PrefixBase it lists those of every run, including runs still going.
func Leftovers(prefix string) []string {
	entries, _ := os.ReadDir(netns.Dir)
	var left []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			left = append(left, e.Name())
		}
	}
	return left
}

// Overlay runs the overlay benchmark and returns its report:
//
//   - Cross-cell TCP throughput (iperf3, 1 and 4 streams) from a container
//     on one cell to a container on another through trellis's VXLAN-GBP
//     overlay, against a bare VXLAN pair (goal: at least 0.95 of it) and a
//     direct veth pair (the ceiling; informative).
//   - Container network setup, timed from dataplane.AddContainer to the
//     first UDP echo from another container on the cell, over sequential
//     adds that all stay attached: p50 (goal 20 ms), p99 (goal 50 ms), and
//     the late adds' mean against the early ones' (goal: no slower). The
//     baseline is a plain veth on a bridge, made and probed the same way.
//
// The topology is an underlay bridge in its own namespace, two cell
// namespaces on it (198.51.100.0/24, MTU 1500) and container namespaces,
// all named with the run's prefix and deleted before Overlay returns, also
// when it fails or ctx is cancelled. It needs root and iperf3.
func Overlay(ctx context.Context, o OverlayOptions) (rep *Report, err error) {
	iperf3, err := exec.LookPath("iperf3")
	if err != nil {
		return nil, ErrNoIPerf3
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("the overlay bench needs root: it builds network namespaces")
	}
	prefix := cmp.Or(o.Prefix, NewPrefix())
	if !strings.HasPrefix(prefix, PrefixBase) {
		return nil, fmt.Errorf("namespace prefix %q does not start with %q", prefix, PrefixBase)
	}
	p := paramsFor(o.Quick)
	r := &run{ctx: ctx, prefix: prefix, out: cmp.Or[io.Writer](o.Progress, io.Discard), iperf3: iperf3}
	rep = &Report{
		Bench: "overlay", Quick: o.Quick, Prefix: prefix,
		Started: time.Now(), CPUs: runtime.NumCPU(), LoadStart: loadavg(),
	}
	if left := Leftovers(PrefixBase); len(left) > 0 {
		r.logf("note: namespaces of another bench run exist (running now, or killed: then remove them with `ip netns delete NAME`): %s",
			strings.Join(left, " "))
	}
	r.logf("namespaces: %s*", prefix)
	defer func() {
		r.logf("removing the topology")
		if cerr := r.cleanup(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("clean up: %w", cerr))
		}
		if left := Leftovers(prefix); len(left) > 0 {
			err = errors.Join(err, fmt.Errorf("namespaces left behind: %s", strings.Join(left, " ")))
		}
		if ctx.Err() != nil && err != nil && !errors.Is(err, ctx.Err()) {
			err = errors.Join(ctx.Err(), err)
		}
		if err != nil {
			rep = nil
			return
		}
		rep.Seconds = time.Since(rep.Started).Seconds()
		rep.LoadEnd = loadavg()
	}()

	topo, err := r.buildOverlay()
	if err != nil {
		return nil, err
	}
	tput, err := r.throughput(topo, p)
	if err != nil {
		return nil, err
	}
	wgt, err := r.buildEncrypted(topo)
	if err != nil {
		return nil, err
	}
	enc, err := r.encrypted(topo, wgt, p)
	if err != nil {
		return nil, err
	}
	setup, err := r.setup(topo, p.adds)
	if err != nil {
		return nil, err
	}
	if err = r.cniSetup(o.Exe, p, setup); err != nil {
		return nil, err
	}
	rep.Figures = append(append(tput.figures(), enc.figures()...), setup.figures()...)
	rep.Notes = append(append(tput.notes(p), enc.notes(p)...), setup.notes()...)
	rep.Samples = map[string][]float64{
		"setup/trellis":               setup.trellis,
		"setup/trellis-addcontainer":  setup.wire,
		"setup/plain-veth":            setup.bare,
		"setup/trellis-cni":           setup.cni,
		"plugin-start/trellis-cni":    setup.start.plugin,
		"plugin-start/trellis-binary": setup.start.trellis,
		"plugin-start/hello-world":    setup.start.hello,
	}
	for path, key := range pathKeys {
		for _, n := range streamCounts {
			rep.Samples[fmt.Sprintf("tcp-%d/%s", n, key)] = tput.samples[path][n]
		}
	}
	enc.samples(rep.Samples)
	return rep, nil
}

// run is one benchmark run: its namespaces and everything to undo.
type run struct {
	bench  string // the bench's name in progress lines; "" means "overlay"
	ctx    context.Context
	prefix string
	out    io.Writer
	iperf3 string
	undo   []func() error // run last to first by cleanup
}

func (r *run) logf(format string, args ...any) {
	fmt.Fprintf(r.out, "bench "+cmp.Or(r.bench, "overlay")+": "+format+"\n", args...)
}

// onCleanup registers f to run at the end. Undo steps run in reverse order
// of registration, so a namespace is deleted after everything made in it.
func (r *run) onCleanup(f func() error) { r.undo = append(r.undo, f) }

func (r *run) cleanup() error {
	var errs []error
	for i := len(r.undo) - 1; i >= 0; i-- {
		if err := r.undo[i](); err != nil {
			errs = append(errs, err)
		}
	}
	r.undo = nil
	return errors.Join(errs...)
}

// namespace creates the namespace prefix+name and returns its path.
func (r *run) namespace(name string) (string, error) {
	full := r.prefix + name
	path, err := netns.Create(full)
	if err != nil {
		return "", err
	}
	r.onCleanup(func() error { return netns.Delete(full) })
	return path, nil
}

// handle returns a netlink handle in the namespace at path, closed at the
// end of the run.
func (r *run) handle(path string) (*netlink.Handle, error) {
	h, err := netns.Handle(path)
	if err != nil {
		return nil, err
	}
	r.onCleanup(func() error { h.Close(); return nil })
	return h, nil
}

// endpoint is an address in a namespace.
type endpoint struct {
	ns string
	ip netip.Addr
}

// benchCell is a trellis cell of the topology: its namespace, its place
// in the overlay and its dataplane.
type benchCell struct {
	dataplane.Cell
	NetNS string
	dp    *dataplane.Dataplane
}

// overlayTopo is what the throughput and setup figures run on.
type overlayTopo struct {
	cell1, cell2 benchCell
	// The three paths iperf3 measures, client to server.
	trellisA, trellisB endpoint // containers on cell1 and cell2
	plainA, plainB     endpoint // the same topology without trellis
	plainCTA, plainCTB endpoint // the same again, with conntrack alone on its cells
	vxlanA, vxlanB     endpoint // the bare VXLAN pair
	vethA, vethB       endpoint // the direct veth pair
	attach             attachFunc
}

func (r *run) buildOverlay() (*overlayTopo, error) {
	r.logf("building the topology: underlay bridge, 2 cells with trellis, the same without trellis, a bare VXLAN pair, a veth pair")
	t, attach, err := r.buildCells()
	if err != nil {
		return nil, err
	}
	if t.plainA, t.plainB, _, err = r.plainCells(attach, "plain", 31); err != nil {
		return nil, err
	}
	// The same path with conntrack on both cells and nothing policed (the
	// policy bench's "conntrack alone"): what any stateful filter costs
	// the path, apart from trellis's own rules.
	var ctCells [2]string
	if t.plainCTA, t.plainCTB, ctCells, err = r.plainCells(attach, "plainct", 33); err != nil {
		return nil, err
	}
	for _, path := range ctCells {
		if err := addConntrackOnly(path); err != nil {
			return nil, err
		}
	}
	t.attach = attach

	// The bare VXLAN pair: plain vxlan devices on the same underlay.
	vx := [2]endpoint{}
	for i := range vx {
		path, ip, err := attach(fmt.Sprintf("vxlan%d", i+1), byte(21+i))
		if err != nil {
			return nil, err
		}
		remote := netip.AddrFrom4([4]byte{198, 51, 100, byte(21 + (1 - i))})
		over := netip.PrefixFrom(nthAddr(bareVXLANNet, i+1), bareVXLANNet.Bits())
		if err := r.bareVXLAN(path, ip, remote, over); err != nil {
			return nil, fmt.Errorf("bare VXLAN in %s: %w", path, err)
		}
		vx[i] = endpoint{path, over.Addr()}
	}
	t.vxlanA, t.vxlanB = vx[0], vx[1]

	// The direct veth pair.
	if t.vethA, t.vethB, err = r.vethPair(); err != nil {
		return nil, err
	}
	return t, nil
}

// attachFunc makes the namespace prefix+name and attaches it to the
// underlay as 198.51.100.host.
type attachFunc func(name string, host byte) (path string, ip netip.Addr, err error)

// buildCells makes the underlay bridge and two cells running trellis's
// overlay, converged with each other, with a container on each (.2 of each
// cell's subnet): the part of the topology every cross-cell figure runs
// on. It returns the topology with the cells and trellisA/B set, and how
// to attach more namespaces to the underlay.
func (r *run) buildCells() (*overlayTopo, attachFunc, error) {
	uPath, err := r.namespace("underlay")
	if err != nil {
		return nil, nil, err
	}
	uh, err := r.handle(uPath)
	if err != nil {
		return nil, nil, err
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0", MTU: underlayMTU}}
	if err := uh.LinkAdd(br); err != nil {
		return nil, nil, fmt.Errorf("add underlay bridge: %w", err)
	}
	if err := uh.LinkSetUp(br); err != nil {
		return nil, nil, fmt.Errorf("set underlay bridge up: %w", err)
	}
	attach := func(name string, host byte) (string, netip.Addr, error) {
		ip := netip.AddrFrom4([4]byte{198, 51, 100, host})
		path, err := r.namespace(name)
		if err == nil {
			err = attachUnderlay(uh, br, name, path, netip.PrefixFrom(ip, underlayNet.Bits()))
		}
		return path, ip, err
	}

	// trellis: two cells, each converged with the other, a container on each.
	t := &overlayTopo{}
	var cells []benchCell
	for i := 1; i <= 2; i++ {
		path, ip, err := attach(fmt.Sprintf("cell%d", i), byte(10+i))
		if err != nil {
			return nil, nil, err
		}
		cells = append(cells, benchCell{
			Cell: dataplane.Cell{
				UnderlayDevice: "eth0", UnderlayIP: ip, Overlay: overlayNet,
				Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 255, byte(i), 0}), 24),
			},
			NetNS: path,
			dp:    dataplane.New(path, nil),
		})
	}
	peers := []dataplane.Peer{
		{UnderlayIP: cells[0].UnderlayIP, Subnet: cells[0].Subnet},
		{UnderlayIP: cells[1].UnderlayIP, Subnet: cells[1].Subnet},
	}
	for _, c := range cells {
		if _, err := c.dp.Set(r.ctx, dataplane.Desired{Overlay: &dataplane.Overlay{Cell: c.Cell, Peers: peers}}); err != nil {
			return nil, nil, err
		}
		r.onCleanup(c.dp.TeardownOverlay)
	}
	t.cell1, t.cell2 = cells[0], cells[1]
	if t.trellisA, err = r.container(cells[0], "ctr-a", 2); err != nil {
		return nil, nil, err
	}
	if t.trellisB, err = r.container(cells[1], "ctr-b", 2); err != nil {
		return nil, nil, err
	}
	return t, attach, nil
}

// nthAddr returns the n-th address of p.
func nthAddr(p netip.Prefix, n int) netip.Addr {
	b := p.Masked().Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}
}

// attachUnderlay connects the namespace at path to the underlay bridge: a
// veth named port in the underlay namespace, eth0 with addr in path.
func attachUnderlay(uh *netlink.Handle, br netlink.Link, port, path string, addr netip.Prefix) error {
	fd, err := vnetns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("netns %s: %w", path, err)
	}
	defer fd.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: port, MTU: underlayMTU, MasterIndex: br.Attrs().Index},
		PeerName:      "eth0",
		PeerMTU:       underlayMTU,
		PeerNamespace: netlink.NsFd(fd),
	}
	if err := uh.LinkAdd(veth); err != nil {
		return fmt.Errorf("add underlay port %s: %w", port, err)
	}
	if err := uh.LinkSetUp(veth); err != nil {
		return fmt.Errorf("set underlay port %s up: %w", port, err)
	}
	h, err := netns.Handle(path)
	if err != nil {
		return err
	}
	defer h.Close()
	return addrUp(h, "eth0", addr)
}

// addrUp gives the link name addr and sets it up.
func addrUp(h *netlink.Handle, name string, addr netip.Prefix) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		return fmt.Errorf("add %s to %s: %w", addr, name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// container wires a new container namespace into cell with the host
// address .host of the cell's subnet, through dataplane.AddContainer.
func (r *run) container(cell benchCell, name string, host int) (endpoint, error) {
	path, err := r.namespace(name)
	if err != nil {
		return endpoint{}, err
	}
	c := dataplane.Container{
		HostNS: cell.NetNS, NetNS: path, IfName: "eth0",
		IP: nthAddr(cell.Subnet, host), MTU: overlayMTU,
	}
	if _, err := dataplane.AddContainer(c); err != nil {
		return endpoint{}, err
	}
	r.onCleanup(func() error { return dataplane.DelContainer(c) })
	return endpoint{path, c.IP}, nil
}

// bareVXLAN makes a plain VXLAN device in the namespace at path: VNI 1,
// port 4789, no GBP, learning on, every frame to remote, MTU 1450.
func (r *run) bareVXLAN(path string, local, remote netip.Addr, addr netip.Prefix) error {
	h, err := r.handle(path)
	if err != nil {
		return err
	}
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find eth0: %w", err)
	}
	vx := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: "vxlan0", MTU: overlayMTU},
		VxlanId:      dataplane.DefaultVNI,
		VtepDevIndex: eth0.Attrs().Index,
		SrcAddr:      local.AsSlice(),
		Group:        remote.AsSlice(),
		Port:         dataplane.DefaultPort,
		Learning:     true,
	}
	if err := h.LinkAdd(vx); err != nil {
		return fmt.Errorf("add vxlan0: %w", err)
	}
	return addrUp(h, "vxlan0", addr)
}

// plainCells builds trellis's cross-cell path without trellis, with
// netlink alone: two cell namespaces on the underlay, each forwarding
// between a container's veth (MTU as trellis's) and a plain VXLAN device
// (VNI 1, no GBP, learning off, every frame to the other cell) that routes
// the other cell's container subnet; a container namespace on each. No
// nftables table anywhere, so no conntrack. The namespaces are named
// name1, name2 (cells) and nameCtr1, nameCtr2; the cells are hosts host and
// host+1 of the underlay. It returns the containers and the cells'
// namespaces.
func (r *run) plainCells(attach attachFunc, name string, host byte) (a, b endpoint, cells [2]string, err error) {
	var ends [2]endpoint
	for i := range 2 {
		path, ip, err := attach(fmt.Sprintf("%s%d", name, i+1), host+byte(i))
		if err != nil {
			return a, b, cells, err
		}
		cells[i] = path
		remote := netip.AddrFrom4([4]byte{198, 51, 100, host + byte(1-i)})
		h, err := r.handle(path)
		if err != nil {
			return a, b, cells, err
		}
		eth0, err := h.LinkByName("eth0")
		if err != nil {
			return a, b, cells, fmt.Errorf("find eth0: %w", err)
		}
		vx := &netlink.Vxlan{
			LinkAttrs:    netlink.LinkAttrs{Name: "vxlan0", MTU: overlayMTU},
			VxlanId:      dataplane.DefaultVNI,
			VtepDevIndex: eth0.Attrs().Index,
			SrcAddr:      ip.AsSlice(),
			Group:        remote.AsSlice(),
			Port:         dataplane.DefaultPort,
		}
		if err := h.LinkAdd(vx); err != nil {
			return a, b, cells, fmt.Errorf("add vxlan0 in %s: %w", path, err)
		}
		if err := addrUp(h, "vxlan0", netip.PrefixFrom(nthAddr(plainNet, i+1), 24)); err != nil {
			return a, b, cells, err
		}
		if err := netns.Sysctl(path, "net.ipv4.ip_forward", "1"); err != nil {
			return a, b, cells, err
		}
		// The other cell's containers, through the VXLAN link.
		other := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 96, byte(2 - i), 0}), 24)
		if err := h.RouteAdd(&netlink.Route{
			LinkIndex: vx.Attrs().Index, Dst: ipNet(other), Gw: nthAddr(plainNet, 2-i).AsSlice(),
		}); err != nil {
			return a, b, cells, fmt.Errorf("route to %s in %s: %w", other, path, err)
		}
		// The container: a veth pair, the cell's end the gateway.
		subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 96, byte(i + 1), 0}), 24)
		cpath, err := r.namespace(fmt.Sprintf("%sctr%d", name, i+1))
		if err != nil {
			return a, b, cells, err
		}
		ch, err := r.handle(cpath)
		if err != nil {
			return a, b, cells, err
		}
		fd, err := vnetns.GetFromPath(cpath)
		if err != nil {
			return a, b, cells, fmt.Errorf("netns %s: %w", cpath, err)
		}
		veth := &netlink.Veth{
			LinkAttrs: netlink.LinkAttrs{Name: "p-ctr", MTU: overlayMTU},
			PeerName:  "eth0", PeerMTU: overlayMTU, PeerNamespace: netlink.NsFd(fd),
		}
		err = h.LinkAdd(veth)
		fd.Close()
		if err != nil {
			return a, b, cells, fmt.Errorf("add container veth in %s: %w", path, err)
		}
		gw, ctrIP := nthAddr(subnet, 1), nthAddr(subnet, 2)
		if err := addrUp(h, "p-ctr", netip.PrefixFrom(gw, 24)); err != nil {
			return a, b, cells, err
		}
		if err := addrUp(ch, "eth0", netip.PrefixFrom(ctrIP, 24)); err != nil {
			return a, b, cells, err
		}
		if err := ch.RouteAdd(&netlink.Route{Dst: ipNet(netip.MustParsePrefix("0.0.0.0/0")), Gw: gw.AsSlice()}); err != nil {
			return a, b, cells, fmt.Errorf("default route in %s: %w", cpath, err)
		}
		ends[i] = endpoint{cpath, ctrIP}
	}
	return ends[0], ends[1], cells, nil
}

// vethPair makes two namespaces joined by one veth pair, MTU 1500.
func (r *run) vethPair() (a, b endpoint, err error) {
	if a.ns, err = r.namespace("veth1"); err != nil {
		return a, b, err
	}
	if b.ns, err = r.namespace("veth2"); err != nil {
		return a, b, err
	}
	a.ip, b.ip = nthAddr(vethNet, 1), nthAddr(vethNet, 2)
	ha, err := r.handle(a.ns)
	if err != nil {
		return a, b, err
	}
	hb, err := r.handle(b.ns)
	if err != nil {
		return a, b, err
	}
	fd, err := vnetns.GetFromPath(b.ns)
	if err != nil {
		return a, b, fmt.Errorf("netns %s: %w", b.ns, err)
	}
	defer fd.Close()
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: underlayMTU},
		PeerName:  "eth0", PeerMTU: underlayMTU, PeerNamespace: netlink.NsFd(fd),
	}
	if err := ha.LinkAdd(veth); err != nil {
		return a, b, fmt.Errorf("add veth pair: %w", err)
	}
	if err := addrUp(ha, "eth0", netip.PrefixFrom(a.ip, vethNet.Bits())); err != nil {
		return a, b, err
	}
	if err := addrUp(hb, "eth0", netip.PrefixFrom(b.ip, vethNet.Bits())); err != nil {
		return a, b, err
	}
	return a, b, nil
}

// start starts cmd with its network namespace set to the one at path: it
// forks from an OS thread switched into that namespace, and the child
// inherits the thread's namespace. The process is killed if the bench dies.
func start(path string, cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := netns.Do(path, cmd.Start); err != nil {
		return fmt.Errorf("start %s in %s: %w", cmd.Path, path, err)
	}
	return nil
}

// iperf3Server starts `iperf3 -s` on e and returns once it listens. It is
// killed at the end of the run.
func (r *run) iperf3Server(e endpoint) error {
	cmd := exec.CommandContext(r.ctx, r.iperf3, "-s", "-B", e.ip.String(), "-p", strconv.Itoa(iperf3Port))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := start(e.ns, cmd); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	r.onCleanup(func() error {
		cmd.Process.Kill() // it may have exited already
		<-done
		return nil
	})
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case <-done:
			if err := r.ctx.Err(); err != nil {
				return err
			}
			return fmt.Errorf("iperf3 server on %s exited: %s", e.ip, strings.TrimSpace(stderr.String()))
		case <-timeout:
			return fmt.Errorf("iperf3 server on %s does not listen after 5 s", e.ip)
		case <-tick.C:
		}
		ok, err := listening(e.ns, iperf3Port)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
	}
}

// listening reports whether a TCP socket listens on port in the namespace
// at path, from the namespace's /proc/net/tcp.
func listening(path string, port int) (bool, error) {
	var found bool
	err := netns.Do(path, func() error {
		// thread-self: /proc/net shows the namespace of the main thread.
		f, err := os.Open("/proc/thread-self/net/tcp")
		if err != nil {
			return err
		}
		defer f.Close()
		want := fmt.Sprintf(":%04X", port)
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) > 3 && strings.HasSuffix(fields[1], want) && fields[3] == "0A" { // TCP_LISTEN
				found = true
			}
		}
		return sc.Err()
	})
	return found, err
}

// iperf3Affinity pins iperf3's client to CPU 0 and its server to CPU 1 (-A;
// the client tells the server its CPU for the test). Unpinned, one run's
// ratio to its baseline moved by up to ±30% on a quiet 2-CPU machine
// (BenchmarkAblation with ABLATION_TCP, 8 rounds, 2026-12-07: conntrack
// alone against no table, 0.74 to 1.13 by round unpinned, 0.76 to 0.90
// pinned).
const iperf3Affinity = "0,1"

// iperf3Client runs one iperf3 test from one endpoint to another and
// returns the receiver's rate in Gbit/s. On a machine of 2 CPUs or more,
// the client runs on CPU 0 and the server on CPU 1 (iperf3Affinity).
func (r *run) iperf3Client(from, to endpoint, streams int, p overlayParams) (float64, error) {
	args := []string{
		"-c", to.ip.String(), "-p", strconv.Itoa(iperf3Port),
		"-t", strconv.Itoa(p.seconds), "-P", strconv.Itoa(streams),
		"--connect-timeout", "3000", "-J",
	}
	if p.omit > 0 {
		args = append(args, "-O", strconv.Itoa(p.omit))
	}
	if runtime.NumCPU() >= 2 {
		args = append(args, "-A", iperf3Affinity)
	}
	cmd := exec.CommandContext(r.ctx, r.iperf3, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := start(from.ns, cmd); err != nil {
		return 0, err
	}
	werr := cmd.Wait()
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	g, err := parseIPerf3(stdout.Bytes())
	if err != nil && werr != nil {
		err = fmt.Errorf("%w (%v; %s)", err, werr, strings.TrimSpace(stderr.String()))
	}
	if err != nil {
		return 0, fmt.Errorf("iperf3 %s -> %s, %d streams: %w", from.ip, to.ip, streams, err)
	}
	return g, nil
}

// tputPath names a path iperf3 measures.
type tputPath int

const (
	pathTrellis tputPath = iota
	pathNoTrellis
	pathVXLAN
	pathVeth
	pathPlainCT
	numPaths
)

var (
	pathNames = [numPaths]string{"trellis", "without trellis", "bare VXLAN", "direct veth", "without trellis, conntrack alone"}
	pathKeys  = [numPaths]string{"trellis", "plain", "bare-vxlan", "veth", "plain-conntrack"} // in Report.Samples
)

var streamCounts = []int{1, 4}

// tputResult holds the samples of every path and stream count, in Gbit/s.
type tputResult struct {
	samples [numPaths]map[int][]float64
}

// throughput runs iperf3 over the three paths. Runs are interleaved (all
// paths for run 1, then run 2, ...) so that a change in the machine's load
// touches every path alike.
func (r *run) throughput(t *overlayTopo, p overlayParams) (res *tputResult, err error) {
	ends := [numPaths][2]endpoint{
		pathTrellis:   {t.trellisA, t.trellisB},
		pathNoTrellis: {t.plainA, t.plainB},
		pathVXLAN:     {t.vxlanA, t.vxlanB},
		pathVeth:      {t.vethA, t.vethB},
		pathPlainCT:   {t.plainCTA, t.plainCTB},
	}
	for _, e := range ends {
		if err := r.iperf3Server(e[1]); err != nil {
			return nil, err
		}
	}
	// Trellis runs with policies on: the client's cell marks its packets
	// with its app's tag, the server's denies by default and holds
	// numPolicies allows, among them the one iperf3 needs. The setup
	// figures after this run without (their containers are in no policy).
	dp1, dp2 := t.cell1.dp, t.cell2.dp
	defer func() {
		if terr := errors.Join(dp1.TeardownPolicy(), dp2.TeardownPolicy()); terr != nil && err == nil {
			res, err = nil, terr
		}
	}()
	needed := []dataplane.Allow{{DestIP: t.trellisB.ip, SrcTag: clientTag, Protocol: "tcp", StartPort: iperf3Port, EndPort: iperf3Port}}
	if _, err := dp1.Set(r.ctx, dataplane.Desired{Policy: &dataplane.Policy{Enforce: true, Locals: []dataplane.Local{{IP: t.trellisA.ip, Tag: clientTag}}}}); err != nil {
		return nil, err
	}
	if _, err := dp2.Set(r.ctx, dataplane.Desired{Policy: &dataplane.Policy{
		Enforce: true, Locals: []dataplane.Local{{IP: t.trellisB.ip, Tag: serverTag}}, Allows: manyAllows(t.cell2.Subnet, needed),
	}}); err != nil {
		return nil, err
	}
	res = &tputResult{}
	for i := range res.samples {
		res.samples[i] = map[int][]float64{}
	}
	for n := 1; n <= p.runs; n++ {
		for _, streams := range streamCounts {
			// Each run starts with the next path, so that none is always
			// measured first; the figures pair the paths of a run.
			for i := range numPaths {
				path := (tputPath(n-1) + i) % numPaths
				e := ends[path]
				if err := r.ctx.Err(); err != nil {
					return nil, err
				}
				g, err := r.iperf3Client(e[0], e[1], streams, p)
				if err != nil {
					return nil, err
				}
				r.logf("throughput run %d/%d, %d stream(s), %-11s %6.2f Gbit/s", n, p.runs, streams, pathNames[path]+":", g)
				res.samples[path][streams] = append(res.samples[path][streams], g)
			}
		}
	}
	return res, nil
}

func (t *tputResult) figures() []Figure {
	var fs []Figure
	for _, n := range streamCounts {
		s := "streams"
		if n == 1 {
			s = "stream"
		}
		trellis := t.samples[pathTrellis][n]
		fs = append(fs,
			newPairedFigure(fmt.Sprintf("overlay/tcp-%d-vs-plain", n), fmt.Sprintf("cross-cell TCP, %d %s, policies on, vs the same topology without trellis", n, s),
				"Gbit/s", trellis, t.samples[pathNoTrellis][n], "container veth, cell forwarding, VXLAN; no nftables",
				&goal{ratio: true, limit: 0.95}),
			newPairedFigure(fmt.Sprintf("overlay/tcp-%d-vs-vxlan", n), fmt.Sprintf("cross-cell TCP, %d %s, vs bare VXLAN", n, s),
				"Gbit/s", trellis, t.samples[pathVXLAN][n], "bare VXLAN pair", nil),
			newPairedFigure(fmt.Sprintf("overlay/tcp-%d-vs-veth", n), fmt.Sprintf("cross-cell TCP, %d %s, vs direct veth", n, s),
				"Gbit/s", trellis, t.samples[pathVeth][n], "direct veth pair", nil),
			// How much of the gap to the path without trellis conntrack
			// alone explains, and what trellis's rules cost on top of it.
			newPairedFigure(fmt.Sprintf("overlay/tcp-%d-plain-conntrack-vs-plain", n), fmt.Sprintf("cross-cell TCP, %d %s, the topology without trellis with conntrack alone, vs without", n, s),
				"Gbit/s", t.samples[pathPlainCT][n], t.samples[pathNoTrellis][n], "container veth, cell forwarding, VXLAN; no nftables", nil),
			newPairedFigure(fmt.Sprintf("overlay/tcp-%d-vs-plain-conntrack", n), fmt.Sprintf("cross-cell TCP, %d %s, policies on, vs the topology without trellis with conntrack alone", n, s),
				"Gbit/s", trellis, t.samples[pathPlainCT][n], "the same, one conntrack rule per cell", nil),
		)
	}
	return fs
}

func (t *tputResult) notes(p overlayParams) []string {
	how := fmt.Sprintf("median of %d runs of %d s, the first %d s left out, each run starting with the next path; ratios are the median of the runs' ratios", p.runs, p.seconds, p.omit)
	if p.runs == 1 {
		how = fmt.Sprintf("one run of %d s", p.seconds)
	}
	return []string{
		"throughput: iperf3 TCP, receiver's rate, client pinned to CPU 0 and server to CPU 1, " + how + ". trellis: container on cell1 to container on cell2 " +
			fmt.Sprintf("(veth, cell forwarding, VXLAN-GBP VTEP, underlay bridge, and back) with policies on: the client's cell marks it with its app's tag, "+
				"the server's cell denies by default and holds %d allows among %d app tags, one of them iperf3's; ", numPolicies, numApps) +
			"without trellis: the same path built with netlink alone, no nftables (two cell namespaces on the underlay forwarding between a container's veth, MTU 1450, " +
			"and a plain VXLAN device, VNI 1, no GBP, that routes the other cell's container subnet); " +
			"without trellis, conntrack alone: a second such path whose two cells each have one table of the bench's, with one rule that accepts established and related packets and the VXLAN packets on the underlay untracked (the policy bench's conntrack alone), so each cell tracks the containers' connections and polices nothing; " +
			"bare VXLAN: two namespaces on the same underlay with plain vxlan devices (VNI 1, no GBP, MTU 1450); " +
			"direct veth: two namespaces joined by one veth pair (MTU 1500).",
	}
}

// setupResult holds the setup latency of every add, in ms, in order.
type setupResult struct {
	trellis, bare []float64
	wire          []float64 // the dataplane.AddContainer part of trellis
	cni           []float64 // CNI ADD through the plugin and the agent of a local foundation
	cniResent     int       // adds of cni whose first datagram got no echo within probeResend
	burst         []float64 // CNI ADDs started at once, each to its first echo
	burstTook     float64   // from their start until the last echo
	// steps are the agent's per-step times (ms) of the cni adds, by the
	// key of its msg=attached log line, and the keys in the line's order.
	steps      map[string][]float64
	stepKeys   []string
	burstSteps map[string][]float64 // the same of the burst's adds
	// cpu and burstCPU are the CPU times the sequential adds and the
	// burst took.
	cpu, burstCPU cpuTimes
	start         *startTimes // the plugin start figures' samples
	// resent counts the adds whose first datagram got no echo within
	// probeResend, trellis and baseline.
	resent [2]int
}

// setup adds n containers to cell1 one after another and times each from
// the start of the wiring until a UDP echo from a container on the same
// cell comes back. It does the same with a plain veth on a bridge,
// alternating with the trellis adds. All containers stay attached until the
// end of the run.
func (r *run) setup(t *overlayTopo, n int) (*setupResult, error) {
	if n > maxAdds {
		return nil, fmt.Errorf("%d adds do not fit in one cell's /24 (at most %d)", n, maxAdds)
	}
	r.logf("container setup: %d sequential adds, each timed until the first echo", n)
	// trellis: the responder is a container on cell1.
	resp, err := r.container(t.cell1, "resp", 3)
	if err != nil {
		return nil, err
	}
	respAddr := netip.AddrPortFrom(resp.ip, echoPort)
	if err := r.echo(resp.ns, respAddr); err != nil {
		return nil, err
	}

	// The baseline: a bridge in a namespace of its own, the responder on
	// one of its ports.
	barePath, err := r.namespace("bare")
	if err != nil {
		return nil, err
	}
	bh, err := r.handle(barePath)
	if err != nil {
		return nil, err
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0", MTU: overlayMTU}}
	if err := bh.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("add baseline bridge: %w", err)
	}
	if err := bh.LinkSetUp(br); err != nil {
		return nil, fmt.Errorf("set baseline bridge up: %w", err)
	}
	bareRespPath, err := r.namespace("bare-resp")
	if err != nil {
		return nil, err
	}
	bareResp := netip.PrefixFrom(nthAddr(bridgeNet, 1), bridgeNet.Bits())
	if err := r.bareAttach(bh, br, "b-resp", bareRespPath, bareResp); err != nil {
		return nil, err
	}
	rh, err := r.handle(bareRespPath)
	if err != nil {
		return nil, err
	}
	respLink, err := rh.LinkByName("eth0")
	if err != nil {
		return nil, fmt.Errorf("baseline responder: %w", err)
	}
	bareNeigh := neighbour{rh, respLink, bareResp.Addr()}
	bareRespAddr := netip.AddrPortFrom(bareResp.Addr(), echoPort)
	if err := r.echo(bareRespPath, bareRespAddr); err != nil {
		return nil, err
	}

	res := &setupResult{}
	for i := 1; i <= n; i++ {
		if err := r.ctx.Err(); err != nil {
			return nil, err
		}
		var wire time.Duration
		d, resent, err := r.timedAdd(fmt.Sprintf("s%03d", i), respAddr, func(path string) error {
			begin := time.Now()
			c := dataplane.Container{
				HostNS: t.cell1.NetNS, NetNS: path, IfName: "eth0",
				IP: nthAddr(t.cell1.Subnet, 9+i), MTU: overlayMTU,
			}
			_, err := dataplane.AddContainer(c)
			wire = time.Since(begin)
			if err == nil {
				r.onCleanup(func() error { return dataplane.DelContainer(c) })
			}
			return err
		})
		if err != nil {
			return nil, err
		}
		res.trellis = append(res.trellis, ms(d))
		res.wire = append(res.wire, ms(wire))
		if resent > 0 {
			res.resent[0]++
		}

		addr := netip.PrefixFrom(nthAddr(bridgeNet, 256+i), bridgeNet.Bits())
		d, resent, err = r.timedAdd(fmt.Sprintf("b%03d", i), bareRespAddr, func(path string) error {
			if err := r.bareAttach(bh, br, fmt.Sprintf("b-%03d", i), path, addr); err != nil {
				return err
			}
			return bareNeigh.pair(path, addr.Addr())
		})
		if err != nil {
			return nil, err
		}
		res.bare = append(res.bare, ms(d))
		if resent > 0 {
			res.resent[1]++
		}
		if i%10 == 0 || i == n {
			r.logf("container setup %3d/%d: trellis %.2f ms, plain veth %.2f ms", i, n, res.trellis[i-1], res.bare[i-1])
		}
	}
	return res, nil
}

// neighbour is the setup baseline's responder: where its address is, so
// that each new container and the responder get permanent neighbour
// entries for each other, as trellis gives a container and its host veth.
// Without them the first datagram would wait for ARP, and for ARP's 1 s
// retransmission whenever a veth that just came up dropped the request.
type neighbour struct {
	h   *netlink.Handle // in the responder's namespace
	dev netlink.Link    // the responder's eth0
	ip  netip.Addr
}

// pair adds the permanent entries between the responder and the container
// with address ip on eth0 of the namespace at path.
func (n neighbour) pair(path string, ip netip.Addr) error {
	h, err := netns.Handle(path)
	if err != nil {
		return err
	}
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find eth0 in %s: %w", path, err)
	}
	for _, e := range []struct {
		h   *netlink.Handle
		dev netlink.Link
		ip  netip.Addr
		mac net.HardwareAddr
	}{
		{h, eth0, n.ip, n.dev.Attrs().HardwareAddr},
		{n.h, n.dev, ip, eth0.Attrs().HardwareAddr},
	} {
		err := e.h.NeighSet(&netlink.Neigh{
			LinkIndex: e.dev.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
			IP: e.ip.AsSlice(), HardwareAddr: e.mac,
		})
		if err != nil {
			return fmt.Errorf("neighbour %s on %s: %w", e.ip, e.dev.Attrs().Name, err)
		}
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// bareAttach is the setup baseline's wiring, what a minimal bridge plugin
// does: a veth whose host end host is a port of br and whose other end is
// eth0 in the namespace at path with addr. Its host end is deleted at the
// end of the run.
func (r *run) bareAttach(bh *netlink.Handle, br netlink.Link, host, path string, addr netip.Prefix) error {
	fd, err := vnetns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("netns %s: %w", path, err)
	}
	defer fd.Close()
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: host, MTU: overlayMTU, MasterIndex: br.Attrs().Index},
		PeerName:  "eth0", PeerMTU: overlayMTU, PeerNamespace: netlink.NsFd(fd),
	}
	if err := bh.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s: %w", host, err)
	}
	r.onCleanup(func() error {
		if err := bh.LinkDel(veth); err != nil && !errors.Is(err, syscall.ENODEV) {
			return fmt.Errorf("delete veth %s: %w", host, err)
		}
		return nil
	})
	if err := bh.LinkSetUp(veth); err != nil {
		return fmt.Errorf("set %s up: %w", host, err)
	}
	h, err := netns.Handle(path)
	if err != nil {
		return err
	}
	defer h.Close()
	return addrUp(h, "eth0", addr)
}

// timedAdd creates the container namespace name, opens a UDP socket in it,
// and then times add(path) followed by a probe to the echo responder at to.
// Making the namespace is left out of the time: a runtime makes it before
// it calls CNI ADD.
func (r *run) timedAdd(name string, to netip.AddrPort, add func(path string) error) (time.Duration, int, error) {
	path, conn, err := r.probeNamespace(name)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close()
	begin := time.Now()
	if err := add(path); err != nil {
		return 0, 0, err
	}
	resent, err := probe(conn, to)
	if err != nil {
		return 0, resent, fmt.Errorf("first packet from %s: %w", name, err)
	}
	return time.Since(begin), resent, nil
}

// probeNamespace creates the container namespace name and opens a UDP
// socket in it, for probe.
func (r *run) probeNamespace(name string) (string, *net.UDPConn, error) {
	path, err := r.namespace(name)
	if err != nil {
		return "", nil, err
	}
	var conn *net.UDPConn
	err = netns.Do(path, func() (err error) {
		conn, err = net.ListenUDP("udp4", nil)
		return err
	})
	if err != nil {
		return "", nil, fmt.Errorf("open probe socket in %s: %w", path, err)
	}
	return path, conn, nil
}

// probe sends a datagram to the echo responder at to and waits for it to
// come back, sending again every probeResend. It returns how many times it
// sent again.
func probe(conn *net.UDPConn, to netip.AddrPort) (resent int, err error) {
	msg := []byte("trellis bench probe")
	buf := make([]byte, 64)
	giveUp := time.Now().Add(probeTimeout)
	for {
		if _, err := conn.WriteToUDPAddrPort(msg, to); err != nil {
			return resent, fmt.Errorf("send to %s: %w", to, err)
		}
		deadline := time.Now().Add(probeResend)
		if deadline.After(giveUp) {
			deadline = giveUp
		}
		conn.SetReadDeadline(deadline)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err == nil && from == to && bytes.Equal(buf[:n], msg) {
				return resent, nil
			}
			if err != nil {
				break
			}
		}
		if time.Now().After(giveUp) {
			return resent, fmt.Errorf("no echo from %s within %v", to, probeTimeout)
		}
		resent++
	}
}

// echo serves a UDP echo on at, inside the namespace at path, until the end
// of the run.
func (r *run) echo(path string, at netip.AddrPort) error {
	var conn *net.UDPConn
	err := netns.Do(path, func() (err error) {
		conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(at))
		return err
	})
	if err != nil {
		return fmt.Errorf("echo responder on %s: %w", at, err)
	}
	r.onCleanup(conn.Close)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			conn.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return nil
}

func (s *setupResult) figures() []Figure {
	early, late := earlyLate(len(s.cni))
	return append([]Figure{
		newFigure("overlay/setup-p50", "container setup, CNI ADD to first packet, p50", "ms",
			percentile(s.cni, 50), percentile(s.bare, 50), "plain veth on a bridge (wiring only)",
			&goal{atMost: true, limit: 20}),
		newFigure("overlay/setup-p99", "container setup, CNI ADD to first packet, p99", "ms",
			percentile(s.cni, 99), percentile(s.bare, 99), "plain veth on a bridge (wiring only)",
			&goal{atMost: true, limit: 50}),
		newFigure("overlay/setup-growth", fmt.Sprintf("container setup, CNI ADD to first packet, mean of %s", late), "ms",
			mean(late.of(s.cni)), mean(early.of(s.cni)), fmt.Sprintf("mean of %s", early),
			&goal{ratio: true, atMost: true, limit: 1, slack: 0.25}),
		newFigure("overlay/setup-burst-p50", fmt.Sprintf("%d containers CNI ADDed at once on one cell, ADD to first packet, p50", len(s.burst)), "ms",
			percentile(s.burst, 50), percentile(s.cni, 50), "the sequential adds' p50", nil),
		newFigure("overlay/setup-burst-p99", fmt.Sprintf("%d containers CNI ADDed at once on one cell, ADD to first packet, p99", len(s.burst)), "ms",
			percentile(s.burst, 99), percentile(s.cni, 99), "the sequential adds' p99", nil),
		newFigure("overlay/setup-wiring-p50", "container wiring alone (dataplane.AddContainer) to first packet, p50", "ms",
			percentile(s.trellis, 50), percentile(s.bare, 50), "plain veth on a bridge", nil),
		newFigure("overlay/setup-wiring-growth", fmt.Sprintf("container wiring alone, mean of %s", late), "ms",
			mean(late.of(s.trellis)), mean(early.of(s.trellis)), fmt.Sprintf("mean of %s", early), nil),
	}, s.start.figures()...)
}

func (s *setupResult) notes() []string {
	early, late := earlyLate(len(s.trellis))
	notes := []string{
		fmt.Sprintf("container setup: %d sequential adds to cell1, each timed from dataplane.AddContainer "+
			"(the kernel wiring trellis-cni does; the plugin's exec and the agent's address allocation are not included) "+
			"until a UDP datagram from the new container to a container on the same cell is echoed back; "+
			"the container's namespace is made before the clock starts, as a runtime makes it before CNI ADD; "+
			"all containers stay attached until the end. Baseline: the same with a veth on a bridge made with plain netlink "+
			"(no sysctls; permanent neighbour entries between container and responder, as trellis has), alternating with the trellis adds.", len(s.trellis)),
		fmt.Sprintf("of the trellis setup time, dataplane.AddContainer alone took p50 %.2f ms, p99 %.2f ms; "+
			"the first datagram was dropped (resent after %v) in %d of %d trellis adds and %d of %d baseline adds.",
			percentile(s.wire, 50), percentile(s.wire, 99), probeResend, s.resent[0], len(s.trellis), s.resent[1], len(s.bare)),
		fmt.Sprintf("growth: mean of %s over mean of %s of the same run; the plain veth baseline's own ratio was %.2fx.",
			late, early, mean(late.of(s.bare))/mean(early.of(s.bare))),
		fmt.Sprintf("container setup, CNI ADD to first packet: a local foundation of one cell (default deny), a policy from the app of the new containers to the responder's on udp/%d; "+
			"%d sequential CNI ADDs with libcni from the cell's namespace (the trellis-cni plugin, the agent's address, wiring, registration with the controller, policy table and instance certificate), "+
			"each timed from the ADD until the responder's echo; all stay attached; the first datagram was resent (after %v) in %d of them.",
			echoPort, len(s.cni), probeResend, s.cniResent),
		fmt.Sprintf("container setup, %d CNI ADDs at once (a cell starting up): the same foundation, after the sequential adds; %d namespaces and probe sockets made first, "+
			"then every ADD started at the same moment and each timed until its first echo; all %d attached, the last echo %.1f ms after the start.",
			len(s.burst), len(s.burst), len(s.burst), s.burstTook),
		fmt.Sprintf("CPU time (user and system) per CNI ADD, a figure the machine's load barely moves: sequential %s; at once %s "+
			"(the controller's and agent's from /proc/PID/stat, in 10 ms ticks, over all the adds; the plugin's the reaped children's; the agent's and controller's include the work each ADD sets off, as the new desired state).",
			s.cpu.per(len(s.cni)), s.burstCPU.per(len(s.burst))),
	}
	if len(s.stepKeys) > 0 {
		var parts []string
		for _, k := range s.stepKeys {
			parts = append(parts, fmt.Sprintf("%s %.2f / %.2f", k, percentile(s.steps[k], 50), percentile(s.steps[k], 99)))
		}
		notes = append(notes, fmt.Sprintf("the agent's steps of the %d sequential CNI ADDs, from its msg=attached log lines, p50 / p99 ms: %s. "+
			"register, policy and certificate are counted from the allocation (they run while the plugin wires the container; the certificate comes with the registration's answer, which carries its request), "+
			"wait is the commit's wait for them, serve the TLS port's listener, took the whole commit, since_allocated from the allocation to the commit's answer.",
			len(s.steps[s.stepKeys[0]]), strings.Join(parts, ", ")))
		parts = nil
		for _, k := range s.stepKeys {
			if v := s.burstSteps[k]; len(v) > 0 {
				parts = append(parts, fmt.Sprintf("%s %.2f / %.2f", k, percentile(v, 50), percentile(v, 99)))
			}
		}
		if len(parts) > 0 {
			notes = append(notes, fmt.Sprintf("the same for the %d ADDs at once: %s.", len(s.burst), strings.Join(parts, ", ")))
		}
	}
	return append(notes, s.start.note())
}

// loadavg returns the 1, 5 and 15 minute load averages.
func loadavg() [3]float64 {
	var l [3]float64
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return l
	}
	for i, f := range strings.Fields(string(b)) {
		if i == 3 {
			break
		}
		l[i], _ = strconv.ParseFloat(f, 64)
	}
	return l
}
