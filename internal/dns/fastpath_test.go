package dns

import (
	"testing"

	mdns "github.com/miekg/dns"
)

// BenchmarkFastPath answers an A query for a name with 5 addresses from
// wire bytes to wire bytes; it must not allocate.
func BenchmarkFastPath(b *testing.B) {
	h := fuzzHandlers()[0]
	pkt, _ := new(mdns.Msg).SetQuestion("Backend.apps.internal.", mdns.TypeA).Pack()
	out := make([]byte, 0, MaxUDPSize)
	var sc scratch
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, ok := h.fastAnswer(pkt, out[:0], &sc); !ok {
			b.Fatal("not on the fast path")
		}
	}
}

// BenchmarkHandler answers the same query through Handler and dns.Msg.
func BenchmarkHandler(b *testing.B) {
	h := fuzzHandlers()[0]
	req := new(mdns.Msg).SetQuestion("Backend.apps.internal.", mdns.TypeA)
	w := &discardWriter{}
	b.ReportAllocs()
	for b.Loop() {
		h.ServeDNS(w, req)
	}
}

func TestFastPathDoesNotAllocate(t *testing.T) {
	h := fuzzHandlers()[0]
	out := make([]byte, 0, MaxUDPSize)
	var sc scratch
	for _, name := range []string{"backend.apps.internal.", "BIG.apps.internal.", "nope.apps.internal.", "example.com."} {
		pkt, _ := new(mdns.Msg).SetQuestion(name, mdns.TypeA).SetEdns0(1232, false).Pack()
		h.fastAnswer(pkt, out[:0], &sc) // warm up sc.order
		if n := testing.AllocsPerRun(100, func() { h.fastAnswer(pkt, out[:0], &sc) }); n != 0 {
			t.Errorf("fastAnswer(%s) allocates %v times", name, n)
		}
	}
}

type discardWriter struct{ fuzzWriter }

func (w *discardWriter) WriteMsg(m *mdns.Msg) error { _, err := m.Pack(); return err }
