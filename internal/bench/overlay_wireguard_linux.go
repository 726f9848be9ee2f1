package bench

import (
	"fmt"
	"github.com/trellis-c2c/trellis/internal/wireguard/engine"
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/trellis-c2c/trellis/internal/dataplane"
	"github.com/trellis-c2c/trellis/internal/netns"
	"github.com/trellis-c2c/trellis/internal/wireguard"
)

// The encrypted rows of the overlay bench: cross-cell TCP and request
// latency between two more trellis cells with encryption on, against the
// same path with it off (cells 1 and 2) and against a bare pair of the
// same WireGuard engine (two namespaces on the underlay with a WireGuard
// device each and nothing of trellis: no VXLAN, no veth, no forwarding).

var bareWGNet = netip.MustParsePrefix("10.96.0.0/24") // the bare WireGuard pair

// wgTopo is the encrypted part of the topology.
type wgTopo struct {
	kind         string   // the engine the cells run
	encA, encB   endpoint // containers on the encrypted cells 3 and 4
	bareA, bareB endpoint // the bare WireGuard pair
}

// rrRounds is how many request/response round trips a latency sample has.
func rrRounds(p overlayParams) int {
	if p.runs == 1 {
		return 300
	}
	return 1000
}

// buildEncrypted adds the encrypted cells and the bare pair to t.
func (r *run) buildEncrypted(t *overlayTopo) (*wgTopo, error) {
	r.logf("building the encrypted part: 2 cells with WireGuard on, a bare WireGuard pair")
	w := &wgTopo{}
	var cells []benchCell
	var peers []dataplane.Peer
	for i := 3; i <= 4; i++ {
		path, ip, err := t.attach(fmt.Sprintf("cell%d", i), byte(10+i))
		if err != nil {
			return nil, err
		}
		kf, err := wireguard.NewKey(1)
		if err != nil {
			return nil, err
		}
		c := benchCell{
			Cell: dataplane.Cell{
				UnderlayDevice: "eth0", UnderlayIP: ip, Overlay: overlayNet,
				Subnet:    netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 255, byte(i), 0}), 24),
				WireGuard: &dataplane.WireGuard{PrivateKey: kf.PrivateKey},
			},
			NetNS: path,
			dp:    dataplane.New(path, nil).UseWireGuard(engine.Engines()),
		}
		cells = append(cells, c)
		peers = append(peers, dataplane.Peer{UnderlayIP: ip, Subnet: c.Subnet, WireGuardKey: kf.PrivateKey.PublicKey()})
	}
	for _, c := range cells {
		r.onCleanup(c.dp.TeardownOverlay)
		if _, err := c.dp.Set(r.ctx, dataplane.Desired{Overlay: &dataplane.Overlay{Cell: c.Cell, Peers: peers}}); err != nil {
			return nil, err
		}
	}
	w.kind, _ = cells[0].dp.WireGuard()
	var err error
	mtu := dataplane.OverlayMTU(underlayMTU, true)
	if w.encA, err = r.containerMTU(cells[0], "ctr-enc-a", 2, mtu); err != nil {
		return nil, err
	}
	if w.encB, err = r.containerMTU(cells[1], "ctr-enc-b", 2, mtu); err != nil {
		return nil, err
	}

	// The bare pair: the same engine, configured directly.
	var ends [2]endpoint
	var keys [2]wireguard.Key
	var ips [2]netip.Addr
	var engines [2]wireguard.Engine
	for i := range ends {
		path, ip, err := t.attach(fmt.Sprintf("wg%d", i+1), byte(41+i)) // 31-34: the paths without trellis
		if err != nil {
			return nil, err
		}
		kf, err := wireguard.NewKey(1)
		if err != nil {
			return nil, err
		}
		e, err := engine.Up(wireguard.Config{NetNS: path, Name: "wg0", PrivateKey: kf.PrivateKey,
			MTU: underlayMTU - wireguard.Overhead, Kind: w.kind})
		if err != nil {
			return nil, fmt.Errorf("bare WireGuard in %s: %w", path, err)
		}
		r.onCleanup(e.Close)
		h, err := r.handle(path)
		if err != nil {
			return nil, err
		}
		addr := netip.PrefixFrom(nthAddr(bareWGNet, i+1), bareWGNet.Bits())
		if err := addrUp(h, "wg0", addr); err != nil {
			return nil, err
		}
		ends[i], keys[i], ips[i], engines[i] = endpoint{path, addr.Addr()}, kf.PrivateKey, ip, e
	}
	for i, e := range engines {
		o := 1 - i
		err := e.SetPeers([]wireguard.Peer{{PublicKey: keys[o].PublicKey(),
			Endpoint:   netip.AddrPortFrom(ips[o], wireguard.DefaultPort),
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(ends[o].ip, 32)}}})
		if err != nil {
			return nil, err
		}
	}
	w.bareA, w.bareB = ends[0], ends[1]
	return w, nil
}

// containerMTU is container with the MTU given.
func (r *run) containerMTU(cell benchCell, name string, host, mtu int) (endpoint, error) {
	path, err := r.namespace(name)
	if err != nil {
		return endpoint{}, err
	}
	c := dataplane.Container{HostNS: cell.NetNS, NetNS: path, IfName: "eth0", IP: nthAddr(cell.Subnet, host), MTU: mtu}
	if _, err := dataplane.AddContainer(c); err != nil {
		return endpoint{}, err
	}
	r.onCleanup(func() error { return dataplane.DelContainer(c) })
	return endpoint{path, c.IP}, nil
}

// The paths of the encrypted rows.
const (
	wgOff  = iota // cells 1 and 2, encryption off
	wgOn          // cells 3 and 4, encryption on
	wgBare        // the bare WireGuard pair
	wgPaths
)

var (
	wgPathNames = [wgPaths]string{"trellis, off", "trellis, WireGuard", "bare WireGuard"}
	wgPathKeys  = [wgPaths]string{"trellis-off", "trellis-wg", "bare-wg"}
)

// wgResult holds the encrypted rows' samples.
type wgResult struct {
	kind string
	tput [wgPaths]map[int][]float64 // Gbit/s by stream count
	// cores is the CPU the bench process (both cells' WireGuard engines
	// with the userspace engine, nothing otherwise) used per Gbit/s.
	cores [wgPaths]map[int][]float64
	rr    [wgPaths][]float64 // round-trip times, µs
}

// encrypted measures the encrypted rows. Runs are interleaved over the
// paths as in throughput; the off path's iperf3 server is throughput's.
func (r *run) encrypted(t *overlayTopo, w *wgTopo, p overlayParams) (*wgResult, error) {
	ends := [wgPaths][2]endpoint{wgOff: {t.trellisA, t.trellisB}, wgOn: {w.encA, w.encB}, wgBare: {w.bareA, w.bareB}}
	for _, e := range ends[wgOn:] {
		if err := r.iperf3Server(e[1]); err != nil {
			return nil, err
		}
	}
	res := &wgResult{kind: w.kind}
	for i := range wgPaths {
		res.tput[i], res.cores[i] = map[int][]float64{}, map[int][]float64{}
	}
	for n := 1; n <= p.runs; n++ {
		for _, streams := range streamCounts {
			for i := range wgPaths {
				path := (n - 1 + i) % wgPaths
				e := ends[path]
				selfCPU := processCPU(os.Getpid())
				cpu0 := selfCPU()
				start := time.Now()
				g, err := r.iperf3Client(e[0], e[1], streams, p)
				if err != nil {
					return nil, err
				}
				cores := (selfCPU() - cpu0).Seconds() / time.Since(start).Seconds()
				r.logf("encrypted run %d/%d, %d stream(s), %-19s %6.2f Gbit/s, bench process %.2f cores", n, p.runs, streams, wgPathNames[path]+":", g, cores)
				res.tput[path][streams] = append(res.tput[path][streams], g)
				res.cores[path][streams] = append(res.cores[path][streams], cores/g)
			}
		}
	}
	for path, e := range ends {
		rtts, err := r.roundTrips(e[0], e[1], rrRounds(p))
		if err != nil {
			return nil, fmt.Errorf("request latency, %s: %w", wgPathNames[path], err)
		}
		res.rr[path] = rtts
		r.logf("request latency, %-19s p50 %.0f µs, p99 %.0f µs", wgPathNames[path]+":", percentile(rtts, 50), percentile(rtts, 99))
	}
	return res, nil
}

// roundTrips serves TCP echo on to and times n 64-byte request/response
// round trips on one connection from from, in µs.
func (r *run) roundTrips(from, to endpoint, n int) ([]float64, error) {
	var ln net.Listener
	if err := netns.Do(to.ns, func() (err error) {
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(to.ip, echoPort+1).String())
		return err
	}); err != nil {
		return nil, err
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	var c net.Conn
	if err := netns.Do(from.ns, func() (err error) {
		c, err = net.DialTimeout("tcp4", netip.AddrPortFrom(to.ip, echoPort+1).String(), 5*time.Second)
		return err
	}); err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	msg, buf := make([]byte, 64), make([]byte, 64)
	out := make([]float64, 0, n)
	for i := 0; i < n+10; i++ { // the first 10 warm the path up
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return nil, err
		}
		if i >= 10 {
			out = append(out, float64(time.Since(start))/float64(time.Microsecond))
		}
	}
	return out, nil
}

func (res *wgResult) figures() []Figure {
	var fs []Figure
	for _, n := range streamCounts {
		s := "streams"
		if n == 1 {
			s = "stream"
		}
		on := res.tput[wgOn][n]
		fs = append(fs,
			newPairedFigure(fmt.Sprintf("overlay/wg-tcp-%d-vs-bare-wg", n), fmt.Sprintf("cross-cell TCP, %d %s, encrypted, vs bare WireGuard", n, s),
				"Gbit/s", on, res.tput[wgBare][n], "bare WireGuard pair ("+res.kind+")", &goal{ratio: true, limit: 0.9}),
			newPairedFigure(fmt.Sprintf("overlay/wg-tcp-%d-vs-off", n), fmt.Sprintf("cross-cell TCP, %d %s, encrypted, vs off", n, s),
				"Gbit/s", on, res.tput[wgOff][n], "same path, encryption off", nil),
			newPairedFigure(fmt.Sprintf("overlay/wg-cpu-%d-vs-bare-wg", n), fmt.Sprintf("CPU per Gbit/s, %d %s, encrypted, vs bare WireGuard", n, s),
				"cores per Gbit/s", res.cores[wgOn][n], res.cores[wgBare][n], "bare WireGuard pair", nil),
		)
	}
	for _, q := range []float64{50, 99} {
		on := percentile(res.rr[wgOn], q)
		fs = append(fs,
			newFigure(fmt.Sprintf("overlay/wg-rr-p%.0f-vs-bare-wg", q), fmt.Sprintf("request latency p%.0f, encrypted, vs bare WireGuard", q),
				"µs", on, percentile(res.rr[wgBare], q), "bare WireGuard pair", nil),
			newFigure(fmt.Sprintf("overlay/wg-rr-p%.0f-vs-off", q), fmt.Sprintf("request latency p%.0f, encrypted, vs off", q),
				"µs", on, percentile(res.rr[wgOff], q), "same path, encryption off", nil),
		)
	}
	return fs
}

func (res *wgResult) notes(p overlayParams) []string {
	return []string{fmt.Sprintf("encrypted rows: the %s WireGuard engine (wireguard-go in the bench process on a TUN in each cell's namespace where the kernel has no WireGuard). "+
		"trellis, WireGuard: container on cell3 to container on cell4, VXLAN-GBP inside trellis-wg (container MTU %d); "+
		"trellis, off: cells 1 and 2 as above; bare WireGuard: two namespaces on the same underlay with one WireGuard device each (MTU %d), nothing of trellis. "+
		"Throughput as above, the three paths interleaved in every run. CPU per Gbit/s: the bench process's user+system CPU during the iperf3 run "+
		"(both cells' userspace engines; the kernel's own work, as on the off path, is not in it) over the rate. "+
		"Request latency: %d round trips of 64 bytes on one TCP connection, after 10 to warm up.",
		res.kind, dataplane.OverlayMTU(underlayMTU, true), underlayMTU-wireguard.Overhead, rrRounds(p))}
}

func (res *wgResult) samples(into map[string][]float64) {
	for path, key := range wgPathKeys {
		for _, n := range streamCounts {
			into[fmt.Sprintf("tcp-%d/%s", n, key)] = res.tput[path][n]
		}
		into["rr/"+key] = res.rr[path]
	}
}
