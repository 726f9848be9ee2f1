package dns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// These tests send real UDP queries to a Server on loopback, so that the
// answers and metrics come from the fast path (serveUDP and fastAnswer),
// not from Handler.ServeDNS as in handler_test.go.

// udpTable: backend (3 instances), big (100, more than fit in 512 bytes),
// idle (an app without instances).
func udpTable() *Table {
	ins := []Instance{
		{App: "b", Index: 0, IP: netip.MustParseAddr("10.255.1.2")},
		{App: "b", Index: 1, IP: netip.MustParseAddr("10.255.2.2")},
		{App: "b", Index: 2, IP: netip.MustParseAddr("10.255.1.3")},
	}
	for i := range 100 {
		ins = append(ins, Instance{App: "big", Index: i, IP: netip.AddrFrom4([4]byte{10, 255, 3, byte(2 + i)})})
	}
	return NewTable([]string{"apps.internal"}, []Route{
		{Host: "backend", Domain: "apps.internal", Apps: []string{"b"}},
		{Host: "big", Domain: "apps.internal", Apps: []string{"big"}},
		{Host: "idle", Domain: "apps.internal", Apps: []string{"none"}},
	}, ins)
}

// listenLoopback returns a server for udpTable listening on 127.0.0.1,
// not yet serving: a test may set its clock or queue queries first.
func listenLoopback(t *testing.T, o Options) *Server {
	t.Helper()
	s := NewServer(o)
	s.SetTable(udpTable())
	if err := s.Listen("", "127.0.0.1:0"); err != nil {
		t.Fatalf("Listen = %v", err)
	}
	return s
}

// ServeUntilCleanup serves s until the test ends. It is exported for the
// package's external tests too.
func ServeUntilCleanup(t *testing.T, s *Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve = %v", err)
		}
	})
}

// fastQuery packs m and fails the test unless the fast path answers it,
// so that what a test sees over UDP is the fast path's doing.
func fastQuery(t *testing.T, h *Handler, m *mdns.Msg) []byte {
	t.Helper()
	pkt, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, ok := h.fastAnswer(pkt, nil, &scratch{}); !ok {
		t.Fatalf("query %v is not one the fast path answers", m.Question)
	}
	return pkt
}

// udpClient is a UDP socket connected to the server at addr.
func udpClient(t *testing.T, addr netip.AddrPort) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip sends pkt on c and returns the answer with pkt's ID.
func roundTrip(t *testing.T, c *net.UDPConn, pkt []byte) *mdns.Msg {
	t.Helper()
	if _, err := c.Write(pkt); err != nil {
		t.Fatal(err)
	}
	return readAnswer(t, c)
}

func readAnswer(t *testing.T, c *net.UDPConn) *mdns.Msg {
	t.Helper()
	buf := make([]byte, 65535)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	resp := new(mdns.Msg)
	if err := resp.Unpack(buf[:n]); err != nil {
		t.Fatalf("unpack answer: %v", err)
	}
	return resp
}

func answerAddrs(t *testing.T, m *mdns.Msg) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	for _, rr := range m.Answer {
		a, ok := rr.(*mdns.A)
		if !ok || a.Hdr.Ttl != 0 {
			t.Fatalf("answer %v: want A records with TTL 0", rr)
		}
		ip, _ := netip.AddrFromSlice(a.A)
		out = append(out, ip.Unmap())
	}
	return out
}

// TestFastPathShuffledOverUDP: a name with several instances, asked over
// UDP, comes back in every order, with and without EDNS0; an answer
// truncated to fit is a varying choice of the addresses.
func TestFastPathShuffledOverUDP(t *testing.T) {
	s := listenLoopback(t, Options{})
	ServeUntilCleanup(t, s)
	c := udpClient(t, s.Addr())
	backend, _ := s.Table().Lookup("backend.apps.internal")
	want := sortedAddrs(backend)

	for _, edns := range []bool{false, true} {
		m := new(mdns.Msg).SetQuestion("backend.apps.internal.", mdns.TypeA)
		if edns {
			m.SetEdns0(1232, false)
		}
		pkt := fastQuery(t, s.Handler, m)
		// 3 addresses have 6 orders; the chance that one of them is
		// missing from 1,000 uniform shuffles is below 1e-78.
		const attempts = 1000
		orders := map[string]bool{}
		i := 0
		for ; i < attempts && len(orders) < 6; i++ {
			got := answerAddrs(t, roundTrip(t, c, pkt))
			if !slices.Equal(sortedAddrs(got), want) {
				t.Fatalf("EDNS0 %v: answer %v, want every address of %v", edns, got, want)
			}
			orders[fmt.Sprint(got)] = true
		}
		if len(orders) != 6 {
			t.Errorf("EDNS0 %v: %d of 6 orders of 3 addresses in %d answers: %v", edns, len(orders), attempts, orders)
		} else {
			t.Logf("EDNS0 %v: all 6 orders seen in %d answers", edns, i)
		}
	}

	// Truncated: as many as fit in 512 bytes, a random choice each time.
	pkt := fastQuery(t, s.Handler, new(mdns.Msg).SetQuestion("big.apps.internal.", mdns.TypeA))
	all, _ := s.Table().Lookup("big.apps.internal")
	firsts, sets := map[netip.Addr]bool{}, map[string]bool{}
	for i := 0; i < 50 && (len(firsts) < 2 || len(sets) < 2); i++ {
		resp := roundTrip(t, c, pkt)
		got := answerAddrs(t, resp)
		if !resp.Truncated || len(got) == 0 || len(got) >= len(all) {
			t.Fatalf("big: TC %v, %d answers; want truncated to some of %d", resp.Truncated, len(got), len(all))
		}
		for _, ip := range got {
			if !slices.Contains(all, ip) {
				t.Fatalf("big: answer %s is not an instance of big", ip)
			}
		}
		firsts[got[0]] = true
		sets[fmt.Sprint(sortedAddrs(got))] = true
	}
	// With about 30 of 100 addresses per answer, the same first address
	// (or the same choice) 50 times in a row has a chance below 1e-99.
	if len(firsts) < 2 || len(sets) < 2 {
		t.Errorf("big: %d distinct first addresses and %d distinct choices in 50 truncated answers, want more than 1 of each", len(firsts), len(sets))
	}
}

// TestFastPathMetricsOverUDP: queries the fast path answers over UDP are
// counted by type and result, and each adds one latency observation.
func TestFastPathMetricsOverUDP(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := listenLoopback(t, Options{Registerer: reg})
	ServeUntilCleanup(t, s)
	c := udpClient(t, s.Addr())
	for _, q := range []struct {
		name  string
		qtype uint16
		edns  bool
		rcode int
	}{
		{"backend.apps.internal.", mdns.TypeA, false, mdns.RcodeSuccess},
		{"Backend.Apps.Internal.", mdns.TypeA, true, mdns.RcodeSuccess},
		{"0.backend.apps.internal.", mdns.TypeA, false, mdns.RcodeSuccess},
		{"backend.apps.internal.", mdns.TypeAAAA, false, mdns.RcodeSuccess},
		{"nope.apps.internal.", mdns.TypeA, false, mdns.RcodeNameError},
		{"idle.apps.internal.", mdns.TypeA, true, mdns.RcodeNameError},
		{"x.apps.internal.", mdns.TypeNAPTR, false, mdns.RcodeNameError},
		{"example.com.", mdns.TypeA, false, mdns.RcodeRefused},
	} {
		m := new(mdns.Msg).SetQuestion(q.name, q.qtype)
		if q.edns {
			m.SetEdns0(1232, false)
		}
		if resp := roundTrip(t, c, fastQuery(t, s.Handler, m)); resp.Rcode != q.rcode {
			t.Errorf("%s %s: %s, want %s", q.name, mdns.TypeToString[q.qtype], mdns.RcodeToString[resp.Rcode], mdns.RcodeToString[q.rcode])
		}
	}
	want := `
# HELP trellis_dns_queries_total DNS queries answered, by query type and response code ("dropped": no answer sent).
# TYPE trellis_dns_queries_total counter
trellis_dns_queries_total{rcode="NOERROR",type="A"} 3
trellis_dns_queries_total{rcode="NOERROR",type="AAAA"} 1
trellis_dns_queries_total{rcode="NXDOMAIN",type="A"} 2
trellis_dns_queries_total{rcode="NXDOMAIN",type="other"} 1
trellis_dns_queries_total{rcode="REFUSED",type="A"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "trellis_dns_queries_total"); err != nil {
		t.Error(err)
	}
	if got := latencies(t, reg); got["trellis"].count != 8 || got["upstream"].count != 0 {
		t.Errorf("latency observations %+v, want 8 answered by trellis, none upstream", got)
	}
}

// TestFastPathLatencyPerQuery: queries read in one batch are each charged
// their own time, not the time since the batch was read. A fake clock
// moves one tick per reading, so a query timed on its own takes exactly
// one tick; timed from the start of the batch, the k-th would take k.
func TestFastPathLatencyPerQuery(t *testing.T) {
	const tick = 20 * time.Microsecond // within the first bucket, 25 µs
	reg := prometheus.NewRegistry()
	s := listenLoopback(t, Options{Registerer: reg})
	var ticks atomic.Int64
	epoch := time.Now()
	s.now = func() time.Time { return epoch.Add(time.Duration(ticks.Add(1)) * tick) }

	// Queue the queries before serving: the first read takes them all at
	// once (udpBatch is 32).
	const n = 10
	c := udpClient(t, s.Addr())
	for i := range n {
		m := new(mdns.Msg).SetQuestion(fmt.Sprintf("%d.backend.apps.internal.", i%3), mdns.TypeA)
		if _, err := c.Write(fastQuery(t, s.Handler, m)); err != nil {
			t.Fatal(err)
		}
	}
	ServeUntilCleanup(t, s)
	for range n {
		if resp := readAnswer(t, c); len(resp.Answer) != 1 {
			t.Fatalf("answer %v, want one address", resp)
		}
	}
	got := latencies(t, reg)["trellis"]
	if got.count != n || got.buckets[25e-6] != n {
		t.Errorf("%d observations, %d within 25µs, sum %v; want %d, all of one tick (%v)", got.count, got.buckets[25e-6], got.sum, n, tick)
	}
	if d := got.sum - n*tick.Seconds(); d > 1e-12 || d < -1e-12 {
		t.Errorf("latency sum %v, want %d ticks = %v", got.sum, n, n*tick.Seconds())
	}
}

func sortedAddrs(xs []netip.Addr) []netip.Addr {
	xs = slices.Clone(xs)
	slices.SortFunc(xs, netip.Addr.Compare)
	return xs
}

// histogram is one series of the latency histogram: its count, sum and
// cumulative counts by upper bound.
type histogram struct {
	count   uint64
	sum     float64
	buckets map[float64]uint64
}

// latencies returns trellis_dns_query_duration_seconds by answered_by.
func latencies(t *testing.T, reg *prometheus.Registry) map[string]histogram {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]histogram{}
	for _, mf := range mfs {
		if mf.GetName() != "trellis_dns_query_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			by := ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "answered_by" {
					by = l.GetValue()
				}
			}
			h := m.GetHistogram()
			hist := histogram{count: h.GetSampleCount(), sum: h.GetSampleSum(), buckets: map[float64]uint64{}}
			for _, b := range h.GetBucket() {
				hist.buckets[b.GetUpperBound()] = b.GetCumulativeCount()
			}
			out[by] = hist
		}
	}
	if len(out) != 2 {
		t.Fatalf("latency series %v, want trellis and upstream", out)
	}
	return out
}
