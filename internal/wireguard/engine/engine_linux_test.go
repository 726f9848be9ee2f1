package engine

import (
	"fmt"
	"github.com/trellis-c2c/trellis/internal/wireguard"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
	"github.com/trellis-c2c/trellis/internal/netns"
	"github.com/vishvananda/netlink"
)

func TestMain(m *testing.M) { os.Exit(dataplanetest.Run(m)) }

// wgNode is a namespace of the test underlay with a WireGuard device.
type wgNode struct {
	c    dataplanetest.Cell
	key  wireguard.Key
	addr netip.Addr // on the device, in 10.99.0.0/24
	e    wireguard.Engine
}

func (n *wgNode) peer() wireguard.Peer {
	return wireguard.Peer{PublicKey: n.key.PublicKey(), Endpoint: netip.AddrPortFrom(n.c.IP, wireguard.DefaultPort),
		AllowedIPs: []netip.Prefix{netip.PrefixFrom(n.addr, 32)}}
}

func newNode(t *testing.T, c dataplanetest.Cell, i int) *wgNode {
	t.Helper()
	kf, err := wireguard.NewKey(1)
	if err != nil {
		t.Fatal(err)
	}
	n := &wgNode{c: c, key: kf.PrivateKey, addr: netip.AddrFrom4([4]byte{10, 99, 0, byte(i)})}
	n.e, err = Up(wireguard.Config{NetNS: c.NetNS, Name: "trellis-wg", PrivateKey: n.key, MTU: 1440, Kind: wireguard.KindUserspace})
	if err != nil {
		t.Fatalf("Up in %s: %v", c.Name, err)
	}
	t.Cleanup(func() { n.e.Close() })
	if n.e.Kind() != wireguard.KindUserspace || n.e.PublicKey() != n.key.PublicKey() {
		t.Fatalf("Up = %s engine with key %s, want userspace with %s", n.e.Kind(), n.e.PublicKey(), n.key.PublicKey())
	}
	h := dataplanetest.Handle(t, c.NetNS)
	l, err := h.LinkByName("trellis-wg")
	if err != nil {
		t.Fatalf("trellis-wg in %s: %v", c.Name, err)
	}
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: n.addr.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	return n
}

// listenUDP opens a UDP socket in the namespace at ns.
func listenUDP(t *testing.T, ns string, addr string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	err := netns.Do(ns, func() (err error) {
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// echo answers every datagram on c with itself, until c closes.
func echo(c *net.UDPConn) {
	buf := make([]byte, 2048)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		c.WriteToUDPAddrPort(buf[:n], from)
	}
}

// ping sends msg from c to dst and reports whether it came back within d.
func ping(c *net.UDPConn, dst netip.AddrPort, msg string, d time.Duration) bool {
	if _, err := c.WriteToUDPAddrPort([]byte(msg), dst); err != nil {
		return false
	}
	buf := make([]byte, 2048)
	deadline := time.Now().Add(d)
	for {
		c.SetReadDeadline(deadline)
		n, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return false
		}
		if string(buf[:n]) == msg {
			return true
		}
	}
}

// TestUserspaceEngine: two cells' userspace devices pass traffic; a third
// namespace with a device of its own key gets nothing in; peers replaced
// live keep an established session's traffic flowing; the device survives
// an adopting Up and goes with Close.
func TestUserspaceEngine(t *testing.T) {
	u := dataplanetest.NewUnderlay(t, 3)
	a, b, x := newNode(t, u.Cells[0], 1), newNode(t, u.Cells[1], 2), newNode(t, u.Cells[2], 3)
	if err := a.e.SetPeers([]wireguard.Peer{b.peer()}); err != nil {
		t.Fatalf("SetPeers = %v", err)
	}
	if err := b.e.SetPeers([]wireguard.Peer{a.peer()}); err != nil {
		t.Fatalf("SetPeers = %v", err)
	}
	srv := listenUDP(t, b.c.NetNS, "0.0.0.0:7000")
	go echo(srv)
	dst := netip.AddrPortFrom(b.addr, 7000)
	cli := listenUDP(t, a.c.NetNS, "0.0.0.0:0")
	ok := false
	for i := 0; i < 50 && !ok; i++ { // the first packets wait for the handshake
		ok = ping(cli, dst, fmt.Sprint("hello ", i), 200*time.Millisecond)
	}
	if !ok {
		t.Fatalf("no echo from %s through WireGuard", dst)
	}

	t.Run("UnknownKeyDropped", func(t *testing.T) {
		// x knows b and claims a's inner address; b does not know x's key.
		xp := x.e
		if err := xp.SetPeers([]wireguard.Peer{{PublicKey: b.key.PublicKey(), Endpoint: netip.AddrPortFrom(b.c.IP, wireguard.DefaultPort),
			AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.99.0.0/24")}}}); err != nil {
			t.Fatal(err)
		}
		sink := listenUDP(t, b.c.NetNS, "0.0.0.0:7001")
		var got atomic.Int64
		go func() {
			buf := make([]byte, 2048)
			for {
				if _, _, err := sink.ReadFromUDPAddrPort(buf); err != nil {
					return
				}
				got.Add(1)
			}
		}()
		xc := listenUDP(t, x.c.NetNS, "0.0.0.0:0")
		// Handshakes are retried every 5 s: 6 s of sending covers two.
		for end := time.Now().Add(6 * time.Second); time.Now().Before(end); {
			xc.WriteToUDPAddrPort([]byte("intruder"), netip.AddrPortFrom(b.addr, 7001))
			time.Sleep(50 * time.Millisecond)
		}
		if n := got.Load(); n != 0 {
			t.Fatalf("a device with an unknown key got %d datagrams into the cell, want 0", n)
		}
		// The known peer's datagrams reach the same socket: the sink works.
		ac := listenUDP(t, a.c.NetNS, "0.0.0.0:0")
		for i := 0; got.Load() == 0; i++ {
			if i == 100 {
				t.Fatal("the known peer's datagrams do not reach the sink either: the test proves nothing")
			}
			ac.WriteToUDPAddrPort([]byte("friend"), netip.AddrPortFrom(b.addr, 7001))
			time.Sleep(20 * time.Millisecond)
		}
	})

	t.Run("PeersReplacedLive", func(t *testing.T) {
		// Pings from a to b while a's peer set changes around b: every one
		// answered on the session established before, no loss.
		var lost atomic.Int64
		stop := make(chan struct{})
		done := make(chan int)
		go func() {
			n := 0
			for {
				select {
				case <-stop:
					done <- n
					return
				default:
				}
				if !ping(cli, dst, fmt.Sprint("live ", n), time.Second) {
					lost.Add(1)
				}
				n++
			}
		}()
		sets := [][]wireguard.Peer{
			{b.peer(), x.peer()},
			{x.peer(), b.peer()},
			{b.peer()},
			{b.peer(), {PublicKey: x.key.PublicKey(), Endpoint: netip.AddrPortFrom(x.c.IP, 51999), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.99.0.3/32")}}},
			{b.peer()},
		}
		for _, s := range sets {
			if err := a.e.SetPeers(s); err != nil {
				t.Fatalf("SetPeers = %v", err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		close(stop)
		n := <-done
		if l := lost.Load(); l != 0 || n == 0 {
			t.Fatalf("%d of %d pings lost while peers changed, want 0 of >0", l, n)
		}
	})

	t.Run("ReattachAfterProcessExit", func(t *testing.T) {
		// A process that exits closes its TUN without deleting it: the
		// persistent device stays, and the next process attaches to it.
		h := dataplanetest.Handle(t, a.c.NetNS)
		before, err := h.LinkByName("trellis-wg")
		if err != nil {
			t.Fatal(err)
		}
		ua := a.e.(*userEngine)
		runningMu.Lock()
		delete(running, ua.id)
		runningMu.Unlock()
		ua.dev.Close()
		after, err := h.LinkByName("trellis-wg")
		if err != nil || after.Attrs().Index != before.Attrs().Index {
			t.Fatalf("trellis-wg after its process closed it: %v, want it kept", err)
		}
		e, err := Up(wireguard.Config{NetNS: a.c.NetNS, Name: "trellis-wg", PrivateKey: a.key, Kind: wireguard.KindUserspace})
		if err != nil {
			t.Fatal(err)
		}
		a.e = e
		again, err := h.LinkByName("trellis-wg")
		if err != nil || again.Attrs().Index != before.Attrs().Index {
			t.Fatalf("trellis-wg after a new Up: %v, want the same device attached", err)
		}
		if err := e.SetPeers([]wireguard.Peer{b.peer()}); err != nil {
			t.Fatal(err)
		}
		ok := false
		for i := 0; i < 50 && !ok; i++ {
			ok = ping(cli, dst, fmt.Sprint("reattached ", i), 200*time.Millisecond)
		}
		if !ok {
			t.Fatal("no echo through the reattached device")
		}
	})

	t.Run("AdoptAndClose", func(t *testing.T) {
		e, err := Up(wireguard.Config{NetNS: a.c.NetNS, Name: "trellis-wg", PrivateKey: a.key})
		if err != nil {
			t.Fatal(err)
		}
		if e != a.e {
			t.Fatalf("Up for a running device made a new engine, want the running one adopted")
		}
		if !ping(cli, dst, "adopted", 2*time.Second) {
			t.Fatalf("no echo after adoption")
		}
		if err := b.e.Close(); err != nil {
			t.Fatal(err)
		}
		h := dataplanetest.Handle(t, b.c.NetNS)
		for i := 0; ; i++ {
			if _, err := h.LinkByName("trellis-wg"); err != nil {
				break
			}
			if i == 100 {
				t.Fatal("trellis-wg still there after Close")
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

func TestKeyFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "wireguard.key")
	kf, err := wireguard.LoadOrCreateKey(p)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode = %v (%v), want 0600", st.Mode().Perm(), err)
	}
	again, err := wireguard.LoadOrCreateKey(p)
	if err != nil || again != kf {
		t.Fatalf("wireguard.LoadOrCreateKey again = %v, %v; want the same key", again.PrivateKey.PublicKey(), err)
	}
	next, _ := wireguard.NewKey(3)
	if err := wireguard.SaveKey(p, next); err != nil {
		t.Fatal(err)
	}
	if got, err := wireguard.LoadOrCreateKey(p); err != nil || got != next {
		t.Fatalf("after SaveKey: %v %v, want generation 3", got.Generation, err)
	}
	os.WriteFile(p, []byte(`{"private_key":"junk"}`), 0o600)
	if _, err := wireguard.LoadOrCreateKey(p); err == nil {
		t.Fatal("a junk key file loaded")
	}
}

func TestPeerConfig(t *testing.T) {
	k := func() wireguard.Key { kf, _ := wireguard.NewKey(0); return kf.PrivateKey.PublicKey() }
	p1 := wireguard.Peer{PublicKey: k(), Endpoint: netip.MustParseAddrPort("198.51.100.11:51820"), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.255.1.1/32")}}
	p2 := wireguard.Peer{PublicKey: k(), Endpoint: netip.MustParseAddrPort("198.51.100.12:51820"), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.255.2.1/32")}}
	moved := p2
	moved.Endpoint = netip.MustParseAddrPort("198.51.100.13:51820")
	for _, tc := range []struct {
		name        string
		have        []wireguard.Peer
		want        []wireguard.Peer
		set, remove int
	}{
		{"new", nil, []wireguard.Peer{p1, p2}, 2, 0},
		{"same", []wireguard.Peer{p1, p2}, []wireguard.Peer{p2, p1}, 0, 0},
		{"gone", []wireguard.Peer{p1, p2}, []wireguard.Peer{p1}, 0, 1},
		{"moved", []wireguard.Peer{p1, p2}, []wireguard.Peer{p1, moved}, 1, 0},
	} {
		pcs, err := peerConfig(peerMap(tc.have), tc.want)
		if err != nil {
			t.Fatal(err)
		}
		set, remove := 0, 0
		for _, pc := range pcs {
			if pc.Remove {
				remove++
			} else {
				set++
			}
		}
		if set != tc.set || remove != tc.remove {
			t.Errorf("%s: peerConfig sets %d and removes %d, want %d and %d", tc.name, set, remove, tc.set, tc.remove)
		}
	}
	if _, err := peerConfig(nil, []wireguard.Peer{p1, p1}); err == nil {
		t.Error("peerConfig with a peer twice = nil error")
	}
}
