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
	if ports := underlayUDP(capture, 300*time.Millisecond); ports[DefaultPort] == 0 {
		t.Errorf("UDP on the underlay by destination port = %v with encryption off, want VXLAN's %d", ports, DefaultPort)
	}
}
