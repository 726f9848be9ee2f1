package flowlog

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
	"github.com/trellis-c2c/trellis/internal/netns"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { os.Exit(dataplanetest.Run(m)) }

// waitTimeout bounds every wait for a logged packet.
const waitTimeout = 10 * time.Second

var loopback = netip.MustParseAddr("127.0.0.1")

// logRule is one rule of the test table: log packets of protocol proto to
// port in the chain hooked at hook.
type logRule struct {
	hook   *nftables.ChainHook
	proto  byte
	port   uint16
	group  uint16
	prefix string
}

// addLogTable adds table inet flowlog_test with the rules to the namespace
// at ns, and deletes it when the test ends.
func addLogTable(t *testing.T, ns string, rules ...logRule) {
	t.Helper()
	c := dataplanetest.NFTables(t, ns)
	tab := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "flowlog_test"})
	chains := map[*nftables.ChainHook]*nftables.Chain{}
	for _, r := range rules {
		ch := chains[r.hook]
		if ch == nil {
			ch = c.AddChain(&nftables.Chain{
				Name:     fmt.Sprintf("hook%d", *r.hook),
				Table:    tab,
				Type:     nftables.ChainTypeFilter,
				Hooknum:  r.hook,
				Priority: nftables.ChainPriorityFilter,
			})
			chains[r.hook] = ch
		}
		c.AddRule(&nftables.Rule{Table: tab, Chain: ch, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{r.proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(r.port)},
			&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: r.group, Data: []byte(r.prefix)},
		}})
	}
	if err := c.Flush(); err != nil {
		t.Fatalf("add table flowlog_test in %s: %v", ns, err)
	}
	t.Cleanup(func() {
		c.DelTable(tab)
		if err := c.Flush(); err != nil {
			t.Errorf("delete table flowlog_test in %s: %v", ns, err)
		}
	})
}

// udpSocket opens a UDP socket on 127.0.0.1 in the namespace at ns, with
// packet mark mark (SO_MARK) when it is not 0, closed when the test ends.
func udpSocket(t *testing.T, ns string, port uint16, mark int) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	err := netns.Do(ns, func() (err error) {
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(loopback, port)))
		return err
	})
	if err != nil {
		t.Fatalf("udp socket in %s: %v", ns, err)
	}
	t.Cleanup(func() { c.Close() })
	if mark != 0 {
		rc, err := c.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mark)
		}); err != nil || serr != nil {
			t.Fatalf("set SO_MARK: %v %v", err, serr)
		}
	}
	return c
}

// run runs r until the test ends, sending every Packet to the returned
// channel, and checks that Run returns nil.
func run(t *testing.T, r *Reader, ch chan Packet) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, func(p Packet) { ch <- p }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	})
}

// next returns the next Packet from ch, failing the test after waitTimeout.
func next(t *testing.T, ch <-chan Packet) Packet {
	t.Helper()
	select {
	case p := <-ch:
		return p
	case <-time.After(waitTimeout):
		t.Fatal("no logged packet arrived")
		return Packet{}
	}
}

func TestReaderLoopback(t *testing.T) {
	dataplanetest.RequireRoot(t)
	ns := dataplanetest.Namespace(t, "flowlog")
	addLogTable(t, ns,
		logRule{hook: nftables.ChainHookOutput, proto: unix.IPPROTO_UDP, port: 9999, group: 7, prefix: "test"},
		logRule{hook: nftables.ChainHookInput, proto: unix.IPPROTO_UDP, port: 9999, group: 8, prefix: "in"},
		logRule{hook: nftables.ChainHookOutput, proto: unix.IPPROTO_TCP, port: 9998, group: 7, prefix: "tcp"},
	)
	r, err := Open(ns, []uint16{7, 8})
	if err != nil {
		t.Fatalf("Open(%s) = %v", ns, err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("Close = %v", err)
		}
	})
	ch := make(chan Packet, 64)
	run(t, r, ch)

	const mark = 0x2a0007
	recv := udpSocket(t, ns, 9999, 0)
	send := udpSocket(t, ns, 0, mark)
	sport := uint16(send.LocalAddr().(*net.UDPAddr).Port)
	const n = 3
	for range n {
		if _, err := send.WriteToUDPAddrPort([]byte("hello"), netip.AddrPortFrom(loopback, 9999)); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 64)
	for range n {
		recv.SetReadDeadline(time.Now().Add(waitTimeout))
		if _, _, err := recv.ReadFromUDPAddrPort(buf); err != nil {
			t.Fatalf("read datagram: %v", err)
		}
	}
	// Each datagram is logged on its way out (group 7) and in (group 8).
	udp := Packet{SrcIP: loopback, DstIP: loopback, Protocol: "udp", Length: 33, SrcPort: sport, DstPort: 9999, Mark: mark}
	out := udp
	out.Group, out.Prefix, out.OutIf, out.OutIfIndex = 7, "test", "lo", 1
	in := udp
	in.Group, in.Prefix, in.InIf, in.InIfIndex = 8, "in", "lo", 1
	want := map[uint16]Packet{7: out, 8: in}
	got := map[uint16]int{}
	start := time.Now()
	for range 2 * n {
		p := next(t, ch)
		if p.Time.Before(start.Add(-time.Minute)) || p.Time.After(time.Now().Add(time.Minute)) {
			t.Errorf("logged packet has time %v, want about %v", p.Time, start)
		}
		if diff := cmp.Diff(want[p.Group], p, cmpopts.EquateComparable(netip.Addr{}), cmpopts.IgnoreFields(Packet{}, "Time")); diff != "" {
			t.Errorf("logged packet mismatch (-want +got):\n%s", diff)
		}
		got[p.Group]++
	}
	if got[7] != n || got[8] != n {
		t.Errorf("packets per group = %v, want %d in 7 and 8", got, n)
	}

	// A TCP connection attempt to a closed port: its SYN is logged.
	var dialErr error
	netns.Do(ns, func() error {
		var c net.Conn
		if c, dialErr = net.DialTimeout("tcp4", "127.0.0.1:9998", waitTimeout); dialErr == nil {
			c.Close()
		}
		return nil
	})
	if dialErr == nil {
		t.Errorf("dial 127.0.0.1:9998 succeeded, want refused")
	}
	p := next(t, ch)
	if p.Prefix != "tcp" || p.Protocol != "tcp" || p.DstPort != 9998 || p.TCPFlags != SYN || p.SrcPort == 0 || p.DstIP != loopback {
		t.Errorf("logged SYN = %+v, want tcp from 127.0.0.1 to 127.0.0.1:9998, flags syn, prefix tcp", p)
	}
	if st := r.Stats(); st != (Stats{Packets: 2*n + 1}) {
		t.Errorf("Stats() = %+v, want %d packets and nothing else", st, 2*n+1)
	}
}

func TestOpenGroupTaken(t *testing.T) {
	dataplanetest.RequireRoot(t)
	ns := dataplanetest.Namespace(t, "flowlog-taken")
	r, err := Open(ns, []uint16{7})
	if err != nil {
		t.Fatalf("Open(%s, 7) = %v", ns, err)
	}
	defer r.Close()
	if r2, err := Open(ns, []uint16{8, 7}); err == nil {
		r2.Close()
		t.Fatalf("second Open(%s, 7) = nil error, want group taken", ns)
	}
	// Closing releases the group at once.
	r.Close()
	r, err = Open(ns, []uint16{7})
	if err != nil {
		t.Fatalf("Open(%s, 7) after Close = %v", ns, err)
	}
	defer r.Close()
	// The same group in another namespace is a different instance.
	other := dataplanetest.Namespace(t, "flowlog-other")
	r3, err := Open(other, []uint16{7})
	if err != nil {
		t.Fatalf("Open(%s, 7) = %v", other, err)
	}
	r3.Close()
}

// TestReaderOverrun fills a socket's receive buffer while fn is blocked and
// checks that the loss is counted exactly and reading goes on.
func TestReaderOverrun(t *testing.T) {
	dataplanetest.RequireRoot(t)
	ns := dataplanetest.Namespace(t, "flowlog-overrun")
	addLogTable(t, ns, logRule{hook: nftables.ChainHookOutput, proto: unix.IPPROTO_UDP, port: 9999, group: 9, prefix: "flood"})
	r, err := Open(ns, []uint16{9})
	if err != nil {
		t.Fatalf("Open(%s) = %v", ns, err)
	}
	t.Cleanup(func() { r.Close() })
	// The smallest buffer the kernel allows: a few messages.
	if err := r.socks[0].Con.SetReadBuffer(0); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	ch := make(chan Packet, 4096)
	first := true
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- r.Run(ctx, func(p Packet) {
			if first {
				first = false
				<-release
			}
			ch <- p
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	}()

	udpSocket(t, ns, 9999, 0)
	send := udpSocket(t, ns, 0, 0)
	const flood = 2000
	for range flood {
		if _, err := send.WriteToUDPAddrPort([]byte("x"), netip.AddrPortFrom(loopback, 9999)); err != nil {
			t.Fatal(err)
		}
	}
	close(release)
	// A last datagram from another port marks the end of the flood.
	last := udpSocket(t, ns, 0, 0)
	lastPort := uint16(last.LocalAddr().(*net.UDPAddr).Port)
	if _, err := last.WriteToUDPAddrPort([]byte("x"), netip.AddrPortFrom(loopback, 9999)); err != nil {
		t.Fatal(err)
	}
	for p := next(t, ch); p.SrcPort != lastPort; p = next(t, ch) {
	}
	st := r.Stats()
	t.Logf("after a flood of %d: %+v", flood+1, st)
	if st.Lost == 0 || st.Overruns == 0 || st.Packets+st.Lost != flood+1 {
		t.Errorf("Stats() = %+v, want some lost and overruns, packets+lost = %d", st, flood+1)
	}
}

// TestListen checks that Listen delivers until its context ends and then
// returns nil. Listen binds in the background, so the test sends until a
// datagram is logged.
func TestListen(t *testing.T) {
	dataplanetest.RequireRoot(t)
	ns := dataplanetest.Namespace(t, "flowlog-listen")
	addLogTable(t, ns, logRule{hook: nftables.ChainHookOutput, proto: unix.IPPROTO_UDP, port: 9999, group: 7, prefix: "test"})
	udpSocket(t, ns, 9999, 0)
	send := udpSocket(t, ns, 0, 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := make(chan Packet, 1)
	done := make(chan error, 1)
	go func() {
		done <- Listen(ctx, ns, []uint16{7}, func(p Packet) {
			select {
			case ch <- p:
			default:
			}
		})
	}()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(waitTimeout)
	for logged := false; !logged; {
		if _, err := send.WriteToUDPAddrPort([]byte("x"), netip.AddrPortFrom(loopback, 9999)); err != nil {
			t.Fatal(err)
		}
		select {
		case p := <-ch:
			if p.Prefix != "test" || p.DstPort != 9999 {
				t.Errorf("Listen delivered %+v, want prefix test, port 9999", p)
			}
			logged = true
		case err := <-done:
			t.Fatalf("Listen = %v before its context ended", err)
		case <-deadline:
			t.Fatal("no logged packet arrived")
		case <-tick.C:
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Listen = %v after its context ended, want nil", err)
	}
}

func TestRunTwice(t *testing.T) {
	dataplanetest.RequireRoot(t)
	ns := dataplanetest.Namespace(t, "flowlog-twice")
	r, err := Open(ns, []uint16{7})
	if err != nil {
		t.Fatalf("Open(%s) = %v", ns, err)
	}
	if err := r.Close(); err != nil {
		t.Errorf("Close = %v", err)
	}
	if err := r.Run(context.Background(), func(Packet) {}); err == nil {
		t.Errorf("Run after Close = nil, want an error")
	}
}
