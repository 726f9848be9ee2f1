package dns

import (
	"errors"
	"strconv"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the server's Prometheus metrics:
//
//	trellis_dns_queries_total{type, rcode}              queries by type and result
//	trellis_dns_query_duration_seconds{answered_by}     time to answer
//
// type is A, AAAA, ANY, ... or "other" (bounded, so that a client cannot
// blow up the series); rcode is NOERROR, NXDOMAIN, ..., or "dropped" for a
// message that got no answer; answered_by is "trellis" or "upstream".
type metrics struct {
	queries  *prometheus.CounterVec
	duration *prometheus.HistogramVec

	// counters caches queries' children: a label lookup per query is
	// measurable at 100,000 queries per second.
	counters sync.Map // counterKey → prometheus.Counter
	observe  [2]prometheus.Observer
}

type counterKey struct{ qtype, rcode string }

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "trellis_dns_queries_total",
			Help: "DNS queries answered, by query type and response code (\"dropped\": no answer sent)."},
			[]string{"type", "rcode"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "trellis_dns_query_duration_seconds",
			Help:    "Time from a parsed query to its answer written, by who answered it (trellis or upstream).",
			Buckets: []float64{25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.1, 0.5, 2.5}},
			[]string{"answered_by"}),
	}
	if reg != nil {
		m.queries = register(reg, m.queries)
		m.duration = register(reg, m.duration)
	}
	m.observe[0] = m.duration.WithLabelValues("trellis")
	m.observe[1] = m.duration.WithLabelValues("upstream")
	return m
}

// register registers c on reg, or returns the collector registered before
// under the same name, so that several servers in one process (the cells
// of `trellis up`) share their metrics.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if old, ok := are.ExistingCollector.(C); ok {
				return old
			}
		}
		panic(err)
	}
	return c
}

// query counts one query and its latency.
func (m *metrics) query(qtype, rcode, answeredBy string, d time.Duration) {
	k := counterKey{qtype, rcode}
	c, ok := m.counters.Load(k)
	if !ok {
		c, _ = m.counters.LoadOrStore(k, m.queries.WithLabelValues(qtype, rcode))
	}
	c.(prometheus.Counter).Inc()
	i := 0
	if answeredBy == "upstream" {
		i = 1
	}
	m.observe[i].Observe(d.Seconds())
}

// typeLabels are the query types counted under their own name.
var typeLabels = map[uint16]string{}

func init() {
	for _, t := range []uint16{mdns.TypeA, mdns.TypeAAAA, mdns.TypeANY, mdns.TypeCNAME, mdns.TypeHTTPS,
		mdns.TypeMX, mdns.TypeNS, mdns.TypePTR, mdns.TypeSOA, mdns.TypeSRV, mdns.TypeSVCB, mdns.TypeTXT,
		mdns.TypeAXFR, mdns.TypeIXFR} {
		typeLabels[t] = mdns.TypeToString[t]
	}
}

// typeLabel returns the type label of req's question: "none" without
// exactly one question, "other" for a type without its own label.
func typeLabel(req *mdns.Msg) string {
	if len(req.Question) != 1 {
		return "none"
	}
	return typeName(req.Question[0].Qtype)
}

// typeName returns the type label of qtype.
func typeName(qtype uint16) string {
	if l, ok := typeLabels[qtype]; ok {
		return l
	}
	return "other"
}

// rcodeLabel returns the name of rcode: NOERROR, NXDOMAIN, ....
func rcodeLabel(rcode int) string {
	if s, ok := mdns.RcodeToString[rcode]; ok {
		return s
	}
	return strconv.Itoa(rcode)
}
