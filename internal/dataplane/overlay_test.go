package dataplane

import (
	"cmp"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	gocmp "github.com/google/go-cmp/cmp"
)

var (
	pfx  = netip.MustParsePrefix
	addr = netip.MustParseAddr
)

var testCell = Cell{
	UnderlayDevice: "eth0",
	UnderlayIP:     addr("198.51.100.11"),
	Subnet:         pfx("10.255.1.0/24"),
	Overlay:        pfx("10.255.0.0/16"),
}

var (
	peer2 = Peer{UnderlayIP: addr("198.51.100.12"), Subnet: pfx("10.255.2.0/24")}
	peer3 = Peer{UnderlayIP: addr("198.51.100.13"), Subnet: pfx("10.255.3.0/24")}
)

func mustWant(t *testing.T, c Cell, peers ...Peer) overlayState {
	t.Helper()
	s, err := desiredOverlay(c, peers, 1500)
	if err != nil {
		t.Fatalf("desiredOverlay(%+v, %v) = %v", c, peers, err)
	}
	return s
}

func render(ops []op) string {
	var b strings.Builder
	for _, o := range ops {
		b.WriteString(o.String())
		b.WriteByte('\n')
	}
	return b.String()
}

// clone deep-copies s so that a test can change it freely.
func clone(s overlayState) overlayState {
	c := s
	if s.VTEP != nil {
		v := *s.VTEP
		v.Addrs = slices.Clone(v.Addrs)
		c.VTEP = &v
	}
	c.Routes = maps.Clone(s.Routes)
	c.Neighs = maps.Clone(s.Neighs)
	c.FDB = map[mac]fdbState{}
	for m, e := range s.FDB {
		c.FDB[m] = fdbState{Dsts: slices.Clone(e.Dsts), Permanent: e.Permanent}
	}
	return c
}

func TestPlanOverlayGolden(t *testing.T) {
	want := mustWant(t, testCell, peer2, peer3)
	m2 := vtepMAC(addr("10.255.2.0"))
	m3 := vtepMAC(addr("10.255.3.0"))
	tests := []struct {
		name   string
		have   func() overlayState
		want   overlayState
		golden string
	}{
		{
			name: "from nothing",
			have: func() overlayState { return overlayState{} },
			want: want,
			golden: `
sysctl -w net.ipv4.ip_forward=1
ip link add trellis-vtep address ee:ee:0a:ff:01:00 mtu 1450 group 0x74720002 type vxlan id 1 local 198.51.100.11 dev eth0 dstport 4789 gbp nolearning
ip addr add 10.255.1.0/16 dev trellis-vtep scope link
ip link set trellis-vtep up
bridge fdb add ee:ee:0a:ff:02:00 dev trellis-vtep dst 198.51.100.12 self permanent
bridge fdb add ee:ee:0a:ff:03:00 dev trellis-vtep dst 198.51.100.13 self permanent
ip neigh replace 10.255.2.0 lladdr ee:ee:0a:ff:02:00 dev trellis-vtep nud permanent
ip neigh replace 10.255.3.0 lladdr ee:ee:0a:ff:03:00 dev trellis-vtep nud permanent
ip route replace 10.255.2.0/24 via 10.255.2.0 dev trellis-vtep src 10.255.1.0 onlink
ip route replace 10.255.3.0/24 via 10.255.3.0 dev trellis-vtep src 10.255.1.0 onlink
`,
		},
		{
			name:   "converged",
			have:   func() overlayState { return clone(want) },
			want:   want,
			golden: "",
		},
		{
			name: "peer left",
			have: func() overlayState { return clone(want) },
			want: mustWant(t, testCell, peer2),
			golden: `
ip route del 10.255.3.0/24 dev trellis-vtep
ip neigh del 10.255.3.0 dev trellis-vtep
bridge fdb del ee:ee:0a:ff:03:00 dev trellis-vtep dst 198.51.100.13 self
`,
		},
		{
			name: "all peers left, own lease in the list",
			have: func() overlayState { return clone(want) },
			want: mustWant(t, testCell, Peer{UnderlayIP: testCell.UnderlayIP, Subnet: testCell.Subnet}),
			golden: `
ip route del 10.255.2.0/24 dev trellis-vtep
ip route del 10.255.3.0/24 dev trellis-vtep
ip neigh del 10.255.2.0 dev trellis-vtep
ip neigh del 10.255.3.0 dev trellis-vtep
bridge fdb del ee:ee:0a:ff:02:00 dev trellis-vtep dst 198.51.100.12 self
bridge fdb del ee:ee:0a:ff:03:00 dev trellis-vtep dst 198.51.100.13 self
`,
		},
		{
			name: "peer moved to another underlay address",
			have: func() overlayState { return clone(want) },
			want: mustWant(t, testCell, peer2, Peer{UnderlayIP: addr("198.51.100.99"), Subnet: peer3.Subnet}),
			golden: `
bridge fdb replace ee:ee:0a:ff:03:00 dev trellis-vtep dst 198.51.100.99 self permanent
`,
		},
		{
			name: "kernel noise: extra remote, stale dynamic entries, lost onlink",
			have: func() overlayState {
				s := clone(want)
				s.FDB[m2] = fdbState{Dsts: []netip.Addr{addr("198.51.100.50"), addr("198.51.100.12")}, Permanent: true}
				s.Neighs[addr("10.255.9.0")] = neighState{IP: addr("10.255.9.0")}          // incomplete: left to age out
				s.Neighs[addr("10.255.3.0")] = neighState{IP: addr("10.255.3.0"), MAC: m3} // reachable, not permanent
				r := s.Routes[peer2.Subnet]
				r.OnLink = false
				s.Routes[peer2.Subnet] = r
				return s
			},
			want: want,
			golden: `
bridge fdb del ee:ee:0a:ff:02:00 dev trellis-vtep dst 198.51.100.50 self
ip neigh replace 10.255.3.0 lladdr ee:ee:0a:ff:03:00 dev trellis-vtep nud permanent
ip route replace 10.255.2.0/24 via 10.255.2.0 dev trellis-vtep src 10.255.1.0 onlink
`,
		},
		{
			name: "mtu, stray address, link down (which flushed routes and neighbours)",
			have: func() overlayState {
				s := clone(want)
				s.VTEP.MTU = 1400
				s.VTEP.Up = false
				s.VTEP.Addrs = append(s.VTEP.Addrs, pfx("10.255.7.0/16"))
				s.Routes = map[netip.Prefix]routeState{}
				s.Neighs = map[netip.Addr]neighState{}
				return s
			},
			want: want,
			golden: `
ip link set trellis-vtep mtu 1450
ip addr del 10.255.7.0/16 dev trellis-vtep
ip link set trellis-vtep up
ip neigh replace 10.255.2.0 lladdr ee:ee:0a:ff:02:00 dev trellis-vtep nud permanent
ip neigh replace 10.255.3.0 lladdr ee:ee:0a:ff:03:00 dev trellis-vtep nud permanent
ip route replace 10.255.2.0/24 via 10.255.2.0 dev trellis-vtep src 10.255.1.0 onlink
ip route replace 10.255.3.0/24 via 10.255.3.0 dev trellis-vtep src 10.255.1.0 onlink
`,
		},
		{
			name: "VTEP without GBP is recreated",
			have: func() overlayState {
				s := clone(want)
				s.VTEP.GBP = false
				return s
			},
			want: mustWant(t, testCell, peer2),
			golden: `
ip link del trellis-vtep
ip link add trellis-vtep address ee:ee:0a:ff:01:00 mtu 1450 group 0x74720002 type vxlan id 1 local 198.51.100.11 dev eth0 dstport 4789 gbp nolearning
ip addr add 10.255.1.0/16 dev trellis-vtep scope link
ip link set trellis-vtep up
bridge fdb add ee:ee:0a:ff:02:00 dev trellis-vtep dst 198.51.100.12 self permanent
ip neigh replace 10.255.2.0 lladdr ee:ee:0a:ff:02:00 dev trellis-vtep nud permanent
ip route replace 10.255.2.0/24 via 10.255.2.0 dev trellis-vtep src 10.255.1.0 onlink
`,
		},
		{
			name: "new lease, VNI and port",
			have: func() overlayState { return clone(want) },
			want: func() overlayState {
				c := testCell
				c.Subnet, c.VNI, c.Port, c.MTU = pfx("10.255.4.0/24"), 42, 8472, 9000
				s, err := desiredOverlay(c, []Peer{peer2}, 9000)
				if err != nil {
					t.Fatal(err)
				}
				return s
			}(),
			golden: `
ip link del trellis-vtep
ip link add trellis-vtep address ee:ee:0a:ff:04:00 mtu 8950 group 0x74720002 type vxlan id 42 local 198.51.100.11 dev eth0 dstport 8472 gbp nolearning
ip addr add 10.255.4.0/16 dev trellis-vtep scope link
ip link set trellis-vtep up
bridge fdb add ee:ee:0a:ff:02:00 dev trellis-vtep dst 198.51.100.12 self permanent
ip neigh replace 10.255.2.0 lladdr ee:ee:0a:ff:02:00 dev trellis-vtep nud permanent
ip route replace 10.255.2.0/24 via 10.255.2.0 dev trellis-vtep src 10.255.4.0 onlink
`,
		},
		{
			name:   "teardown",
			have:   func() overlayState { return clone(want) },
			want:   overlayState{Forwarding: true},
			golden: "ip link del trellis-vtep\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			have := tt.have()
			got := render(planOverlay(have, tt.want))
			if want := strings.TrimPrefix(tt.golden, "\n"); got != want {
				t.Errorf("planOverlay() =\n%s\nwant:\n%s\ndiff (-want +got):\n%s", got, want, gocmp.Diff(want, got))
			}
			next := applyFake(t, have, planOverlay(have, tt.want))
			if again := planOverlay(next, tt.want); len(again) > 0 {
				t.Errorf("after applying the plan, planOverlay() =\n%s\nwant nothing", render(again))
			}
		})
	}
}

func TestDesiredOverlayRejects(t *testing.T) {
	tests := []struct {
		name  string
		cell  func(c *Cell)
		peers []Peer
		want  string
	}{
		{"no device", func(c *Cell) { c.UnderlayDevice = "" }, nil, "underlay device is empty"},
		{"IPv6 underlay", func(c *Cell) { c.UnderlayIP = addr("2001:db8::1") }, nil, "not an IPv4 address"},
		{"subnet not masked", func(c *Cell) { c.Subnet = pfx("10.255.1.7/24") }, nil, "not an IPv4 network address"},
		{"subnet outside overlay", func(c *Cell) { c.Subnet = pfx("10.254.1.0/24") }, nil, "not a subnet of overlay"},
		{"VNI too big", func(c *Cell) { c.VNI = 1 << 24 }, nil, "VNI"},
		{"MTU too small", func(c *Cell) { c.MTU = 100 }, nil, "below the IPv4 minimum"},
		{"peer outside overlay", nil, []Peer{{UnderlayIP: addr("198.51.100.12"), Subnet: pfx("10.1.2.0/24")}}, "not a subnet of overlay"},
		{"peer overlaps cell", nil, []Peer{{UnderlayIP: addr("198.51.100.12"), Subnet: pfx("10.255.1.0/24")}}, "overlaps this cell"},
		{"peers overlap", nil, []Peer{peer2, {UnderlayIP: addr("198.51.100.13"), Subnet: pfx("10.255.2.0/25")}}, "overlaps another peer"},
		{"peer without underlay", nil, []Peer{{Subnet: pfx("10.255.2.0/24")}}, "underlay IP is not an IPv4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := testCell
			if tt.cell != nil {
				tt.cell(&c)
			}
			_, err := desiredOverlay(c, tt.peers, cmp.Or(c.MTU, 1500))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("desiredOverlay() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// applyFake applies ops to a copy of s the way the kernel would, failing
// the test on an op the kernel would refuse.
func applyFake(t *testing.T, s overlayState, ops []op) overlayState {
	t.Helper()
	s = clone(s)
	if s.Routes == nil {
		s.Routes, s.Neighs, s.FDB = map[netip.Prefix]routeState{}, map[netip.Addr]neighState{}, map[mac]fdbState{}
	}
	fail := func(o op, why string) { t.Fatalf("kernel would refuse %q: %s", o, why) }
	needUp := func(o op) {
		if s.VTEP == nil || !s.VTEP.Up {
			fail(o, "no VTEP, or it is down")
		}
	}
	for _, o := range ops {
		switch o := o.(type) {
		case sysctlSet:
			s.Forwarding = o.Value == "1"
		case vtepAdd:
			if s.VTEP != nil {
				fail(o, "exists")
			}
			v := o.VTEP
			v.Up, v.Addrs = false, nil
			s.VTEP = &v
		case linkDel:
			if s.VTEP == nil {
				fail(o, "no such device")
			}
			s = overlayState{Forwarding: s.Forwarding, Routes: map[netip.Prefix]routeState{}, Neighs: map[netip.Addr]neighState{}, FDB: map[mac]fdbState{}}
		case linkSetMTU:
			s.VTEP.MTU = o.MTU
		case linkSetUp:
			s.VTEP.Up = true
		case addrAdd:
			if slices.Contains(s.VTEP.Addrs, o.Local) {
				fail(o, "exists")
			}
			s.VTEP.Addrs = append(s.VTEP.Addrs, o.Local)
			slices.SortFunc(s.VTEP.Addrs, netip.Prefix.Compare)
		case addrDel:
			i := slices.Index(s.VTEP.Addrs, o.Local)
			if i < 0 {
				fail(o, "no such address")
			}
			s.VTEP.Addrs = slices.Delete(s.VTEP.Addrs, i, i+1)
		case routeReplace:
			needUp(o)
			if !slices.ContainsFunc(s.VTEP.Addrs, func(p netip.Prefix) bool { return p.Addr() == o.Route.Src }) {
				fail(o, "src is not a local address")
			}
			s.Routes[o.Route.Dst] = o.Route
		case routeDel:
			if _, ok := s.Routes[o.Dst]; !ok {
				fail(o, "no such route")
			}
			delete(s.Routes, o.Dst)
		case neighReplace:
			needUp(o)
			s.Neighs[o.IP] = neighState{IP: o.IP, MAC: o.MAC, Permanent: true}
		case neighDel:
			if _, ok := s.Neighs[o.IP]; !ok {
				fail(o, "no such entry")
			}
			delete(s.Neighs, o.IP)
		case fdbAdd:
			e, ok := s.FDB[o.MAC]
			switch {
			case !o.Replace && ok:
				fail(o, "exists")
			case !ok:
				e = fdbState{Dsts: []netip.Addr{o.Dst}}
			case !slices.Contains(e.Dsts, o.Dst):
				e.Dsts[0] = o.Dst
			}
			e.Permanent = true
			s.FDB[o.MAC] = e
		case fdbDel:
			e := s.FDB[o.MAC]
			i := slices.Index(e.Dsts, o.Dst)
			if i < 0 {
				fail(o, "no such entry")
			}
			e.Dsts = slices.Delete(e.Dsts, i, i+1)
			if len(e.Dsts) == 0 {
				delete(s.FDB, o.MAC)
			} else {
				s.FDB[o.MAC] = e
			}
		default:
			fail(o, fmt.Sprintf("op %T is not an overlay op", o))
		}
	}
	return s
}

// disturb changes s the way other actors (the kernel, an operator) might.
func disturb(r *rand.Rand, s overlayState) overlayState {
	s = clone(s)
	if s.VTEP == nil {
		return s
	}
	switch r.IntN(8) {
	case 0: // link taken down: routes and neighbours are flushed, dynamic FDB entries too
		s.VTEP.Up = false
		s.Routes, s.Neighs = map[netip.Prefix]routeState{}, map[netip.Addr]neighState{}
		for m, e := range s.FDB {
			if !e.Permanent {
				delete(s.FDB, m)
			}
		}
	case 1:
		s.VTEP.MTU = 1300 + r.IntN(100)
	case 2:
		ip := netip.AddrFrom4([4]byte{10, 255, byte(r.IntN(8)), 0})
		s.Neighs[ip] = neighState{IP: ip, Permanent: r.IntN(2) == 0, MAC: vtepMAC(ip)}
	case 3:
		m := vtepMAC(netip.AddrFrom4([4]byte{10, 255, byte(r.IntN(8)), 0}))
		e := s.FDB[m]
		e.Dsts = append(slices.Clone(e.Dsts), netip.AddrFrom4([4]byte{198, 51, 100, byte(50 + r.IntN(4))}))
		e.Dsts = slices.Compact(e.Dsts)
		e.Permanent = r.IntN(2) == 0
		s.FDB[m] = e
	case 4:
		for dst, rt := range s.Routes {
			rt.OnLink = false
			s.Routes[dst] = rt
			break
		}
	case 5:
		s.Forwarding = false
	case 6:
		s.VTEP.Learning = true
	}
	return s
}

// TestPlanOverlayConverges walks random sequences of desired states, with
// random disturbances in between, and checks that every plan, applied,
// reaches its target and that a second plan is empty.
func TestPlanOverlayConverges(t *testing.T) {
	var pool []Peer
	for i := 2; i < 8; i++ {
		pool = append(pool, Peer{UnderlayIP: netip.AddrFrom4([4]byte{198, 51, 100, byte(10 + i)}), Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 255, byte(i), 0}), 24)})
	}
	for seed := range uint64(200) {
		r := rand.New(rand.NewPCG(seed, 1))
		var have overlayState
		for step := range 12 {
			c := testCell
			if r.IntN(10) == 0 {
				c.VNI = 1 + r.IntN(3)
			}
			if r.IntN(10) == 0 {
				c.Subnet = pfx("10.255.1.0/25")
			}
			var peers []Peer
			for _, p := range pool {
				if r.IntN(2) == 0 {
					if r.IntN(5) == 0 {
						p.UnderlayIP = netip.AddrFrom4([4]byte{198, 51, 100, byte(100 + r.IntN(3))})
					}
					peers = append(peers, p)
				}
			}
			r.Shuffle(len(peers), func(i, j int) { peers[i], peers[j] = peers[j], peers[i] })
			want, err := desiredOverlay(c, peers, 1400+r.IntN(3)*50)
			if err != nil {
				t.Fatal(err)
			}
			if step == 11 && r.IntN(2) == 0 {
				want = overlayState{Forwarding: true} // teardown
			}
			have = disturb(r, have)
			ops := planOverlay(have, want)
			next := applyFake(t, have, ops)
			if again := planOverlay(next, want); len(again) > 0 {
				t.Fatalf("seed %d step %d: plan\n%s\nleft\n%s", seed, step, render(ops), render(again))
			}
			if diff := gocmp.Diff(permanentOnly(want), permanentOnly(next), gocmp.Comparer(func(a, b netip.Addr) bool { return a == b }), gocmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
				t.Fatalf("seed %d step %d: after plan\n%s\nstate differs (-want +got):\n%s", seed, step, render(ops), diff)
			}
			have = next
		}
	}
}

// permanentOnly drops what the planner deliberately leaves alone.
func permanentOnly(s overlayState) overlayState {
	s = clone(s)
	if s.VTEP == nil {
		return overlayState{Forwarding: s.Forwarding}
	}
	maps.DeleteFunc(s.Neighs, func(_ netip.Addr, n neighState) bool { return !n.Permanent })
	return s
}

func TestVTEPNames(t *testing.T) {
	if got, want := vtepMAC(addr("10.255.34.0")).String(), "ee:ee:0a:ff:22:00"; got != want {
		t.Errorf("vtepMAC(10.255.34.0) = %s, want %s", got, want)
	}
	if got, want := vtepAddr(pfx("10.255.34.0/24")), addr("10.255.34.0"); got != want {
		t.Errorf("vtepAddr(10.255.34.0/24) = %s, want %s", got, want)
	}
}
