package dns

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

const (
	// MaxUDPSize is the largest UDP answer the server sends, whatever a
	// client's EDNS0 buffer size says: the size RFC 9715 and DNS Flag Day
	// 2020 recommend, which avoids IP fragmentation.
	MaxUDPSize = 1232
	// DefaultUpstreamTimeout bounds one attempt to forward a query.
	DefaultUpstreamTimeout = 2 * time.Second
	// maxForwards bounds the queries being forwarded at once; more get
	// SERVFAIL at once, so that a slow upstream cannot pile up goroutines.
	maxForwards = 1024
)

// Options configure a Handler (and a Server).
type Options struct {
	// Upstreams are the servers ("host:port") that names outside the
	// internal domains are forwarded to, tried in order. None (the default)
	// answers such names REFUSED. Never point this at the machine's own
	// resolver in tests.
	Upstreams []string
	// UpstreamTimeout bounds each attempt to forward; default
	// DefaultUpstreamTimeout.
	UpstreamTimeout time.Duration
	// Dial opens connections to upstreams ("udp" or "tcp"); default a
	// net.Dialer, which dials from the calling process's namespace.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// Registerer receives the metrics; nil means none. Handlers and servers
	// sharing a Registerer share the metrics.
	Registerer prometheus.Registerer
	// Logger receives forwarding failures at debug level; nil discards.
	Logger *slog.Logger
}

// Handler answers DNS queries from its current Table. It implements
// miekg/dns's Handler; Server runs it on sockets in a cell's namespace.
// Its methods are safe for concurrent use.
type Handler struct {
	table    atomic.Pointer[Table]
	o        Options
	forwards chan struct{} // semaphore of queries being forwarded
	m        *metrics
	log      *slog.Logger
}

// NewHandler returns a Handler with an empty table: no internal domains,
// so every name is REFUSED (or forwarded) until SetTable.
func NewHandler(o Options) *Handler {
	if o.UpstreamTimeout <= 0 {
		o.UpstreamTimeout = DefaultUpstreamTimeout
	}
	if o.Dial == nil {
		o.Dial = (&net.Dialer{}).DialContext
	}
	h := &Handler{o: o, forwards: make(chan struct{}, maxForwards), m: newMetrics(o.Registerer),
		log: o.Logger}
	if h.log == nil {
		h.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	h.SetTable(NewTable(nil, nil, nil))
	return h
}

// SetTable makes t the table answers come from, at once for every query
// that starts afterwards. A nil t is an empty table.
func (h *Handler) SetTable(t *Table) {
	if t == nil {
		t = NewTable(nil, nil, nil)
	}
	h.table.Store(t)
}

// Table returns the table answers currently come from.
func (h *Handler) Table() *Table { return h.table.Load() }

// ServeDNS answers req on w. Queries for internal names are answered from
// the table; others are forwarded or REFUSED. A response to UDP is
// truncated (TC) to the client's EDNS0 buffer size, at most MaxUDPSize, or
// to 512 bytes without EDNS0.
func (h *Handler) ServeDNS(w mdns.ResponseWriter, req *mdns.Msg) {
	start := time.Now()
	tcp := isTCP(w)
	resp, forward := answer(h.table.Load(), req, len(h.o.Upstreams) > 0)
	by := "trellis"
	if forward {
		by = "upstream"
		resp = h.forward(req, tcp)
	}
	qtype := typeLabel(req)
	if resp == nil {
		h.m.query(qtype, "dropped", by, time.Since(start))
		return
	}
	limit := mdns.MaxMsgSize
	if !tcp {
		limit = udpLimit(req)
	}
	resp.Truncate(limit)
	if err := w.WriteMsg(resp); err != nil {
		h.log.Debug("dns: write answer", "err", err)
	}
	h.m.query(qtype, rcodeLabel(resp.Rcode), by, time.Since(start))
}

// answer computes the response to req from t. It returns nil for a
// message that gets no response (a response, not a query), and forward =
// true (with a nil response) when req is for a name outside the internal
// domains and upstreams exist.
func answer(t *Table, req *mdns.Msg, upstreams bool) (resp *mdns.Msg, forward bool) {
	if req.Response {
		return nil, false
	}
	resp = new(mdns.Msg)
	resp.Id = req.Id
	resp.Response = true
	resp.Opcode = req.Opcode
	resp.RecursionAvailable = upstreams
	fail := func(rcode int) (*mdns.Msg, bool) {
		resp.Rcode = rcode
		resp.Answer = nil
		return resp, false
	}
	if req.Opcode != mdns.OpcodeQuery {
		return fail(mdns.RcodeNotImplemented)
	}
	resp.RecursionDesired = req.RecursionDesired
	resp.CheckingDisabled = req.CheckingDisabled
	// EDNS0 (RFC 6891): at most one OPT, owned by the root; we speak
	// version 0 only, and answer with our own OPT whenever asked with one.
	var opt *mdns.OPT
	for _, rr := range req.Extra {
		if o, ok := rr.(*mdns.OPT); ok {
			if opt != nil || o.Hdr.Name != "." {
				return fail(mdns.RcodeFormatError)
			}
			opt = o
		}
	}
	if opt != nil {
		resp.SetEdns0(MaxUDPSize, false)
		if opt.Version() != 0 {
			return fail(mdns.RcodeBadVers)
		}
	}
	if len(req.Question) != 1 || len(req.Answer) > 0 || len(req.Ns) > 0 {
		return fail(mdns.RcodeFormatError)
	}
	q := req.Question[0]
	resp.Question = []mdns.Question{q}
	if _, ok := mdns.IsDomainName(q.Name); !ok || !mdns.IsFqdn(q.Name) {
		resp.Question = nil
		return fail(mdns.RcodeFormatError)
	}
	switch q.Qtype {
	case mdns.TypeOPT, mdns.TypeTSIG, mdns.TypeTKEY, mdns.TypeNone:
		resp.Question = nil
		return fail(mdns.RcodeFormatError)
	}
	name := strings.ToLower(q.Name)
	if q.Qclass != mdns.ClassINET || !t.internal(name) {
		if q.Qclass == mdns.ClassINET && upstreams {
			return nil, true
		}
		return fail(mdns.RcodeRefused)
	}
	resp.Authoritative = true
	if q.Qtype == mdns.TypeAXFR || q.Qtype == mdns.TypeIXFR {
		resp.Authoritative = false
		return fail(mdns.RcodeRefused)
	}
	e := t.lookup(name)
	if e == nil {
		return fail(mdns.RcodeNameError)
	}
	if q.Qtype != mdns.TypeA || len(e.addrs) == 0 {
		return resp, false
	}
	rrs := make([]mdns.A, len(e.addrs))
	resp.Answer = make([]mdns.RR, len(e.addrs))
	hdr := mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 0}
	for i, ip := range e.addrs {
		a4 := ip.As4()
		rrs[i] = mdns.A{Hdr: hdr, A: net.IP(a4[:])}
		resp.Answer[i] = &rrs[i]
	}
	rand.Shuffle(len(resp.Answer), func(i, j int) { resp.Answer[i], resp.Answer[j] = resp.Answer[j], resp.Answer[i] })
	return resp, false
}

// udpLimit returns the largest UDP answer req's sender accepts.
func udpLimit(req *mdns.Msg) int {
	if opt := req.IsEdns0(); opt != nil {
		return min(max(int(opt.UDPSize()), mdns.MinMsgSize), MaxUDPSize)
	}
	return mdns.MinMsgSize
}

func isTCP(w mdns.ResponseWriter) bool {
	_, ok := w.LocalAddr().(*net.TCPAddr)
	return ok
}

// forward sends req to the upstreams in order and returns the first
// answer, with req's ID; SERVFAIL when none answers.
func (h *Handler) forward(req *mdns.Msg, tcp bool) *mdns.Msg {
	fail := func() *mdns.Msg {
		resp := new(mdns.Msg).SetRcode(req, mdns.RcodeServerFailure)
		resp.RecursionAvailable = true
		if req.IsEdns0() != nil {
			resp.SetEdns0(MaxUDPSize, false)
		}
		return resp
	}
	select {
	case h.forwards <- struct{}{}:
		defer func() { <-h.forwards }()
	default:
		h.log.Debug("dns: too many queries being forwarded", "name", req.Question[0].Name)
		return fail()
	}
	network := "udp"
	if tcp {
		network = "tcp"
	}
	q := req.Copy()
	q.Id = mdns.Id()
	for _, up := range h.o.Upstreams {
		ctx, cancel := context.WithTimeout(context.Background(), h.o.UpstreamTimeout)
		r, err := h.exchange(ctx, network, up, q)
		cancel()
		if err != nil {
			h.log.Debug("dns: forward", "upstream", up, "name", q.Question[0].Name, "err", err)
			continue
		}
		r.Id = req.Id
		return r
	}
	return fail()
}

var errMismatch = errors.New("answer does not match the question")

// exchange sends q to addr over network and returns the answer.
func (h *Handler) exchange(ctx context.Context, network, addr string, q *mdns.Msg) (*mdns.Msg, error) {
	conn, err := h.o.Dial(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	co := &mdns.Conn{Conn: conn, UDPSize: mdns.MaxMsgSize}
	if err := co.WriteMsg(q); err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	for {
		r, err := co.ReadMsg()
		if err != nil {
			return nil, fmt.Errorf("receive: %w", err)
		}
		if r.Id != q.Id || len(r.Question) != 1 || !strings.EqualFold(r.Question[0].Name, q.Question[0].Name) ||
			r.Question[0].Qtype != q.Question[0].Qtype {
			if network == "udp" {
				continue // a stray or spoofed datagram: keep waiting
			}
			return nil, errMismatch
		}
		return r, nil
	}
}
