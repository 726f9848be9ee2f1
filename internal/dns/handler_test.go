package dns_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/trellis-c2c/trellis/internal/dns"
)

// recorder is a mdns.ResponseWriter that keeps what the handler writes,
// after a trip through the wire format, like httptest.ResponseRecorder.
type recorder struct {
	tcp  bool
	msgs []*mdns.Msg
	wire [][]byte
}

func (r *recorder) LocalAddr() net.Addr {
	if r.tcp {
		return &net.TCPAddr{IP: net.IPv4(169, 254, 0, 2), Port: 53}
	}
	return &net.UDPAddr{IP: net.IPv4(169, 254, 0, 2), Port: 53}
}

func (r *recorder) RemoteAddr() net.Addr {
	if r.tcp {
		return &net.TCPAddr{IP: net.IPv4(10, 255, 1, 9), Port: 40000}
	}
	return &net.UDPAddr{IP: net.IPv4(10, 255, 1, 9), Port: 40000}
}

func (r *recorder) WriteMsg(m *mdns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	back := new(mdns.Msg)
	if err := back.Unpack(b); err != nil {
		return fmt.Errorf("unpack own answer: %w", err)
	}
	r.wire = append(r.wire, b)
	r.msgs = append(r.msgs, back)
	return nil
}

func (r *recorder) Write(b []byte) (int, error) {
	return 0, fmt.Errorf("raw write of %d bytes", len(b))
}
func (r *recorder) Close() error        { return nil }
func (r *recorder) TsigStatus() error   { return nil }
func (r *recorder) TsigTimersOnly(bool) {}
func (r *recorder) Hijack()             {}

var (
	b0 = netip.MustParseAddr("10.255.1.2")
	b1 = netip.MustParseAddr("10.255.2.2")
	b2 = netip.MustParseAddr("10.255.1.3")
	c0 = netip.MustParseAddr("10.255.3.2")
)

// testTable: backend (3 instances), shared (backend's and c's), idle (an
// app without instances), api in a second internal domain, and a route in
// a domain that is not internal.
func testTable() *dns.Table {
	return dns.NewTable(
		[]string{"apps.internal", "Other.Internal."},
		[]dns.Route{
			{Host: "backend", Domain: "apps.internal", Apps: []string{"b"}},
			{Host: "shared", Domain: "apps.internal", Apps: []string{"b", "c"}},
			{Host: "idle", Domain: "apps.internal", Apps: []string{"d"}},
			{Host: "api", Domain: "other.internal", Apps: []string{"c"}},
			{Host: "web", Domain: "example.com", Apps: []string{"b"}},
		},
		[]dns.Instance{
			{App: "b", Index: 0, IP: b0}, {App: "b", Index: 1, IP: b1}, {App: "b", Index: 2, IP: b2},
			{App: "c", Index: 0, IP: c0},
		})
}

func query(name string, qtype uint16) *mdns.Msg {
	m := new(mdns.Msg).SetQuestion(name, qtype)
	return m
}

// serve runs req through h and returns the single answer (nil for none).
func serve(t testing.TB, h mdns.Handler, req *mdns.Msg, tcp bool) *mdns.Msg {
	t.Helper()
	w := &recorder{tcp: tcp}
	h.ServeDNS(w, req)
	switch len(w.msgs) {
	case 0:
		return nil
	case 1:
		return w.msgs[0]
	}
	t.Fatalf("ServeDNS(%v) wrote %d answers", req.Question, len(w.msgs))
	return nil
}

func addrs(t testing.TB, m *mdns.Msg) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	for _, rr := range m.Answer {
		a, ok := rr.(*mdns.A)
		if !ok {
			t.Errorf("answer %v is not an A record", rr)
			continue
		}
		ip, _ := netip.AddrFromSlice(a.A)
		out = append(out, ip.Unmap())
	}
	return out
}

func sorted(xs []netip.Addr) []netip.Addr {
	xs = slices.Clone(xs)
	slices.SortFunc(xs, netip.Addr.Compare)
	return xs
}

func TestAnswers(t *testing.T) {
	h := dns.NewHandler(dns.Options{})
	h.SetTable(testTable())
	for _, c := range []struct {
		name  string
		qtype uint16
		rcode int
		want  []netip.Addr
	}{
		{"backend.apps.internal.", mdns.TypeA, mdns.RcodeSuccess, []netip.Addr{b0, b1, b2}},
		{"BackEnd.APPS.internal.", mdns.TypeA, mdns.RcodeSuccess, []netip.Addr{b0, b1, b2}},
		{"1.backend.apps.internal.", mdns.TypeA, mdns.RcodeSuccess, []netip.Addr{b1}},
		{"2.BACKEND.apps.internal.", mdns.TypeA, mdns.RcodeSuccess, []netip.Addr{b2}},
		{"shared.apps.internal.", mdns.TypeA, mdns.RcodeSuccess, []netip.Addr{b0, b1, b2, c0}},
		{"0.shared.apps.internal.", mdns.TypeA, mdns.RcodeSuccess, []netip.Addr{b0, c0}},
		{"api.other.internal.", mdns.TypeA, mdns.RcodeSuccess, []netip.Addr{c0}},
		// Names that exist, other types: NOERROR, no records.
		{"backend.apps.internal.", mdns.TypeAAAA, mdns.RcodeSuccess, nil},
		{"backend.apps.internal.", mdns.TypeTXT, mdns.RcodeSuccess, nil},
		{"backend.apps.internal.", mdns.TypeSRV, mdns.RcodeSuccess, nil},
		{"1.backend.apps.internal.", mdns.TypeHTTPS, mdns.RcodeSuccess, nil},
		{"backend.apps.internal.", mdns.TypeANY, mdns.RcodeSuccess, nil},
		{"apps.internal.", mdns.TypeA, mdns.RcodeSuccess, nil},
		{"apps.internal.", mdns.TypeSOA, mdns.RcodeSuccess, nil},
		// Names in an internal domain that map to nothing.
		{"nope.apps.internal.", mdns.TypeA, mdns.RcodeNameError, nil},
		{"idle.apps.internal.", mdns.TypeA, mdns.RcodeNameError, nil},
		{"idle.apps.internal.", mdns.TypeAAAA, mdns.RcodeNameError, nil},
		{"3.backend.apps.internal.", mdns.TypeA, mdns.RcodeNameError, nil},
		{"x.1.backend.apps.internal.", mdns.TypeA, mdns.RcodeNameError, nil},
		{"nope.apps.internal.", mdns.TypeANY, mdns.RcodeNameError, nil},
		{"backend.other.internal.", mdns.TypeA, mdns.RcodeNameError, nil},
		// Outside the internal domains, without upstreams.
		{"web.example.com.", mdns.TypeA, mdns.RcodeRefused, nil},
		{"example.com.", mdns.TypeA, mdns.RcodeRefused, nil},
		{"internal.", mdns.TypeA, mdns.RcodeRefused, nil},
		{"xapps.internal.", mdns.TypeA, mdns.RcodeRefused, nil},
		{".", mdns.TypeNS, mdns.RcodeRefused, nil},
		// Zone transfers are not served.
		{"apps.internal.", mdns.TypeAXFR, mdns.RcodeRefused, nil},
		{"apps.internal.", mdns.TypeIXFR, mdns.RcodeRefused, nil},
	} {
		for _, tcp := range []bool{false, true} {
			req := query(c.name, c.qtype)
			resp := serve(t, h, req, tcp)
			what := fmt.Sprintf("%s %s (tcp %v)", c.name, mdns.TypeToString[c.qtype], tcp)
			if resp == nil {
				t.Errorf("%s: no answer", what)
				continue
			}
			if resp.Rcode != c.rcode {
				t.Errorf("%s: rcode %s, want %s", what, mdns.RcodeToString[resp.Rcode], mdns.RcodeToString[c.rcode])
			}
			if diff := cmp.Diff(sorted(c.want), sorted(addrs(t, resp)), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("%s: addresses (-want +got):\n%s", what, diff)
			}
			if resp.Id != req.Id || !resp.Response || resp.Opcode != mdns.OpcodeQuery || !resp.RecursionDesired {
				t.Errorf("%s: header %+v does not answer %+v", what, resp.MsgHdr, req.MsgHdr)
			}
			if len(resp.Question) != 1 || resp.Question[0] != req.Question[0] {
				t.Errorf("%s: question %v, want %v", what, resp.Question, req.Question)
			}
			internal := c.rcode != mdns.RcodeRefused
			if resp.Authoritative != internal {
				t.Errorf("%s: AA = %v, want %v", what, resp.Authoritative, internal)
			}
			if resp.RecursionAvailable {
				t.Errorf("%s: RA set without upstreams", what)
			}
			if len(resp.Ns) != 0 || len(resp.Extra) != 0 || resp.Truncated {
				t.Errorf("%s: authority %v, additional %v, TC %v, want none", what, resp.Ns, resp.Extra, resp.Truncated)
			}
			for _, rr := range resp.Answer {
				if rr.Header().Ttl != 0 || rr.Header().Name != c.name || rr.Header().Class != mdns.ClassINET {
					t.Errorf("%s: answer %v, want TTL 0, class IN and the question's name", what, rr)
				}
			}
		}
	}
}

func TestShuffled(t *testing.T) {
	h := dns.NewHandler(dns.Options{})
	h.SetTable(testTable())
	want := sorted([]netip.Addr{b0, b1, b2})
	first := map[netip.Addr]int{}
	orders := map[string]bool{}
	const n = 300
	for range n {
		got := addrs(t, serve(t, h, query("backend.apps.internal.", mdns.TypeA), false))
		if !slices.Equal(sorted(got), want) {
			t.Fatalf("answer %v, want every address of %v", got, want)
		}
		first[got[0]]++
		orders[fmt.Sprint(got)] = true
	}
	// Each of 3 addresses comes first with probability 1/3: fewer than 60
	// in 300 is about 4.5 standard deviations off.
	for _, ip := range want {
		if first[ip] < 60 {
			t.Errorf("%s came first %d times in %d answers, want about %d: %v", ip, first[ip], n, n/3, first)
		}
	}
	if len(orders) != 6 {
		t.Errorf("%d distinct orders of 3 addresses in %d answers, want all 6", len(orders), n)
	}
}

func TestEmptyTable(t *testing.T) {
	h := dns.NewHandler(dns.Options{})
	if resp := serve(t, h, query("backend.apps.internal.", mdns.TypeA), false); resp.Rcode != mdns.RcodeRefused {
		t.Errorf("with no table: rcode %s, want REFUSED (no internal domains yet)", mdns.RcodeToString[resp.Rcode])
	}
	h.SetTable(dns.NewTable([]string{"apps.internal"}, nil, nil))
	if resp := serve(t, h, query("backend.apps.internal.", mdns.TypeA), false); resp.Rcode != mdns.RcodeNameError {
		t.Errorf("with no routes: rcode %s, want NXDOMAIN", mdns.RcodeToString[resp.Rcode])
	}
	h.SetTable(nil)
	if resp := serve(t, h, query("backend.apps.internal.", mdns.TypeA), false); resp.Rcode != mdns.RcodeRefused {
		t.Errorf("after SetTable(nil): rcode %s, want REFUSED", mdns.RcodeToString[resp.Rcode])
	}
}

func TestBadQueries(t *testing.T) {
	h := dns.NewHandler(dns.Options{})
	h.SetTable(testTable())
	long := strings.Repeat(strings.Repeat("a", 63)+".", 4) + "apps.internal."
	withOPT := func(m *mdns.Msg, f func(*mdns.OPT)) *mdns.Msg {
		m.SetEdns0(4096, false)
		if f != nil {
			f(m.IsEdns0())
		}
		return m
	}
	for _, c := range []struct {
		what  string
		req   *mdns.Msg
		rcode int // -1: no answer
	}{
		{"a response", func() *mdns.Msg { m := query("backend.apps.internal.", mdns.TypeA); m.Response = true; return m }(), -1},
		{"no question", &mdns.Msg{MsgHdr: mdns.MsgHdr{Id: 7}}, mdns.RcodeFormatError},
		{"two questions", func() *mdns.Msg {
			m := query("backend.apps.internal.", mdns.TypeA)
			m.Question = append(m.Question, m.Question[0])
			return m
		}(), mdns.RcodeFormatError},
		{"opcode NOTIFY", func() *mdns.Msg { m := query("apps.internal.", mdns.TypeSOA); m.Opcode = mdns.OpcodeNotify; return m }(), mdns.RcodeNotImplemented},
		{"opcode UPDATE", new(mdns.Msg).SetUpdate("apps.internal."), mdns.RcodeNotImplemented},
		{"opcode STATUS", func() *mdns.Msg { m := query("apps.internal.", mdns.TypeA); m.Opcode = mdns.OpcodeStatus; return m }(), mdns.RcodeNotImplemented},
		{"class CHAOS", func() *mdns.Msg {
			m := query("version.bind.", mdns.TypeTXT)
			m.Question[0].Qclass = mdns.ClassCHAOS
			return m
		}(), mdns.RcodeRefused},
		{"class CHAOS internal", func() *mdns.Msg {
			m := query("backend.apps.internal.", mdns.TypeA)
			m.Question[0].Qclass = mdns.ClassCHAOS
			return m
		}(), mdns.RcodeRefused},
		{"class ANY", func() *mdns.Msg {
			m := query("backend.apps.internal.", mdns.TypeA)
			m.Question[0].Qclass = mdns.ClassANY
			return m
		}(), mdns.RcodeRefused},
		{"not fully qualified", query("backend.apps.internal", mdns.TypeA), mdns.RcodeFormatError},
		{"name over 255 bytes", query(long, mdns.TypeA), mdns.RcodeFormatError},
		{"empty label", query("backend..apps.internal.", mdns.TypeA), mdns.RcodeFormatError},
		{"qtype OPT", query("backend.apps.internal.", mdns.TypeOPT), mdns.RcodeFormatError},
		{"an answer in the query", func() *mdns.Msg {
			m := query("backend.apps.internal.", mdns.TypeA)
			m.Answer = []mdns.RR{&mdns.A{Hdr: mdns.RR_Header{Name: "x.", Rrtype: mdns.TypeA, Class: mdns.ClassINET}, A: net.IPv4(1, 2, 3, 4)}}
			return m
		}(), mdns.RcodeFormatError},
		{"two OPTs", func() *mdns.Msg {
			m := withOPT(query("backend.apps.internal.", mdns.TypeA), nil)
			return m.SetEdns0(512, false)
		}(), mdns.RcodeFormatError},
		{"OPT not at the root", withOPT(query("backend.apps.internal.", mdns.TypeA), func(o *mdns.OPT) { o.Hdr.Name = "x." }), mdns.RcodeFormatError},
		{"EDNS version 1", withOPT(query("backend.apps.internal.", mdns.TypeA), func(o *mdns.OPT) { o.SetVersion(1) }), mdns.RcodeBadVers},
	} {
		resp := serve(t, h, c.req, false)
		if c.rcode == -1 {
			if resp != nil {
				t.Errorf("%s: answered %v, want no answer", c.what, resp)
			}
			continue
		}
		if resp == nil {
			t.Errorf("%s: no answer, want %s", c.what, mdns.RcodeToString[c.rcode])
			continue
		}
		if resp.Rcode != c.rcode || resp.Id != c.req.Id || len(resp.Answer) != 0 {
			t.Errorf("%s: rcode %s, id %d, %d answers; want %s, id %d, none", c.what,
				mdns.RcodeToString[resp.Rcode], resp.Id, len(resp.Answer), mdns.RcodeToString[c.rcode], c.req.Id)
		}
		if c.rcode != mdns.RcodeFormatError && (c.req.IsEdns0() != nil) != (resp.IsEdns0() != nil) {
			t.Errorf("%s: OPT in answer %v, want one exactly when the query has one", c.what, resp.IsEdns0())
		}
	}
}

func TestEDNSAndTruncation(t *testing.T) {
	var ins []dns.Instance
	var want []netip.Addr
	for i := range 100 {
		ip := netip.AddrFrom4([4]byte{10, 255, byte(1 + i/50), byte(2 + i%50)})
		ins = append(ins, dns.Instance{App: "big", Index: i, IP: ip})
		want = append(want, ip)
	}
	h := dns.NewHandler(dns.Options{})
	h.SetTable(dns.NewTable([]string{"apps.internal"}, []dns.Route{{Host: "big", Domain: "apps.internal", Apps: []string{"big"}}}, ins))
	for _, c := range []struct {
		what      string
		tcp       bool
		edns      uint16 // 0: no OPT
		limit     int
		truncated bool
	}{
		{"udp without EDNS", false, 0, 512, true},
		{"udp, EDNS 1232", false, 1232, 1232, true},
		{"udp, EDNS 4096 (capped)", false, 4096, dns.MaxUDPSize, true},
		{"udp, EDNS 100 (raised to 512)", false, 100, 512, true},
		{"tcp", true, 0, 65535, false},
		{"tcp, EDNS 1232", true, 1232, 65535, false},
	} {
		req := query("big.apps.internal.", mdns.TypeA)
		if c.edns != 0 {
			req.SetEdns0(c.edns, false)
		}
		w := &recorder{tcp: c.tcp}
		h.ServeDNS(w, req)
		if len(w.msgs) != 1 {
			t.Fatalf("%s: %d answers", c.what, len(w.msgs))
		}
		resp, size := w.msgs[0], len(w.wire[0])
		got := addrs(t, resp)
		if size > c.limit || resp.Truncated != c.truncated || len(got) == 0 {
			t.Errorf("%s: %d bytes, TC %v, %d addresses; want at most %d bytes, TC %v", c.what, size, resp.Truncated, len(got), c.limit, c.truncated)
		}
		if !c.truncated && !slices.Equal(sorted(got), want) {
			t.Errorf("%s: %d addresses, want all %d", c.what, len(got), len(want))
		}
		if opt := resp.IsEdns0(); (opt != nil) != (c.edns != 0) || opt != nil && opt.UDPSize() != dns.MaxUDPSize {
			t.Errorf("%s: OPT %v, want one with size %d exactly when asked with one", c.what, opt, dns.MaxUDPSize)
		}
	}
}

// upstream starts a DNS server on 127.0.0.1 (UDP and TCP, same port) that
// answers every A query with 192.0.2.1, TTL 300, and counts the queries.
func upstream(t *testing.T) (addr string, queries *atomic.Int32) {
	t.Helper()
	queries = new(atomic.Int32)
	handler := mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		queries.Add(1)
		m := new(mdns.Msg).SetReply(r)
		m.RecursionAvailable = true
		if r.Question[0].Qtype == mdns.TypeA {
			m.Answer = append(m.Answer, &mdns.A{Hdr: mdns.RR_Header{Name: r.Question[0].Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 300},
				A: net.IPv4(192, 0, 2, 1)})
		}
		w.WriteMsg(m)
	})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		t.Skipf("TCP port %s taken: %v", pc.LocalAddr(), err)
	}
	for _, srv := range []*mdns.Server{{PacketConn: pc, Handler: handler}, {Listener: ln, Handler: handler}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
	}
	return pc.LocalAddr().String(), queries
}

// silent returns the address of a UDP socket on 127.0.0.1 that never
// answers.
func silent(t *testing.T) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().String()
}

func TestForward(t *testing.T) {
	up, n := upstream(t)
	dead := silent(t)
	h := dns.NewHandler(dns.Options{Upstreams: []string{dead, up}, UpstreamTimeout: 200 * time.Millisecond})
	h.SetTable(testTable())
	for _, tcp := range []bool{false, true} {
		req := query("Example.COM.", mdns.TypeA)
		req.Id = 4242
		start := time.Now()
		resp := serve(t, h, req, tcp)
		if resp == nil || resp.Rcode != mdns.RcodeSuccess || resp.Id != 4242 || !resp.RecursionAvailable || len(resp.Answer) != 1 ||
			resp.Answer[0].(*mdns.A).A.String() != "192.0.2.1" || resp.Answer[0].Header().Ttl != 300 {
			t.Errorf("forwarded (tcp %v) = %v, want the upstream's answer with id 4242", tcp, resp)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("forwarding past a silent upstream took %v", d)
		}
	}
	if n.Load() != 2 {
		t.Errorf("upstream got %d queries, want 2", n.Load())
	}
	// Internal names are never forwarded; with upstreams RA is set.
	resp := serve(t, h, query("backend.apps.internal.", mdns.TypeA), false)
	if len(addrs(t, resp)) != 3 || !resp.RecursionAvailable || !resp.Authoritative {
		t.Errorf("internal name with upstreams = %v", resp)
	}
	resp = serve(t, h, query("nope.apps.internal.", mdns.TypeA), false)
	if resp.Rcode != mdns.RcodeNameError || n.Load() != 2 {
		t.Errorf("unknown internal name with upstreams: rcode %s, upstream queries %d; want NXDOMAIN, not forwarded",
			mdns.RcodeToString[resp.Rcode], n.Load())
	}
}

func TestForwardFailure(t *testing.T) {
	h := dns.NewHandler(dns.Options{Upstreams: []string{silent(t)}, UpstreamTimeout: 100 * time.Millisecond})
	h.SetTable(testTable())
	start := time.Now()
	req := query("example.com.", mdns.TypeA)
	req.SetEdns0(1232, false)
	resp := serve(t, h, req, false)
	if resp == nil || resp.Rcode != mdns.RcodeServerFailure || resp.IsEdns0() == nil {
		t.Errorf("with a silent upstream = %v, want SERVFAIL with OPT", resp)
	}
	if d := time.Since(start); d < 100*time.Millisecond || d > time.Second {
		t.Errorf("SERVFAIL after %v, want after the 100ms timeout", d)
	}
	// A dialer that fails: SERVFAIL at once.
	h = dns.NewHandler(dns.Options{Upstreams: []string{"192.0.2.1:53"}, Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return nil, fmt.Errorf("no route to %s", addr)
	}})
	if resp := serve(t, h, query("example.com.", mdns.TypeA), false); resp.Rcode != mdns.RcodeServerFailure {
		t.Errorf("with a failing dialer: rcode %s, want SERVFAIL", mdns.RcodeToString[resp.Rcode])
	}
}

// TestSwapUnderLoad queries while tables are swapped: every answer is
// exactly one table's, never a mix, and the race detector sees no race.
func TestSwapUnderLoad(t *testing.T) {
	one := dns.NewTable([]string{"apps.internal"}, []dns.Route{{Host: "backend", Domain: "apps.internal", Apps: []string{"b"}}},
		[]dns.Instance{{App: "b", Index: 0, IP: b0}})
	two := dns.NewTable([]string{"apps.internal"}, []dns.Route{{Host: "backend", Domain: "apps.internal", Apps: []string{"b"}}},
		[]dns.Instance{{App: "b", Index: 0, IP: b1}, {App: "b", Index: 1, IP: b2}})
	h := dns.NewHandler(dns.Options{})
	h.SetTable(one)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var seen [2]atomic.Int32
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				got := sorted(addrs(t, serve(t, h, query("backend.apps.internal.", mdns.TypeA), false)))
				switch {
				case slices.Equal(got, []netip.Addr{b0}):
					seen[0].Add(1)
				case slices.Equal(got, sorted([]netip.Addr{b1, b2})):
					seen[1].Add(1)
				default:
					t.Errorf("answer %v is neither table's", got)
					return
				}
			}
		})
	}
	// Swap until the queries have seen both tables (they need CPU time on a
	// loaded machine: yield to them), for at most 10 seconds.
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < 2000 || seen[0].Load() == 0 || seen[1].Load() == 0; i++ {
		if i%2 == 0 {
			h.SetTable(two)
		} else {
			h.SetTable(one)
		}
		runtime.Gosched()
		if time.Now().After(deadline) {
			t.Error("queries never saw both tables")
			break
		}
	}
	close(stop)
	wg.Wait()
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := dns.NewHandler(dns.Options{Registerer: reg})
	h.SetTable(testTable())
	serve(t, h, query("backend.apps.internal.", mdns.TypeA), false)
	serve(t, h, query("backend.apps.internal.", mdns.TypeA), false)
	serve(t, h, query("backend.apps.internal.", mdns.TypeAAAA), false)
	serve(t, h, query("nope.apps.internal.", mdns.TypeA), false)
	serve(t, h, query("example.com.", mdns.TypeA), false)
	serve(t, h, query("x.apps.internal.", mdns.TypeNAPTR), false)
	// A second handler on the same registry shares the metrics.
	h2 := dns.NewHandler(dns.Options{Registerer: reg})
	serve(t, h2, query("backend.apps.internal.", mdns.TypeA), false)

	want := `
# HELP trellis_dns_queries_total DNS queries answered, by query type and response code ("dropped": no answer sent).
# TYPE trellis_dns_queries_total counter
trellis_dns_queries_total{rcode="NOERROR",type="A"} 2
trellis_dns_queries_total{rcode="NOERROR",type="AAAA"} 1
trellis_dns_queries_total{rcode="NXDOMAIN",type="A"} 1
trellis_dns_queries_total{rcode="NXDOMAIN",type="other"} 1
trellis_dns_queries_total{rcode="REFUSED",type="A"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "trellis_dns_queries_total"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(reg, "trellis_dns_query_duration_seconds"); n != 2 {
		t.Errorf("duration series = %d, want 2 (trellis, upstream)", n)
	}
}
