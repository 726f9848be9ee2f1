// Package dataplanetest builds throwaway topologies for tests that program
// the real kernel: an underlay bridge in its own network namespace and cells
// (namespaces) attached to it by veths. Every namespace is named with a
// per-process random Prefix and deleted when the test ends, also when it
// fails, so tests can run on a shared machine, side by side, without touching
// its root namespace. Every package whose tests need root or make
// namespaces takes them from here: RequireRoot, Namespace, Handle,
// NFTables, Links, and Run for its TestMain.
package dataplanetest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/trellis-c2c/trellis/internal/netns"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
)

// Prefix starts the name of every namespace this process creates:
// "trtest-" and six random hex digits.
var Prefix = func() string {
	b := make([]byte, 3)
	rand.Read(b)
	return "trtest-" + hex.EncodeToString(b) + "-"
}()

// RequireRoot skips the test unless it runs as root. With CI=true it fails
// instead, so that a CI job without privileges cannot pass by skipping.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test programs the kernel and needs root (CI=true)")
	}
	t.Skip("this test programs the kernel and needs root")
}

// Run runs the tests of m and returns the exit code for TestMain to exit
// with: m.Run's, or 1 when a namespace carrying Prefix is still in
// /run/netns afterwards (listed on stderr). A package whose tests make
// namespaces calls it as
//
//	func TestMain(m *testing.M) { os.Exit(dataplanetest.Run(m)) }
func Run(m *testing.M) int {
	code := m.Run()
	if left := Leftovers(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "network namespaces left behind: %v\n", left)
		code = 1
	}
	return code
}

// Leftovers lists namespaces in /run/netns that carry Prefix. Run calls it
// after the tests ran: anything listed was not cleaned up.
func Leftovers() []string {
	entries, _ := os.ReadDir(netns.Dir)
	var left []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), Prefix) {
			left = append(left, e.Name())
		}
	}
	return left
}

// Namespace creates the network namespace Prefix+name, with lo up, deletes
// it when the test ends, and returns its path.
func Namespace(t testing.TB, name string) string {
	t.Helper()
	full := Prefix + name
	path, err := netns.Create(full)
	if err != nil {
		t.Fatalf("netns.Create(%q) = %v", full, err)
	}
	t.Cleanup(func() {
		if err := netns.Delete(full); err != nil {
			t.Errorf("netns.Delete(%q) = %v", full, err)
		}
	})
	return path
}

// Handle returns a netlink handle in the namespace at path, closed when the
// test ends.
func Handle(t testing.TB, path string) *netlink.Handle {
	t.Helper()
	h, err := netns.Handle(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// NFTables returns an nftables connection whose netlink sockets open in the
// namespace at path; the namespace file it uses stays open until the test
// ends.
func NFTables(t testing.TB, path string) *nftables.Conn {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		t.Fatalf("nftables in %s: %v", path, err)
	}
	return c
}

// Links returns the names of the links in the namespace at path, sorted.
func Links(t testing.TB, path string) []string {
	t.Helper()
	h, err := netns.Handle(path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ls, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range ls {
		names = append(names, l.Attrs().Name)
	}
	slices.Sort(names)
	return names
}

// Underlay is a private layer-2 network: a bridge in its own namespace and
// cells attached to it.
type Underlay struct {
	NetNS  string // path of the underlay namespace
	Bridge string // the bridge in it
	Cells  []Cell
}

// Cell is a namespace attached to the underlay.
type Cell struct {
	Name   string     // "cell1", "cell2", ...
	NetNS  string     // path of its namespace
	Device string     // its underlay device, "eth0"
	IP     netip.Addr // 198.51.100.(10+i) for cell i
	Port   string     // the bridge port of its veth in the underlay namespace
}

// UnderlayPrefix is the documentation network the underlay uses.
var UnderlayPrefix = netip.MustParsePrefix("198.51.100.0/24")

// NewUnderlay makes an underlay namespace with bridge br0 and n cell
// namespaces cell1..cellN. Cell i has eth0 with 198.51.100.(10+i)/24 and
// MTU 1500, a veth whose other end "cellI" is a port of br0. Everything is
// removed when the test ends.
func NewUnderlay(t testing.TB, n int) *Underlay {
	t.Helper()
	RequireRoot(t)
	u := &Underlay{NetNS: Namespace(t, "underlay"), Bridge: "br0"}
	uh := Handle(t, u.NetNS)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: u.Bridge, MTU: 1500}}
	if err := uh.LinkAdd(br); err != nil {
		t.Fatalf("add bridge in %s: %v", u.NetNS, err)
	}
	if err := uh.LinkSetUp(br); err != nil {
		t.Fatalf("set bridge up in %s: %v", u.NetNS, err)
	}
	for i := 1; i <= n; i++ {
		c := Cell{
			Name:   fmt.Sprintf("cell%d", i),
			Device: "eth0",
			IP:     netip.AddrFrom4([4]byte{198, 51, 100, byte(10 + i)}),
		}
		c.Port = c.Name
		c.NetNS = Namespace(t, c.Name)
		if err := attach(uh, br, c); err != nil {
			t.Fatalf("attach %s to the underlay: %v", c.Name, err)
		}
		u.Cells = append(u.Cells, c)
	}
	return u
}

func attach(uh *netlink.Handle, br *netlink.Bridge, c Cell) error {
	fd, err := vnetns.GetFromPath(c.NetNS)
	if err != nil {
		return err
	}
	defer fd.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: c.Port, MTU: 1500, MasterIndex: br.Attrs().Index},
		PeerName:      c.Device,
		PeerMTU:       1500,
		PeerNamespace: netlink.NsFd(fd),
	}
	if err := uh.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s: %w", c.Port, err)
	}
	if err := uh.LinkSetUp(veth); err != nil {
		return fmt.Errorf("set %s up: %w", c.Port, err)
	}
	ch, err := netns.Handle(c.NetNS)
	if err != nil {
		return err
	}
	defer ch.Close()
	dev, err := ch.LinkByName(c.Device)
	if err != nil {
		return err
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: c.IP.AsSlice(), Mask: net.CIDRMask(UnderlayPrefix.Bits(), 32)}}
	if err := ch.AddrAdd(dev, a); err != nil {
		return fmt.Errorf("add %s to %s: %w", c.IP, c.Device, err)
	}
	if err := ch.LinkSetUp(dev); err != nil {
		return fmt.Errorf("set %s up: %w", c.Device, err)
	}
	return nil
}

// Outside is a host outside the overlay: a namespace on the underlay
// bridge at RouterIP that also holds IP (from the documentation range
// 203.0.113.0/24), routed to from every cell through RouterIP.
type Outside struct {
	NetNS    string
	IP       netip.Addr
	RouterIP netip.Addr
}

// OutsidePrefix is the network outside hosts live in.
var OutsidePrefix = netip.MustParsePrefix("203.0.113.0/24")

// AddOutside makes the outside namespace of u, attached to its bridge at
// 198.51.100.254 and holding 203.0.113.10, and gives every cell of u a
// route to 203.0.113.0/24 through it. Everything goes with the test.
func (u *Underlay) AddOutside(t testing.TB) Outside {
	t.Helper()
	o := Outside{NetNS: Namespace(t, "outside"), IP: netip.MustParseAddr("203.0.113.10"), RouterIP: netip.MustParseAddr("198.51.100.254")}
	uh := Handle(t, u.NetNS)
	br, err := uh.LinkByName(u.Bridge)
	if err != nil {
		t.Fatalf("bridge %s: %v", u.Bridge, err)
	}
	c := Cell{Name: "outside", Device: "eth0", IP: o.RouterIP, Port: "outside", NetNS: o.NetNS}
	if err := attach(uh, br.(*netlink.Bridge), c); err != nil {
		t.Fatalf("attach the outside host: %v", err)
	}
	oh := Handle(t, o.NetNS)
	lo, err := oh.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := oh.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: o.IP.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatalf("add %s to the outside host: %v", o.IP, err)
	}
	for _, cell := range u.Cells {
		ch := Handle(t, cell.NetNS)
		dev, err := ch.LinkByName(cell.Device)
		if err != nil {
			t.Fatal(err)
		}
		r := &netlink.Route{LinkIndex: dev.Attrs().Index, Dst: &net.IPNet{IP: OutsidePrefix.Addr().AsSlice(), Mask: net.CIDRMask(OutsidePrefix.Bits(), 32)},
			Gw: o.RouterIP.AsSlice()}
		if err := ch.RouteAdd(r); err != nil {
			t.Fatalf("route to %s in %s: %v", OutsidePrefix, cell.NetNS, err)
		}
	}
	return o
}
