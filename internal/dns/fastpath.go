package dns

import (
	"encoding/binary"
	"math/rand/v2"

	mdns "github.com/miekg/dns"
)

// The fast path answers the common UDP query — one question, class IN, a
// plain name, at most an EDNS0 OPT — straight from and into wire bytes,
// without allocating: the question is copied from the query (so the
// client's spelling and 0x20 case randomisation come back unchanged) and
// each A record is 16 bytes pointing back at it. Everything else (bad
// packets, other classes, zone transfers, EDNS versions other than 0,
// forwarding) goes to Handler, which is the reference: FuzzFastPath checks
// that both give the same answers.

const (
	flagQR = 1 << 15
	flagAA = 1 << 10
	flagTC = 1 << 9
	flagRD = 1 << 8
	flagRA = 1 << 7
	flagCD = 1 << 4

	optLen = 11 // an OPT record without options
	aLen   = 16 // an A record with a compressed name
)

// scratch is a fast-path worker's reusable memory.
type scratch struct {
	key   [256]byte // the lowercased question name, dotted, with the trailing dot
	order []int     // shuffled answer order
}

// fastAnswer appends the answer to the query pkt to out and returns it,
// with the query type and response code for the metrics. ok is false when
// the fast path does not handle pkt; then Handler must.
func (h *Handler) fastAnswer(pkt, out []byte, s *scratch) (resp []byte, qtype uint16, rcode int, ok bool) {
	if len(pkt) < 12 {
		return nil, 0, 0, false
	}
	flags := binary.BigEndian.Uint16(pkt[2:])
	if flags&flagQR != 0 || (flags>>11)&0xF != mdns.OpcodeQuery ||
		binary.BigEndian.Uint16(pkt[4:]) != 1 || binary.BigEndian.Uint16(pkt[6:]) != 0 ||
		binary.BigEndian.Uint16(pkt[8:]) != 0 {
		return nil, 0, 0, false
	}
	arcount := binary.BigEndian.Uint16(pkt[10:])
	if arcount > 1 {
		return nil, 0, 0, false
	}
	// The question name: plain labels of letters, digits, '-' and '_' only,
	// which miekg/dns would show without escapes.
	off, k := 12, 0
	for {
		if off >= len(pkt) {
			return nil, 0, 0, false
		}
		n := int(pkt[off])
		off++
		if n == 0 {
			break
		}
		if n > 63 || off+n > len(pkt) || k+n+1 > 254 {
			return nil, 0, 0, false
		}
		for _, c := range pkt[off : off+n] {
			switch {
			case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
			case 'A' <= c && c <= 'Z':
				c += 'a' - 'A'
			default:
				return nil, 0, 0, false
			}
			s.key[k] = c
			k++
		}
		s.key[k] = '.'
		k++
		off += n
	}
	if k == 0 || off+4 > len(pkt) {
		return nil, 0, 0, false // the root, or a short question
	}
	qtype = binary.BigEndian.Uint16(pkt[off:])
	if binary.BigEndian.Uint16(pkt[off+2:]) != mdns.ClassINET {
		return nil, 0, 0, false
	}
	switch qtype {
	case mdns.TypeNone, mdns.TypeOPT, mdns.TypeTSIG, mdns.TypeTKEY, mdns.TypeAXFR, mdns.TypeIXFR:
		return nil, 0, 0, false
	}
	qend := off + 4
	limit, edns := mdns.MinMsgSize, false
	if arcount == 1 {
		// An OPT without options: root name, type 41, class = UDP size,
		// TTL = extended rcode, version 0 and flags, RDLENGTH 0, and
		// nothing after it. (Options — cookies, client subnets — are for
		// Handler to parse.)
		o := pkt[qend:]
		if len(o) != optLen || o[0] != 0 || binary.BigEndian.Uint16(o[1:]) != mdns.TypeOPT ||
			o[6] != 0 || binary.BigEndian.Uint16(o[9:]) != 0 {
			return nil, 0, 0, false
		}
		limit = min(max(int(binary.BigEndian.Uint16(o[3:])), mdns.MinMsgSize), MaxUDPSize)
		edns = true
	} else if qend != len(pkt) {
		return nil, 0, 0, false
	}

	t := h.table.Load()
	upstreams := len(h.o.Upstreams) > 0
	e := t.names[string(s.key[:k])]
	rflags := flagQR | int(flags&(flagRD|flagCD))
	if upstreams {
		rflags |= flagRA
	}
	switch {
	case e != nil:
		rflags |= flagAA
		rcode = mdns.RcodeSuccess
	case t.internalKey(s.key[:k]):
		rflags |= flagAA
		rcode = mdns.RcodeNameError
	case upstreams:
		return nil, 0, 0, false // forward
	default:
		rcode = mdns.RcodeRefused
	}
	var n int
	if e != nil && qtype == mdns.TypeA {
		n = len(e.addrs)
	}
	room := limit - qend
	if edns {
		room -= optLen
	}
	if fit := room / aLen; n > fit {
		n = max(fit, 0)
		rflags |= flagTC
	}
	out = append(out, pkt[:qend]...)
	binary.BigEndian.PutUint16(out[2:], uint16(rflags|rcode))
	binary.BigEndian.PutUint16(out[6:], uint16(n))
	binary.BigEndian.PutUint16(out[10:], 0)
	if n > 0 {
		// A random choice of n of the addresses, in random order: the
		// first n steps of a Fisher-Yates shuffle.
		all := len(e.addrs)
		s.order = s.order[:0]
		for i := range all {
			s.order = append(s.order, i)
		}
		for i := range n {
			j := i + rand.IntN(all-i)
			s.order[i], s.order[j] = s.order[j], s.order[i]
			ip := e.addrs[s.order[i]].As4()
			out = append(out, 0xC0, 12, 0, byte(mdns.TypeA), 0, byte(mdns.ClassINET), 0, 0, 0, 0, 0, 4,
				ip[0], ip[1], ip[2], ip[3])
		}
	}
	if edns {
		binary.BigEndian.PutUint16(out[10:], 1)
		out = append(out, 0, 0, byte(mdns.TypeOPT), byte(MaxUDPSize>>8), byte(MaxUDPSize&0xFF), 0, 0, 0, 0, 0, 0)
	}
	return out, qtype, rcode, true
}

// internalKey is internal for a name in the fast path's scratch key.
func (t *Table) internalKey(key []byte) bool {
	for i := 0; i < len(key); i++ {
		if i == 0 || key[i-1] == '.' {
			if t.domains[string(key[i:])] {
				return true
			}
		}
	}
	return false
}
