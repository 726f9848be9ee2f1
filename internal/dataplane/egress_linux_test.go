package dataplane

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/netns"
)

// egressLab is one cell with instances A (10.255.1.2) and B (10.255.1.3),
// an outside host 203.0.113.10 (tcp/80, tcp/5432, udp/53) behind a router
// on the underlay, and a listener on the cell's own underlay address.
type egressLab struct {
	cell    nsCell
	ctr     map[string]Container
	outside Container
	router  Container
}

func newEgressLab(t *testing.T) *egressLab {
	t.Helper()
	u, cells := meshed(t, 1)
	o := u.AddOutside(t)
	l := &egressLab{cell: cells[0], ctr: map[string]Container{},
		outside: Container{NetNS: o.NetNS, IP: o.IP}, router: Container{NetNS: o.NetNS, IP: o.RouterIP}}
	if err := netns.Sysctl(l.cell.NetNS, "net.ipv4.icmp_ratelimit", "0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.cell.dp.TeardownEgress(); err != nil {
			t.Errorf("TeardownEgress = %v", err)
		}
	})
	l.ctr["A"] = addContainerNS(t, l.cell, "a", "10.255.1.2")
	l.ctr["B"] = addContainerNS(t, l.cell, "b", "10.255.1.3")
	listenTCP(t, l.outside, 80)
	listenTCP(t, l.outside, 5432)
	serveUDP(t, l.outside, 53)
	listenTCP(t, l.router, 6443)                                              // the controller's stand-in
	listenTCP(t, Container{NetNS: l.cell.NetNS, IP: l.cell.UnderlayIP}, 7000) // a service of the cell itself
	return l
}

// set applies egress rules to the cell.
func (l *egressLab) set(t *testing.T, rules ...EgressRule) Changes {
	t.Helper()
	ch, err := l.cell.dp.Set(context.Background(), Desired{Egress: &Egress{Overlay: overlay, Guarded: []netip.Addr{l.cell.UnderlayIP}, Rules: rules}})
	if err != nil {
		t.Fatalf("Set(egress %v) = %v", rules, err)
	}
	return ch
}

func tcpRule(src, lo, hi string, plo, phi uint16) EgressRule {
	return EgressRule{SrcIP: netip.MustParseAddr(src), Protocol: "tcp", DestStart: netip.MustParseAddr(lo), DestEnd: netip.MustParseAddr(hi), StartPort: plo, EndPort: phi}
}

// probe tries src -> dst (an address) on svc and says what it met; for
// tcp it also returns the peer address the server saw.
func (l *egressLab) probe(t *testing.T, src, dst, svc string) (outcome, string) {
	t.Helper()
	proto, port, _ := strings.Cut(svc, "/")
	if proto == "icmp" {
		return ping(t, l.ctr[src].NetNS, dst), ""
	}
	to := netip.AddrPortFrom(netip.MustParseAddr(dst), uint16(atoi(t, port)))
	start := time.Now()
	var conn net.Conn
	err := netns.Do(l.ctr[src].NetNS, func() (err error) {
		if proto == "udp" {
			conn, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(to))
			return err
		}
		conn, err = (&net.Dialer{Timeout: probeTimeout}).Dial("tcp4", to.String())
		return err
	})
	refused := func(err error) bool {
		return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ECONNRESET)
	}
	if err == nil {
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(probeTimeout))
		if proto == "udp" {
			msg := "probe " + src
			if _, err = conn.Write([]byte(msg)); err == nil {
				buf := make([]byte, 1500)
				var n int
				if n, err = conn.Read(buf); err == nil {
					if string(buf[:n]) != msg {
						t.Errorf("%s -> %s %s: echo %q", src, dst, svc, buf[:n])
					}
					return ok, ""
				}
			}
		} else {
			var greeting string
			if greeting, err = bufio.NewReader(conn).ReadString('\n'); err == nil {
				return ok, strings.TrimSpace(greeting)
			}
		}
	}
	if refused(err) {
		if d := time.Since(start); d > probeTimeout/2 {
			t.Errorf("%s -> %s %s: refused only after %v, want at once", src, dst, svc, d)
		}
		return no, ""
	}
	t.Errorf("%s -> %s %s: %v (neither allowed nor refused)", src, dst, svc, err)
	return "", ""
}

// TestEgress is the egress matrix on one cell: default deny; a rule for one
// instance, a range and a list; the cell's own address and the underlay
// (where the controller lives) refused unless named; the outside host sees
// the cell's underlay address; an established connection cut when its
// rule goes.
func TestEgress(t *testing.T) {
	l := newEgressLab(t)
	const out, cellIP, router = "203.0.113.10", "198.51.100.11", "198.51.100.254"
	rulesA80 := tcpRule("10.255.1.2", out, out, 80, 80)
	phases := []struct {
		name  string
		rules []EgressRule
	}{
		{"no rules", nil},
		{"A tcp/80", []EgressRule{rulesA80}},
		{"plus range, list, udp, all", []EgressRule{rulesA80,
			tcpRule("10.255.1.3", "203.0.113.1", "203.0.113.20", 5432, 5432),
			tcpRule("10.255.1.3", "203.0.113.10", "203.0.113.10", 80, 80), // overlaps the range: kept apart
			{SrcIP: netip.MustParseAddr("10.255.1.2"), Protocol: "udp", DestStart: netip.MustParseAddr(out), DestEnd: netip.MustParseAddr(out), StartPort: 53, EndPort: 53},
			{SrcIP: netip.MustParseAddr("10.255.1.2"), Protocol: "icmp", DestStart: netip.MustParseAddr(out), DestEnd: netip.MustParseAddr(out), ICMPType: 8, ICMPCode: -1},
			// partly overlapping the one above
			{SrcIP: netip.MustParseAddr("10.255.1.2"), Protocol: "udp", DestStart: netip.MustParseAddr("203.0.113.5"), DestEnd: netip.MustParseAddr("203.0.113.15"), StartPort: 50, EndPort: 52},
			{SrcIP: netip.MustParseAddr("10.255.1.2"), Protocol: "udp", DestStart: netip.MustParseAddr("203.0.113.8"), DestEnd: netip.MustParseAddr("203.0.113.12"), StartPort: 51, EndPort: 60},
			{SrcIP: netip.MustParseAddr("10.255.1.3"), Protocol: "all", DestStart: netip.MustParseAddr(cellIP), DestEnd: netip.MustParseAddr(cellIP)},
		}},
		{"removed", nil},
	}
	matrix := []struct {
		src, dst, svc string
		want          [4]outcome
	}{
		// src dst     svc          none  A80  more removed
		{"A", out, "tcp/80", [4]outcome{no, ok, ok, no}},
		{"A", out, "tcp/5432", [4]outcome{no, no, no, no}},
		{"A", out, "udp/53", [4]outcome{no, no, ok, no}},
		{"A", out, "icmp/8", [4]outcome{no, no, ok, no}},
		{"B", out, "icmp/8", [4]outcome{no, no, no, no}},
		{"B", out, "tcp/80", [4]outcome{no, no, ok, no}},
		{"B", out, "tcp/5432", [4]outcome{no, no, ok, no}},
		{"A", cellIP, "tcp/7000", [4]outcome{no, no, no, no}},
		{"B", cellIP, "tcp/7000", [4]outcome{no, no, ok, no}},
		{"A", router, "tcp/6443", [4]outcome{no, no, no, no}},
		{"B", router, "tcp/6443", [4]outcome{no, no, no, no}},
	}
	var held *bufConn
	for i, ph := range phases {
		ch := l.set(t, ph.rules...)
		if !ch.Egress {
			t.Errorf("phase %q: Set did not change the egress table", ph.name)
		}
		if i == 3 {
			if ch.EgressCut < 1 {
				t.Errorf("phase %q: Set cut %d connections, want the held A -> outside tcp/80", ph.name, ch.EgressCut)
			}
			assertCut(t, held, "A -> outside tcp/80 after its rule went")
		}
		for _, m := range matrix {
			got, peer := l.probe(t, m.src, m.dst, m.svc)
			if got != m.want[i] {
				t.Errorf("phase %q: %s -> %s %s = %s, want %s", ph.name, m.src, m.dst, m.svc, got, m.want[i])
			}
			if got == ok && m.dst == out && strings.HasPrefix(m.svc, "tcp") && peer != cellIP {
				t.Errorf("phase %q: %s -> outside %s: the outside host saw %s, want the cell's underlay address %s", ph.name, m.src, m.svc, peer, cellIP)
			}
		}
		if i == 2 {
			held = l.dialOut(t, "A", out, 80)
			roundTrip(t, held, "while allowed")
			// (Set may cut the probes' closed entries of B's range.)
			l.set(t, append(ph.rules[:1:1], ph.rules[2:]...)...)
			roundTrip(t, held, "after another rule went")
		}
	}
	// Unchanged rules change nothing.
	if ch := l.set(t); ch.Egress {
		t.Errorf("Set(same egress) changed the table")
	}
}

// dialOut opens a TCP connection from instance src to dst:port.
func (l *egressLab) dialOut(t *testing.T, src, dst string, port int) *bufConn {
	t.Helper()
	var conn net.Conn
	inNS(t, l.ctr[src].NetNS, func() (err error) {
		conn, err = (&net.Dialer{Timeout: probeTimeout}).Dial("tcp4", net.JoinHostPort(dst, fmt.Sprint(port)))
		return err
	})
	t.Cleanup(func() { conn.Close() })
	c := &bufConn{conn, bufio.NewReader(conn)}
	conn.SetReadDeadline(time.Now().Add(probeTimeout))
	if _, err := c.r.ReadString('\n'); err != nil {
		t.Fatalf("%s -> %s tcp/%d: greeting: %v", src, dst, port, err)
	}
	return c
}

// ping sends one ICMP echo request from the namespace ns to dst over a raw
// socket: an echo reply is "allowed", an ICMP destination unreachable
// (the cell's admin-prohibited) "refused".
func ping(t *testing.T, ns, dst string) outcome {
	t.Helper()
	var c net.PacketConn
	inNS(t, ns, func() (err error) {
		c, err = net.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	})
	defer c.Close()
	id := uint16(time.Now().UnixNano())
	msg := []byte{8, 0, 0, 0, byte(id >> 8), byte(id), 0, 1, 'p', 'i', 'n', 'g'}
	sum := icmpChecksum(msg)
	msg[2], msg[3] = byte(sum>>8), byte(sum)
	if _, err := c.WriteTo(msg, &net.IPAddr{IP: net.ParseIP(dst)}); err != nil {
		if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EHOSTUNREACH) {
			return no
		}
		t.Errorf("ping %s: %v", dst, err)
		return ""
	}
	c.SetReadDeadline(time.Now().Add(probeTimeout))
	buf := make([]byte, 1500)
	for {
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			t.Errorf("ping %s: no answer: %v", dst, err)
			return ""
		}
		switch {
		case n >= 8 && buf[0] == 0 && uint16(buf[4])<<8|uint16(buf[5]) == id:
			return ok
		case n >= 8 && buf[0] == 3:
			return no
		}
	}
}

func icmpChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// TestEgressLogs: refused egress is logged to the deny group, and accepted
// egress of a rule with Log to the allow group; other accepted egress not.
func TestEgressLogs(t *testing.T) {
	l := newEgressLab(t)
	logs := nflogListen(t, l.cell.NetNS, 7, 8)
	logged := tcpRule("10.255.1.2", "203.0.113.10", "203.0.113.10", 80, 80)
	logged.Log = true
	quiet := tcpRule("10.255.1.3", "203.0.113.10", "203.0.113.10", 80, 80)
	if _, err := l.cell.dp.Set(context.Background(), Desired{Egress: &Egress{Overlay: overlay, Rules: []EgressRule{logged, quiet},
		DenyLogGroup: 7, AllowLogGroup: 8}}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct {
		src, svc string
		want     outcome
	}{{"B", "tcp/80", ok}, {"A", "tcp/80", ok}, {"A", "tcp/5432", no}} {
		if got, _ := l.probe(t, p.src, "203.0.113.10", p.svc); got != p.want {
			t.Errorf("%s -> outside %s = %s, want %s", p.src, p.svc, got, p.want)
		}
	}
	var got []string
	timeout := time.After(5 * time.Second)
	for len(got) < 2 {
		select {
		case m := <-logs:
			got = append(got, fmt.Sprintf("%d %s", m.group, m.prefix))
		case <-timeout:
			t.Fatalf("logged %v, want an allow and a deny", got)
		}
	}
	if want := []string{"8 " + LogPrefixEgressAllowed, "7 " + LogPrefixEgressDenied}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("logged %v, want %v (B's accepted connection is not logged)", got, want)
	}
}
