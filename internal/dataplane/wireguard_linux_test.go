package dataplane

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
	"github.com/trellis-c2c/trellis/internal/wireguard"
	"github.com/trellis-c2c/trellis/internal/wireguard/engine"
	"golang.org/x/sys/unix"
)

// wgCells gives every cell a key and returns the cells with WireGuard on
// (userspace: this kernel may have none) and the peers they all share.
func wgCells(t *testing.T, cells []nsCell) ([]nsCell, []Peer) {
	t.Helper()
	var on []nsCell
	var peers []Peer
	for _, c := range cells {
		kf, err := wireguard.NewKey(0)
		if err != nil {
			t.Fatal(err)
		}
		c.WireGuard = &WireGuard{PrivateKey: kf.PrivateKey, Engine: wireguard.KindUserspace}
		c.dp.UseWireGuard(engine.Engines())
		on = append(on, c)
		peers = append(peers, Peer{UnderlayIP: c.UnderlayIP, Subnet: c.Subnet, WireGuardKey: kf.PrivateKey.PublicKey()})
	}
	return on, peers
}

// addContainerMTU is addContainerNS with the container MTU given.
func addContainerMTU(t *testing.T, cell nsCell, name, ip string, mtu int) Container {
	t.Helper()
	c := Container{HostNS: cell.NetNS, NetNS: dataplanetest.Namespace(t, name), IfName: "eth0", IP: netip.MustParseAddr(ip), MTU: mtu}
	if _, err := AddContainer(c); err != nil {
		t.Fatalf("AddContainer(%+v) = %v", c, err)
	}
	t.Cleanup(func() { DelContainer(c) })
	return c
}

// underlayUDP reads frames from capture for d and returns the UDP
// destination ports of the IPv4 packets between underlay addresses.
func underlayUDP(capture interface {
	Read([]byte) (int, error)
	SetReadDeadline(time.Time) error
}, d time.Duration) map[uint16]int {
	ports := map[uint16]int{}
	capture.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 65536)
	for {
		n, err := capture.Read(buf)
		if err != nil {
			return ports
		}
		b := buf[:n]
		if len(b) < 14+20+8 || binary.BigEndian.Uint16(b[12:14]) != unix.ETH_P_IP || b[14+9] != unix.IPPROTO_UDP {
			continue
		}
		ihl := int(b[14]&0xf) * 4
		ports[binary.BigEndian.Uint16(b[14+ihl+2:])]++
	}
}

// TestOverlayWireGuard turns encryption on and off under two cells: on,
// containers talk across cells with every underlay packet WireGuard's and
// the GBP tag intact inside; a second Set changes nothing; off, the
// device goes and VXLAN is back on the underlay.
func TestOverlayWireGuard(t *testing.T) {
	u, plain := meshed(t, 2)
	cells, peers := wgCells(t, plain)
	mtu := OverlayMTU(1500, true)
	a := addContainerMTU(t, cells[0], "wga", "10.255.1.2", mtu)
	c := addContainerMTU(t, cells[1], "wgc", "10.255.2.2", mtu)
	listenTCP(t, c, 8080)
	for _, cell := range cells {
		if _, err := cell.dp.Set(context.Background(), Desired{Overlay: &Overlay{cell.Cell, peers}}); err != nil {
			t.Fatalf("Set with WireGuard in %s = %v", cell.NetNS, err)
		}
		if kind, pub := cell.dp.WireGuard(); kind != wireguard.KindUserspace || pub != cell.WireGuard.PrivateKey.PublicKey() {
			t.Errorf("WireGuard() = %q, %s; want userspace with the cell's key", kind, pub)
		}
	}
	if got := linkMTU(t, cells[0].NetNS, VTEPName); got != mtu {
		t.Errorf("VTEP MTU = %d, want %d (1500 - 60 - 50)", got, mtu)
	}
	if got := linkMTU(t, cells[0].NetNS, WGName); got != 1440 {
		t.Errorf("%s MTU = %d, want 1440", WGName, got)
	}
	capture := openCapture(t, u.NetNS, u.Cells[1].Port)
	checkTCP(t, a, c, 8080)
	checkUDP(t, a, c, 9001)
	ports := underlayUDP(capture, 500*time.Millisecond)
	if ports[wireguard.DefaultPort] == 0 || len(ports) != 1 {
		t.Errorf("UDP on the underlay by destination port = %v, want only %d", ports, wireguard.DefaultPort)
	}

	// Inside the device, the VXLAN packet carries the GBP tag as before.
	inner := openCapture(t, cells[1].NetNS, WGName)
	var client *net.UDPConn
	inNS(t, cells[0].NetNS, func() (err error) { client, err = net.ListenUDP("udp4", nil); return err })
	defer client.Close()
	rc, _ := client.SyscallConn()
	rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, 0x0005) })
	server := listenUDP(t, c.NetNS, c.IP, 7777)
	if _, err := client.WriteToUDP([]byte("marked"), &net.UDPAddr{IP: c.IP.AsSlice(), Port: 7777}); err != nil {
		t.Fatal(err)
	}
	inner.SetReadDeadline(time.Now().Add(ioTimeout))
	buf := make([]byte, 65536)
	for {
		n, err := inner.Read(buf)
		if err != nil {
			t.Fatalf("no VXLAN packet for %s:7777 inside %s: %v", c.IP, WGName, err)
		}
		// A TUN has no link header: give parseVXLAN one.
		frame := append(make([]byte, 12), 0x08, 0x00)
		v, ok := parseVXLAN(append(frame, buf[:n]...))
		if !ok || v.innerDst != c.IP || v.innerDstPort != 7777 {
			continue
		}
		if v.policy != 0x0005 || v.outerSrc != WireGuardAddr(cells[0].Subnet) || v.outerDst != WireGuardAddr(cells[1].Subnet) {
			t.Errorf("inside %s: VXLAN %s -> %s with GBP %#04x, want %s -> %s with 0x0005", WGName, v.outerSrc, v.outerDst, v.policy,
				WireGuardAddr(cells[0].Subnet), WireGuardAddr(cells[1].Subnet))
		}
		break
	}
	server.SetReadDeadline(time.Now().Add(ioTimeout))
	if n, err := server.Read(buf); err != nil || !bytes.Equal(buf[:n], []byte("marked")) {
		t.Errorf("container received %q, %v", buf[:n], err)
	}

	// Plain VXLAN from the underlay (here from cell1's namespace, with a
	// tag of its choosing) does not get in while encryption is on.
	if n := injectVXLAN(t, cells[0], cells[1], c, 7778); n != 0 {
		t.Errorf("a plain VXLAN packet from the underlay reached the container with encryption on (%d received)", n)
	}

	for _, cell := range cells {
		ops, err := cell.setOverlay(peers)
		if err != nil || len(ops) > 0 {
			t.Errorf("second Set with WireGuard in %s applied\n%s(err %v), want nothing", cell.NetNS, render(ops), err)
		}
	}

	// Off: plain VXLAN again, no device.
	for _, cell := range plain {
		if _, err := cell.dp.Set(context.Background(), Desired{Overlay: &Overlay{cell.Cell, peers}}); err != nil {
			t.Fatalf("Set without WireGuard in %s = %v", cell.NetNS, err)
		}
	}
	for i := 0; hasLink(t, cells[0].NetNS, WGName); i++ {
		if i == 100 {
			t.Fatalf("%s still there with encryption off", WGName)
		}
		time.Sleep(20 * time.Millisecond)
	}
	checkTCP(t, a, c, 8080)
	if n := injectVXLAN(t, plain[0], plain[1], c, 7779); n == 0 {
		t.Errorf("the crafted VXLAN packet does not reach the container with encryption off either: the guard check proves nothing")
	}
	if ports := underlayUDP(capture, 300*time.Millisecond); ports[DefaultPort] == 0 {
		t.Errorf("UDP on the underlay by destination port = %v with encryption off, want VXLAN's %d", ports, DefaultPort)
	}
}

// injectVXLAN sends, from a UDP socket in from's namespace, plain
// VXLAN-GBP packets to to's underlay address that carry a UDP datagram for
// dst:port, and reports how many dst received within a second.
func injectVXLAN(t *testing.T, from, to nsCell, dst Container, port int) int {
	t.Helper()
	server := listenUDP(t, dst.NetNS, dst.IP, port)
	var conn *net.UDPConn
	inNS(t, from.NetNS, func() (err error) { conn, err = net.ListenUDP("udp4", nil); return err })
	defer conn.Close()
	payload := []byte("injected")
	udp := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], uint16(port))
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	udp = append(udp, payload...)
	ip := make([]byte, 20)
	ip[0], ip[8], ip[9] = 0x45, 64, unix.IPPROTO_UDP
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
	src := from.Subnet.Addr().Next().Next().As4()
	dip := dst.IP.As4()
	copy(ip[12:], src[:])
	copy(ip[16:], dip[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	m := vtepMAC(vtepAddr(to.Subnet))
	frame := append(append(append([]byte{}, m[:]...), 0x02, 0, 0, 0, 0, 1, 0x08, 0x00), append(ip, udp...)...)
	vx := []byte{0x88, 0, 0x00, 0x05, 0, 0, DefaultVNI, 0}
	pkt := append(vx, frame...)
	for range 5 {
		if _, err := conn.WriteToUDPAddrPort(pkt, netip.AddrPortFrom(to.UnderlayIP, DefaultPort)); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	buf := make([]byte, 2048)
	server.SetReadDeadline(time.Now().Add(time.Second))
	for {
		if _, err := server.Read(buf); err != nil {
			return n
		}
		n++
	}
}
