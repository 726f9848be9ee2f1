package dns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"

	mdns "github.com/miekg/dns"
)

// fuzzHandlers are the handlers the fuzz tests drive: one without
// upstreams, and one with an upstream it can never reach (its dialer fails
// at once), so that the fuzzer touches no network.
func fuzzHandlers() []*Handler {
	var ins []Instance
	for i := range 120 {
		ins = append(ins, Instance{App: "big", Index: i, IP: netip.AddrFrom4([4]byte{10, 255, byte(1 + i/100), byte(2 + i%100)})})
	}
	ins = append(ins, Instance{App: "b", Index: 0, IP: netip.MustParseAddr("10.255.9.2")},
		Instance{App: "b", Index: 1, IP: netip.MustParseAddr("10.255.9.3")})
	t := NewTable([]string{"apps.internal", "x.y"}, []Route{
		{Host: "backend", Domain: "apps.internal", Apps: []string{"b"}},
		{Host: "big", Domain: "apps.internal", Apps: []string{"big"}},
		{Host: "idle", Domain: "apps.internal", Apps: []string{"none"}},
		{Host: "a-b_c", Domain: "x.y", Apps: []string{"b"}},
	}, ins)
	plain := NewHandler(Options{})
	plain.SetTable(t)
	unreachable := NewHandler(Options{Upstreams: []string{"192.0.2.1:53"},
		Dial: func(context.Context, string, string) (net.Conn, error) {
			return nil, errors.New("no network in fuzz tests")
		}})
	unreachable.SetTable(t)
	return []*Handler{plain, unreachable}
}

// fuzzSeeds are queries worth starting from: every path of the handler.
func fuzzSeeds() [][]byte {
	var seeds [][]byte
	add := func(m *mdns.Msg) {
		if b, err := m.Pack(); err == nil {
			seeds = append(seeds, b)
		}
	}
	for _, name := range []string{"backend.apps.internal.", "BIG.apps.internal.", "0.backend.apps.internal.", "idle.apps.internal.",
		"apps.internal.", "nope.apps.internal.", "a-b_c.x.y.", "example.com.", "."} {
		for _, qtype := range []uint16{mdns.TypeA, mdns.TypeAAAA, mdns.TypeANY, mdns.TypeAXFR} {
			add(new(mdns.Msg).SetQuestion(name, qtype))
			add(new(mdns.Msg).SetQuestion(name, qtype).SetEdns0(1232, false))
		}
	}
	m := new(mdns.Msg).SetQuestion("big.apps.internal.", mdns.TypeA).SetEdns0(600, true)
	m.IsEdns0().Option = append(m.IsEdns0().Option, &mdns.EDNS0_COOKIE{Code: mdns.EDNS0COOKIE, Cookie: "0102030405060708"})
	add(m)
	m = new(mdns.Msg).SetQuestion("backend.apps.internal.", mdns.TypeA)
	m.Question = append(m.Question, m.Question[0])
	add(m)
	add(new(mdns.Msg).SetUpdate("apps.internal."))
	m = new(mdns.Msg).SetQuestion("backend.apps.internal.", mdns.TypeA)
	m.Question[0].Qclass = mdns.ClassCHAOS
	add(m)
	seeds = append(seeds, []byte{1, 2, 3}, make([]byte, 12))
	return seeds
}

// FuzzHandler feeds arbitrary bytes that parse as a message to the
// handler, over UDP and TCP: it must not panic, and whatever it answers
// must pack, answer the query's ID and fit the transport.
func FuzzHandler(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	hs := fuzzHandlers()
	f.Fuzz(func(t *testing.T, pkt []byte) {
		req := new(mdns.Msg)
		if req.Unpack(pkt) != nil {
			return
		}
		for _, h := range hs {
			for _, tcp := range []bool{false, true} {
				w := &fuzzWriter{tcp: tcp}
				h.ServeDNS(w, req)
				if w.err != nil {
					t.Fatalf("answer to %v: %v", req, w.err)
				}
				if len(w.wire) > 1 {
					t.Fatalf("%d answers to one query", len(w.wire))
				}
				if len(w.wire) == 0 {
					if !req.Response {
						t.Fatalf("no answer to query %v", req)
					}
					continue
				}
				resp := w.msg
				if resp.Id != req.Id || !resp.Response {
					t.Fatalf("answer %v does not answer %v", resp.MsgHdr, req.MsgHdr)
				}
				if limit := udpLimit(req); !tcp && len(w.wire[0]) > limit {
					t.Fatalf("udp answer of %d bytes, limit %d", len(w.wire[0]), limit)
				}
				for _, rr := range resp.Answer {
					if rr.Header().Ttl != 0 {
						t.Fatalf("answer %v has a TTL", rr)
					}
				}
			}
		}
	})
}

// FuzzFastPath checks the fast path against the handler: whatever the
// fast path answers, the handler answers the same (header, question,
// addresses, OPT), and the fast path answers nothing that does not parse.
func FuzzFastPath(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	hs := fuzzHandlers()
	var sc scratch
	f.Fuzz(func(t *testing.T, pkt []byte) {
		for _, h := range hs {
			fast, qtype, rcode, ok := h.fastAnswer(pkt, nil, &sc)
			if !ok {
				continue
			}
			req := new(mdns.Msg)
			if err := req.Unpack(pkt); err != nil {
				t.Fatalf("fast path answered %x, which does not parse: %v", pkt, err)
			}
			var got mdns.Msg
			if err := got.Unpack(fast); err != nil {
				t.Fatalf("fast answer %x does not parse: %v", fast, err)
			}
			if len(fast) > udpLimit(req) {
				t.Fatalf("fast answer of %d bytes, limit %d", len(fast), udpLimit(req))
			}
			if qtype != req.Question[0].Qtype || rcode != got.Rcode {
				t.Fatalf("fast path reports type %d rcode %d, answer has %d, %d", qtype, rcode, req.Question[0].Qtype, got.Rcode)
			}
			w := &fuzzWriter{}
			h.ServeDNS(w, req)
			if w.err != nil || w.msg == nil {
				t.Fatalf("handler: %v, %v", w.msg, w.err)
			}
			want := w.msg
			if got.MsgHdr != want.MsgHdr {
				t.Fatalf("query %v:\nfast header %+v\nwant        %+v", req, got.MsgHdr, want.MsgHdr)
			}
			if !slices.Equal(got.Question, want.Question) {
				t.Fatalf("fast question %v, want %v", got.Question, want.Question)
			}
			g, wa := fuzzAddrs(got.Answer), fuzzAddrs(want.Answer)
			if len(g) != len(wa) || !got.Truncated && !slices.Equal(g, wa) {
				t.Fatalf("query %v: fast answers %v, want %v", req.Question, g, wa)
			}
			gopt, wopt := got.IsEdns0(), want.IsEdns0()
			if (gopt == nil) != (wopt == nil) || gopt != nil && gopt.String() != wopt.String() || len(got.Ns) != len(want.Ns) ||
				len(got.Extra) != len(want.Extra) {
				t.Fatalf("fast additional %v, authority %v; want %v, %v", got.Extra, got.Ns, want.Extra, want.Ns)
			}
		}
	})
}

func fuzzAddrs(rrs []mdns.RR) []string {
	var out []string
	for _, rr := range rrs {
		out = append(out, rr.String())
	}
	slices.Sort(out)
	return out
}

// fuzzWriter keeps the one answer a handler writes, after packing it.
type fuzzWriter struct {
	tcp  bool
	wire [][]byte
	msg  *mdns.Msg
	err  error
}

func (w *fuzzWriter) LocalAddr() net.Addr {
	if w.tcp {
		return &net.TCPAddr{IP: net.IPv4(169, 254, 0, 2), Port: 53}
	}
	return &net.UDPAddr{IP: net.IPv4(169, 254, 0, 2), Port: 53}
}
func (w *fuzzWriter) RemoteAddr() net.Addr { return &net.UDPAddr{IP: net.IPv4(10, 255, 1, 9), Port: 1} }
func (w *fuzzWriter) WriteMsg(m *mdns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		w.err = err
		return err
	}
	w.wire = append(w.wire, b)
	w.msg = new(mdns.Msg)
	w.err = w.msg.Unpack(b)
	return w.err
}
func (w *fuzzWriter) Write(b []byte) (int, error) { w.err = errors.New("raw write"); return 0, w.err }
func (w *fuzzWriter) Close() error                { return nil }
func (w *fuzzWriter) TsigStatus() error           { return nil }
func (w *fuzzWriter) TsigTimersOnly(bool)         {}
func (w *fuzzWriter) Hijack()                     {}
