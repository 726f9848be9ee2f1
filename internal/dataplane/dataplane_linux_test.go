package dataplane

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
	"github.com/trellis-c2c/trellis/internal/netns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { os.Exit(dataplanetest.Run(m)) }

// ioTimeout bounds every socket operation, so a broken path fails the test
// instead of hanging it.
const ioTimeout = 10 * time.Second

var overlay = netip.MustParsePrefix("10.255.0.0/16")

// nsCell is a cell of a test topology: its overlay description, its
// namespace and its dataplane.
type nsCell struct {
	Cell
	NetNS string
	dp    *Dataplane
}

// cellFor is the dataplane view of underlay cell i (1-based), leasing
// 10.255.i.0/24.
func cellFor(u *dataplanetest.Underlay, i int) nsCell {
	uc := u.Cells[i-1]
	return nsCell{
		Cell: Cell{
			UnderlayDevice: uc.Device,
			UnderlayIP:     uc.IP,
			Subnet:         netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 255, byte(i), 0}), 24),
			Overlay:        overlay,
		},
		NetNS: uc.NetNS,
		dp:    New(uc.NetNS, nil),
	}
}

// setOverlay converges c's overlay with peers through its dataplane and
// returns the ops applied.
func (c nsCell) setOverlay(peers []Peer) ([]op, error) {
	c.dp.mu.Lock()
	defer c.dp.mu.Unlock()
	return c.dp.setOverlay(context.Background(), c.Cell, peers)
}

// setPolicy applies p through c's dataplane and reports whether the
// table changed.
func (c nsCell) setPolicy(p Policy) (bool, error) {
	ch, err := c.dp.Set(context.Background(), Desired{Policy: &p})
	return ch.Policy, err
}

// verifyPolicy is setPolicy reading the table back in full.
func (c nsCell) verifyPolicy(p Policy) (bool, error) {
	ch, err := c.dp.Set(context.Background(), Desired{Policy: &p, Verify: true})
	return ch.Policy, err
}

func peersOf(cells ...nsCell) []Peer {
	var ps []Peer
	for _, c := range cells {
		ps = append(ps, Peer{UnderlayIP: c.UnderlayIP, Subnet: c.Subnet})
	}
	return ps
}

// meshed makes an underlay with n cells and converges every cell's overlay
// with all the others (each given the full list, itself included).
func meshed(t testing.TB, n int) (*dataplanetest.Underlay, []nsCell) {
	t.Helper()
	u := dataplanetest.NewUnderlay(t, n)
	var cells []nsCell
	for i := 1; i <= n; i++ {
		cells = append(cells, cellFor(u, i))
	}
	for _, c := range cells {
		if _, err := c.dp.Set(context.Background(), Desired{Overlay: &Overlay{c.Cell, peersOf(cells...)}}); err != nil {
			t.Fatalf("SetOverlay(%s) = %v", c.NetNS, err)
		}
		t.Cleanup(func() {
			if err := c.dp.TeardownOverlay(); err != nil {
				t.Errorf("TeardownOverlay(%s) = %v", c.NetNS, err)
			}
		})
	}
	return u, cells
}

// addContainerNS creates a container namespace on the cell and wires it in.
func addContainerNS(t testing.TB, cell nsCell, name, ip string) Container {
	t.Helper()
	c := Container{
		HostNS: cell.NetNS,
		NetNS:  dataplanetest.Namespace(t, name),
		IfName: "eth0",
		IP:     netip.MustParseAddr(ip),
		MTU:    1450,
	}
	res, err := AddContainer(c)
	if err != nil {
		t.Fatalf("AddContainer(%+v) = %v", c, err)
	}
	t.Cleanup(func() {
		if err := DelContainer(c); err != nil {
			t.Errorf("DelContainer(%s) = %v", c.IP, err)
		}
	})
	if want := HostVethName(c.IP); res.HostVeth != want {
		t.Errorf("AddContainer(%s).HostVeth = %q, want %q", c.IP, res.HostVeth, want)
	}
	if got, want := res.ContainerMAC.String(), containerMAC(c.IP).String(); got != want {
		t.Errorf("AddContainer(%s).ContainerMAC = %s, want %s", c.IP, got, want)
	}
	if got, want := res.HostMAC.String(), hostMAC(c.IP).String(); got != want {
		t.Errorf("AddContainer(%s).HostMAC = %s, want %s", c.IP, got, want)
	}
	if err := CheckContainer(c); err != nil {
		t.Errorf("CheckContainer after AddContainer: %v", err)
	}
	return c
}

// inNS runs fn in the namespace at path (to open a socket there).
func inNS(t testing.TB, path string, fn func() error) {
	t.Helper()
	if err := netns.Do(path, fn); err != nil {
		t.Fatal(err)
	}
}

func listenTCP(t testing.TB, c Container, port int) net.Listener {
	t.Helper()
	var l net.Listener
	inNS(t, c.NetNS, func() (err error) {
		l, err = net.Listen("tcp4", netip.AddrPortFrom(c.IP, uint16(port)).String())
		return err
	})
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(ioTimeout))
				// Greet with the peer's address as seen here, then echo.
				fmt.Fprintf(conn, "%s\n", conn.RemoteAddr().(*net.TCPAddr).IP)
				io.Copy(conn, conn)
			}()
		}
	}()
	return l
}

// checkTCP connects from src to dst:port, checks that dst sees src's own
// address, and echoes 1 MiB through the connection.
func checkTCP(t *testing.T, src, dst Container, port int) {
	t.Helper()
	var conn net.Conn
	inNS(t, src.NetNS, func() (err error) {
		d := net.Dialer{Timeout: ioTimeout}
		conn, err = d.Dial("tcp4", netip.AddrPortFrom(dst.IP, uint16(port)).String())
		return err
	})
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(ioTimeout))

	payload := bytes.Repeat([]byte("trellis!"), 1<<17) // 1 MiB
	go func() {
		conn.Write(payload)
		conn.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("TCP %s -> %s: %v", src.IP, dst.IP, err)
	}
	greeting, echoed, _ := bytes.Cut(got, []byte("\n"))
	if string(greeting) != src.IP.String() {
		t.Errorf("TCP %s -> %s: server saw client %q, want %s", src.IP, dst.IP, greeting, src.IP)
	}
	if !bytes.Equal(echoed, payload) {
		t.Errorf("TCP %s -> %s: echoed %d bytes, want the %d sent", src.IP, dst.IP, len(echoed), len(payload))
	}
}

func listenUDP(t *testing.T, ns string, ip netip.Addr, port int) *net.UDPConn {
	t.Helper()
	var conn *net.UDPConn
	inNS(t, ns, func() (err error) {
		conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, uint16(port))))
		return err
	})
	t.Cleanup(func() { conn.Close() })
	return conn
}

// checkUDP sends a datagram from src to dst:port whose IP packet is exactly
// the container MTU (1450), with DF set, and checks it arrives whole and
// from src's address.
func checkUDP(t *testing.T, src, dst Container, port int) {
	t.Helper()
	server := listenUDP(t, dst.NetNS, dst.IP, port)
	client := listenUDP(t, src.NetNS, src.IP, 0)
	payload := bytes.Repeat([]byte{0xa5}, src.MTU-20-8)
	copy(payload, fmt.Sprintf("from %s", src.IP))
	to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst.IP, uint16(port)))
	// Like TCP, ask the kernel for DF so that an MTU mistake shows as an
	// error rather than as fragments.
	rc, err := client.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) {
		err = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO)
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.WriteToUDP(payload, to); err != nil {
		t.Fatalf("UDP %s -> %s: send %d bytes: %v", src.IP, dst.IP, len(payload), err)
	}
	server.SetReadDeadline(time.Now().Add(ioTimeout))
	buf := make([]byte, 65536)
	n, from, err := server.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("UDP %s -> %s: receive: %v", src.IP, dst.IP, err)
	}
	if from.Addr() != src.IP || !bytes.Equal(buf[:n], payload) {
		t.Errorf("UDP %s -> %s: got %d bytes from %s, want %d from %s", src.IP, dst.IP, n, from, len(payload), src.IP)
	}
}

func linkMTU(t *testing.T, ns, name string) int {
	t.Helper()
	l, err := dataplanetest.Handle(t, ns).LinkByName(name)
	if err != nil {
		t.Fatalf("find %s in %s: %v", name, ns, err)
	}
	return l.Attrs().MTU
}

func TestOverlayConnectsContainers(t *testing.T) {
	_, cells := meshed(t, 2)
	a := addContainerNS(t, cells[0], "a", "10.255.1.2")
	b := addContainerNS(t, cells[0], "b", "10.255.1.3")
	c := addContainerNS(t, cells[1], "c", "10.255.2.2")

	if got := linkMTU(t, cells[0].NetNS, VTEPName); got != 1450 {
		t.Errorf("VTEP MTU = %d, want 1450 (underlay 1500 - 50)", got)
	}
	if got := linkMTU(t, a.NetNS, "eth0"); got != 1450 {
		t.Errorf("container eth0 MTU = %d, want 1450", got)
	}

	for _, ct := range []Container{a, b, c} {
		listenTCP(t, ct, 8080)
	}
	paths := []struct {
		name     string
		src, dst Container
	}{
		{"same cell", b, a},
		{"cross cell", a, c},
		{"cross cell back", c, b},
	}
	for i, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			checkTCP(t, p.src, p.dst, 8080)
			checkUDP(t, p.src, p.dst, 9000+i)
		})
	}

	for _, cell := range cells {
		ops, err := cell.setOverlay(peersOf(cells...))
		if err != nil || len(ops) > 0 {
			t.Errorf("second SetOverlay(%s) applied\n%s(err %v), want nothing", cell.NetNS, render(ops), err)
		}
	}
}

func TestOverlayPeerLeaves(t *testing.T) {
	_, cells := meshed(t, 3)
	c1 := cells[0]
	h := dataplanetest.Handle(t, c1.NetNS)
	before, err := readOverlay(nsKernel{h, c1.NetNS})
	if err != nil {
		t.Fatal(err)
	}
	if len(before.Routes) != 2 || len(before.Neighs) != 2 || len(before.FDB) != 2 {
		t.Fatalf("with 2 peers, %s has routes %v, neighbours %v, FDB %v; want 2 of each", c1.NetNS, before.Routes, before.Neighs, before.FDB)
	}

	ops, err := c1.setOverlay(peersOf(cells[:2]...))
	if err != nil {
		t.Fatalf("SetOverlay without cell3 = %v", err)
	}
	want := `ip route del 10.255.3.0/24 dev trellis-vtep
ip neigh del 10.255.3.0 dev trellis-vtep
bridge fdb del ee:ee:0a:ff:03:00 dev trellis-vtep dst 198.51.100.13 self
`
	if got := render(ops); got != want {
		t.Errorf("SetOverlay without cell3 applied\n%swant\n%s", got, want)
	}
	after, err := readOverlay(nsKernel{h, c1.NetNS})
	if err != nil {
		t.Fatal(err)
	}
	cell2 := cells[1].Subnet
	m2 := vtepMAC(vtepAddr(cell2))
	if len(after.Routes) != 1 || after.Routes[cell2].Gw != vtepAddr(cell2) {
		t.Errorf("routes after cell3 left = %v, want only %s", after.Routes, cell2)
	}
	if len(after.Neighs) != 1 || after.Neighs[vtepAddr(cell2)].MAC != m2 {
		t.Errorf("neighbours after cell3 left = %v, want only %s", after.Neighs, vtepAddr(cell2))
	}
	if len(after.FDB) != 1 || len(after.FDB[m2].Dsts) != 1 || after.FDB[m2].Dsts[0] != cells[1].UnderlayIP {
		t.Errorf("FDB after cell3 left = %v, want only %s -> %s", after.FDB, m2, cells[1].UnderlayIP)
	}

	// A route someone else changed is put back; nothing else is touched.
	l, _ := h.LinkByName(VTEPName)
	bad := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipnet(cell2), Gw: net.IPv4(10, 255, 2, 9), Flags: int(netlink.FLAG_ONLINK)}
	if err := h.RouteReplace(bad); err != nil {
		t.Fatal(err)
	}
	ops, err = c1.setOverlay(peersOf(cells[:2]...))
	if got, want := render(ops), "ip route replace 10.255.2.0/24 via 10.255.2.0 dev trellis-vtep src 10.255.1.0 onlink\n"; err != nil || got != want {
		t.Errorf("SetOverlay after route drift applied\n%s(err %v), want\n%s", got, err, want)
	}

	// A wrong device is refused before anything is changed.
	wrong := c1
	wrong.UnderlayDevice, wrong.MTU = "eth9", 1500
	if _, err := wrong.setOverlay(nil); err == nil || !strings.Contains(err.Error(), "eth9 not found") {
		t.Errorf("SetOverlay(device eth9) = %v, want an error naming eth9", err)
	}
	if ops, err := c1.setOverlay(peersOf(cells[:2]...)); err != nil || len(ops) > 0 {
		t.Errorf("SetOverlay after a refused one applied\n%s(err %v), want nothing", render(ops), err)
	}

	for range 2 {
		if err := c1.dp.TeardownOverlay(); err != nil {
			t.Errorf("TeardownOverlay(%s) = %v", c1.NetNS, err)
		}
	}
	if _, err := h.LinkByName(VTEPName); err == nil {
		t.Errorf("%s still exists after TeardownOverlay", VTEPName)
	}
}

// TestOverlayCarriesMarkAsGBP sends a packet with SO_MARK 5 from cell1 to a
// container on cell2 and captures it on the underlay: it must be VXLAN on
// UDP 4789 with the I and G flags and group policy ID 5.
func TestOverlayCarriesMarkAsGBP(t *testing.T) {
	u, cells := meshed(t, 2)
	dst := addContainerNS(t, cells[1], "gbp", "10.255.2.2")
	server := listenUDP(t, dst.NetNS, dst.IP, 7777)

	capture := openCapture(t, u.NetNS, u.Cells[1].Port)

	var client *net.UDPConn
	inNS(t, cells[0].NetNS, func() (err error) {
		client, err = net.ListenUDP("udp4", nil)
		return err
	})
	defer client.Close()
	rc, _ := client.SyscallConn()
	var serr error
	rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, 0x0005) })
	if serr != nil {
		t.Fatalf("set SO_MARK: %v", serr)
	}
	payload := []byte("marked by trellis")
	if _, err := client.WriteToUDP(payload, &net.UDPAddr{IP: dst.IP.AsSlice(), Port: 7777}); err != nil {
		t.Fatal(err)
	}

	deadline := time.Now().Add(ioTimeout)
	capture.SetReadDeadline(deadline)
	buf := make([]byte, 65536)
	for {
		n, err := capture.Read(buf)
		if err != nil {
			t.Fatalf("no VXLAN packet for %s:7777 seen on the underlay: %v", dst.IP, err)
		}
		v, ok := parseVXLAN(buf[:n])
		if !ok || v.innerDst != dst.IP || v.innerDstPort != 7777 {
			continue
		}
		if v.outerSrc != cells[0].UnderlayIP || v.outerDst != cells[1].UnderlayIP {
			t.Errorf("outer addresses %s -> %s, want %s -> %s", v.outerSrc, v.outerDst, cells[0].UnderlayIP, cells[1].UnderlayIP)
		}
		if v.flags != 0x88 {
			t.Errorf("VXLAN flags = %#02x, want 0x88 (I+G)", v.flags)
		}
		if v.policy != 0x0005 {
			t.Errorf("GBP policy ID = %#04x, want 0x0005", v.policy)
		}
		if v.vni != DefaultVNI {
			t.Errorf("VNI = %d, want %d", v.vni, DefaultVNI)
		}
		break
	}

	server.SetReadDeadline(time.Now().Add(ioTimeout))
	n, err := server.Read(buf)
	if err != nil || !bytes.Equal(buf[:n], payload) {
		t.Errorf("container received %q, %v; want %q", buf[:n], err, payload)
	}
}

// openCapture opens an AF_PACKET socket on dev in the namespace at ns.
func openCapture(t *testing.T, ns, dev string) *os.File {
	t.Helper()
	l, err := dataplanetest.Handle(t, ns).LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	proto := int(htons(unix.ETH_P_ALL))
	var fd int
	inNS(t, ns, func() (err error) {
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: l.Attrs().Index})
	})
	f := os.NewFile(uintptr(fd), "capture "+dev)
	t.Cleanup(func() { f.Close() })
	return f
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

type vxlanPacket struct {
	outerSrc, outerDst netip.Addr
	flags              byte
	policy             uint16
	vni                int
	innerDst           netip.Addr
	innerDstPort       uint16
}

// parseVXLAN decodes Ethernet / IPv4 / UDP 4789 / VXLAN-GBP / Ethernet /
// IPv4 / UDP from a captured frame.
func parseVXLAN(b []byte) (v vxlanPacket, ok bool) {
	ipv4 := func(b []byte) (src, dst netip.Addr, proto byte, payload []byte, ok bool) {
		if len(b) < 20 || b[0]>>4 != 4 {
			return
		}
		ihl := int(b[0]&0xf) * 4
		if len(b) < ihl {
			return
		}
		return netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20])), b[9], b[ihl:], true
	}
	if len(b) < 14 || binary.BigEndian.Uint16(b[12:14]) != unix.ETH_P_IP {
		return v, false
	}
	src, dst, proto, udp, ok := ipv4(b[14:])
	if !ok || proto != unix.IPPROTO_UDP || len(udp) < 8+8 || binary.BigEndian.Uint16(udp[2:4]) != DefaultPort {
		return v, false
	}
	v.outerSrc, v.outerDst = src, dst
	vx := udp[8:]
	v.flags = vx[0]
	v.policy = binary.BigEndian.Uint16(vx[2:4])
	v.vni = int(vx[4])<<16 | int(vx[5])<<8 | int(vx[6])
	inner := vx[8:]
	if len(inner) < 14 || binary.BigEndian.Uint16(inner[12:14]) != unix.ETH_P_IP {
		return v, false
	}
	_, idst, iproto, iudp, ok := ipv4(inner[14:])
	if !ok || iproto != unix.IPPROTO_UDP || len(iudp) < 8 {
		return v, false
	}
	v.innerDst, v.innerDstPort = idst, binary.BigEndian.Uint16(iudp[2:4])
	return v, true
}

// links lists the link names in the namespace at ns.
func links(t *testing.T, ns string) []string {
	t.Helper()
	return dataplanetest.Links(t, ns)
}

func hasLink(t *testing.T, ns, name string) bool {
	t.Helper()
	return slices.Contains(links(t, ns), name)
}

func TestAddContainerFailureLeavesNothing(t *testing.T) {
	_, cells := meshed(t, 1)
	cell := cells[0]
	first := addContainerNS(t, cell, "first", "10.255.1.2")

	t.Run("IP in use", func(t *testing.T) {
		c := first
		c.NetNS = dataplanetest.Namespace(t, "dup")
		_, err := AddContainer(c)
		if err == nil || !strings.Contains(err.Error(), "already exists") {
			t.Fatalf("AddContainer with %s twice = %v, want an error saying the veth exists", c.IP, err)
		}
		if got := links(t, c.NetNS); len(got) != 1 {
			t.Errorf("container netns after failed ADD has links %v, want only lo", got)
		}
		if err := CheckContainer(first); err != nil {
			t.Errorf("the first container was disturbed: %v", err)
		}
	})

	t.Run("container netns missing", func(t *testing.T) {
		c := Container{HostNS: cell.NetNS, NetNS: netns.Path(dataplanetest.Prefix + "gone"), IfName: "eth0", IP: netip.MustParseAddr("10.255.1.9"), MTU: 1450}
		_, err := AddContainer(c)
		if err == nil || !strings.Contains(err.Error(), c.NetNS) || !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("AddContainer(missing netns) = %v, want a not-exist error naming %s", err, c.NetNS)
		}
		if hasLink(t, cell.NetNS, HostVethName(c.IP)) {
			t.Errorf("failed ADD left %s behind", HostVethName(c.IP))
		}
	})

	t.Run("interface name taken in container", func(t *testing.T) {
		c := Container{HostNS: cell.NetNS, NetNS: dataplanetest.Namespace(t, "taken"), IfName: "eth0", IP: netip.MustParseAddr("10.255.1.10"), MTU: 1450}
		h := dataplanetest.Handle(t, c.NetNS)
		if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}}); err != nil {
			t.Fatal(err)
		}
		_, err := AddContainer(c)
		if err == nil || !strings.Contains(err.Error(), "eth0 already exists") {
			t.Fatalf("AddContainer(eth0 taken) = %v, want an error saying so", err)
		}
		if hasLink(t, cell.NetNS, HostVethName(c.IP)) {
			t.Errorf("failed ADD left %s behind", HostVethName(c.IP))
		}
	})

	// Fail each step in turn: every failure must be rolled back.
	c := Container{HostNS: cell.NetNS, NetNS: dataplanetest.Namespace(t, "steps"), IfName: "eth0", IP: netip.MustParseAddr("10.255.1.20"), MTU: 1450}
	plan := planContainer(c)
	for i := range plan {
		boom := errors.New("injected failure")
		_, err := addContainer(c, func(o op) error {
			if o == plan[i] {
				return boom
			}
			return nil
		})
		if !errors.Is(err, boom) {
			t.Fatalf("addContainer failing at %q = %v, want the injected failure", plan[i], err)
		}
		for _, name := range []string{HostVethName(c.IP)} {
			if hasLink(t, cell.NetNS, name) {
				t.Errorf("failure at %q left %s in the cell", plan[i], name)
			}
		}
		if got := links(t, c.NetNS); len(got) != 1 {
			t.Errorf("failure at %q left links %v in the container, want only lo", plan[i], got)
		}
	}
	if _, err := AddContainer(c); err != nil {
		t.Fatalf("AddContainer after rolled-back failures = %v", err)
	}
	defer DelContainer(c)
	if err := CheckContainer(c); err != nil {
		t.Error(err)
	}
}

func TestDelContainerIsIdempotent(t *testing.T) {
	_, cells := meshed(t, 1)
	c := addContainerNS(t, cells[0], "del", "10.255.1.2")
	for i := range 2 {
		if err := DelContainer(c); err != nil {
			t.Errorf("DelContainer #%d = %v", i+1, err)
		}
	}
	if hasLink(t, cells[0].NetNS, HostVethName(c.IP)) {
		t.Errorf("%s still exists after DelContainer", HostVethName(c.IP))
	}
	if got := links(t, c.NetNS); len(got) != 1 {
		t.Errorf("container still has links %v after DelContainer, want only lo", got)
	}
	if err := CheckContainer(c); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("CheckContainer after DelContainer = %v, want an error saying the veth is missing", err)
	}

	// Without the container namespace, and with nothing to delete.
	gone := Container{HostNS: cells[0].NetNS, NetNS: "/run/netns/" + dataplanetest.Prefix + "gone", IP: netip.MustParseAddr("10.255.1.77")}
	if err := DelContainer(gone); err != nil {
		t.Errorf("DelContainer(no netns, no veth) = %v", err)
	}
}

func TestCheckContainerReportsDrift(t *testing.T) {
	_, cells := meshed(t, 1)
	c := addContainerNS(t, cells[0], "drift", "10.255.1.2")

	hh := dataplanetest.Handle(t, c.HostNS)
	ch := dataplanetest.Handle(t, c.NetNS)
	host, err := hh.LinkByName(HostVethName(c.IP))
	if err != nil {
		t.Fatal(err)
	}
	if err := hh.NeighDel(&netlink.Neigh{LinkIndex: host.Attrs().Index, Family: unix.AF_INET, IP: c.IP.AsSlice()}); err != nil {
		t.Fatal(err)
	}
	eth0, err := ch.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.LinkSetMTU(eth0, 1400); err != nil {
		t.Fatal(err)
	}
	if err := netns.Sysctl(c.HostNS, confKey("ipv4", host.Attrs().Name, "rp_filter"), "0"); err != nil {
		t.Fatal(err)
	}

	err = CheckContainer(c)
	for _, want := range []string{
		"host veth s-010255001002: no permanent neighbour 10.255.1.2 lladdr ee:ee:0a:ff:01:02",
		"container eth0: MTU 1400, want 1450",
		"rp_filter=0, want 1",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckContainer after drift = %v, want it to say %q", err, want)
		}
	}
}
