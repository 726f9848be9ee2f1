package dataplane

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Egress: the nftables table through which a cell lets its instances reach
// what lives outside the overlay, only where an application security
// group allows it, with the cell's address as source (masquerade).
// Overlay traffic is neither filtered nor translated here (policies govern
// it). Planning is pure (compileEgress); the kernel side is in
// egress_linux.go.

// EgressTable is the nftables table (family inet) that holds egress
// filtering and NAT, apart from the policy table so that either can be
// replaced without the other.
const EgressTable = "trellis_egress"

// LogPrefixEgressDenied prefixes the NFLOG messages of refused egress.
const LogPrefixEgressDenied = "trellis-egress-deny"

// LogPrefixEgressAllowed prefixes the NFLOG messages of logged egress.
const LogPrefixEgressAllowed = "trellis-egress-allow"

// ctMarkEgress is set in the conntrack mark of every egress connection the
// table accepted, so that a revocation finds them.
const ctMarkEgress = 0x20000

// Egress is a cell's egress state: default deny, then the rules.
type Egress struct {
	// Overlay is the foundation's overlay network: traffic from an
	// instance to it is not egress.
	Overlay netip.Prefix
	// Guarded are addresses of the cell itself (its underlay addresses)
	// that instances may reach only where a rule names them.
	Guarded []netip.Addr
	// Rules are the allowed egress tuples of the local instances.
	Rules []EgressRule
	// DenyLogGroup is the NFLOG group that receives refused egress
	// attempts (rate limited as policy logs are); 0 logs nothing.
	DenyLogGroup uint16
	// AllowLogGroup is the NFLOG group that receives the first packet of
	// accepted new connections between a source and a destination that a
	// rule with Log names (rate limited); 0 logs nothing.
	AllowLogGroup uint16
	// LogRate is the log limit per second; 0 means DefaultLogRate.
	LogRate int
}

// EgressRule allows packets from local instance SrcIP to DestStart..DestEnd
// on Protocol: "tcp" or "udp" to ports StartPort..EndPort, "icmp" of
// ICMPType and ICMPCode (-1: any), or "all".
type EgressRule struct {
	SrcIP              netip.Addr
	Protocol           string
	DestStart, DestEnd netip.Addr
	StartPort, EndPort uint16
	ICMPType, ICMPCode int
	// Log asks for the rule's accepted connections to be logged (see
	// Egress.AllowLogGroup).
	Log bool
}

// String describes the rule for errors and logs:
// "10.255.1.2 -> 203.0.113.10-203.0.113.20 tcp/80".
func (r EgressRule) String() string {
	dst := r.DestStart.String()
	if r.DestEnd != r.DestStart {
		dst += "-" + r.DestEnd.String()
	}
	s := fmt.Sprintf("%s -> %s %s", r.SrcIP, dst, r.Protocol)
	switch r.Protocol {
	case "tcp", "udp":
		s += fmt.Sprintf("/%d", r.StartPort)
		if r.EndPort != r.StartPort {
			s += fmt.Sprintf("-%d", r.EndPort)
		}
	case "icmp":
		s += fmt.Sprintf(" type %d code %d", r.ICMPType, r.ICMPCode)
	}
	return s
}

// egressElem is an element of one of the table's interval sets: from src,
// on proto (tcp, udp; icmp with ports holding type<<8|code; 0 for all
// protocols, ports unused), to destinations dlo..dhi and ports plo..phi.
type egressElem struct {
	src      netip.Addr
	proto    uint8
	dlo, dhi uint32
	plo, phi uint16
}

// egressPlan is a validated Egress in the form the kernel holds. The
// elements are disjoint (the kernel's concatenated interval sets refuse
// partly overlapping ones) and sorted.
type egressPlan struct {
	overlay netip.Prefix
	guarded []netip.Addr
	elems   []egressElem
	logGrp  uint16
	// allowGrp and logged: accepted new connections from a source to a
	// destination range in logged are logged to allowGrp.
	allowGrp uint16
	logged   []egressElem
	rate     int
	sum      string
}

// protoAll is the egressElem proto of rules for every protocol.
const protoAll = 0

// compileEgress validates e and turns it into a plan.
func compileEgress(e Egress) (*egressPlan, error) {
	if !e.Overlay.IsValid() || !e.Overlay.Addr().Is4() {
		return nil, fmt.Errorf("egress: overlay %v is not an IPv4 network", e.Overlay)
	}
	rate := cmp.Or(e.LogRate, DefaultLogRate)
	if rate < 0 {
		return nil, fmt.Errorf("egress: log rate %d is negative", e.LogRate)
	}
	p := &egressPlan{overlay: e.Overlay.Masked(), logGrp: e.DenyLogGroup, rate: rate}
	for _, a := range e.Guarded {
		if !a.Is4() {
			return nil, fmt.Errorf("egress: guarded address %v is not IPv4", a)
		}
		p.guarded = append(p.guarded, a)
	}
	slices.SortFunc(p.guarded, netip.Addr.Compare)
	p.guarded = slices.Compact(p.guarded)
	var elems []egressElem
	for _, r := range e.Rules {
		switch {
		case !r.SrcIP.Is4():
			return nil, fmt.Errorf("egress rule %v: source is not an IPv4 address", r)
		case !r.DestStart.Is4() || !r.DestEnd.Is4() || r.DestEnd.Less(r.DestStart):
			return nil, fmt.Errorf("egress rule %v: destination is not an IPv4 range", r)
		}
		el := egressElem{src: r.SrcIP, dlo: u32(r.DestStart), dhi: u32(r.DestEnd)}
		switch r.Protocol {
		case "tcp", "udp":
			if r.StartPort == 0 || r.EndPort < r.StartPort {
				return nil, fmt.Errorf("egress rule %v: ports are not a range within 1-65535", r)
			}
			el.proto, _ = protoNumber(r.Protocol)
			el.plo, el.phi = r.StartPort, r.EndPort
			elems = append(elems, el)
		case "icmp":
			tlo, thi, ok1 := icmpRange(r.ICMPType)
			clo, chi, ok2 := icmpRange(r.ICMPCode)
			if !ok1 || !ok2 {
				return nil, fmt.Errorf("egress rule %v: ICMP type and code must be -1 to 255", r)
			}
			el.proto = protoICMP
			// type<<8|code is contiguous for one type (any or one code)
			// and for any type with any code; any type with one code is
			// one element per type.
			if clo == 0 && chi == 255 {
				el.plo, el.phi = uint16(tlo)<<8, uint16(thi)<<8|0xff
				elems = append(elems, el)
				break
			}
			for t := int(tlo); t <= int(thi); t++ {
				el.plo, el.phi = uint16(t)<<8|uint16(clo), uint16(t)<<8|uint16(chi)
				elems = append(elems, el)
			}
		case "all":
			el.proto = protoAll
			elems = append(elems, el)
		default:
			return nil, fmt.Errorf("egress rule %v: protocol %q is not tcp, udp, icmp or all", r, r.Protocol)
		}
	}
	p.elems = disjoint(elems)
	if e.AllowLogGroup != 0 {
		p.allowGrp = e.AllowLogGroup
		var logged []egressElem
		for _, r := range e.Rules {
			if r.Log {
				logged = append(logged, egressElem{src: r.SrcIP, proto: protoAll, dlo: u32(r.DestStart), dhi: u32(r.DestEnd)})
			}
		}
		p.logged = disjoint(logged)
	}
	h := sha256.New()
	fmt.Fprintln(h, p.overlay, p.guarded, p.logGrp, p.rate, p.elems, p.allowGrp, p.logged)
	p.sum = hex.EncodeToString(h.Sum(nil)[:8])
	return p, nil
}

// protoICMP is IPPROTO_ICMP.
const protoICMP = 1

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addr32(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func icmpRange(v int) (lo, hi uint8, ok bool) {
	switch {
	case v == -1:
		return 0, 255, true
	case v >= 0 && v <= 255:
		return uint8(v), uint8(v), true
	}
	return 0, 0, false
}

// disjoint returns rectangles (destinations × ports) that cover exactly
// what elems cover, none overlapping another of the same source and
// protocol, sorted: each group's destination axis is cut where an element
// starts or ends, each piece gets the union of the port ranges that cover
// it, and neighbouring pieces with the same ports are joined again.
func disjoint(elems []egressElem) []egressElem {
	type key struct {
		src   netip.Addr
		proto uint8
	}
	groups := map[key][]egressElem{}
	var keys []key
	for _, e := range elems {
		k := key{e.src, e.proto}
		if groups[k] == nil {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], e)
	}
	slices.SortFunc(keys, func(a, b key) int { return cmp.Or(a.src.Compare(b.src), cmp.Compare(a.proto, b.proto)) })
	var out []egressElem
	for _, k := range keys {
		g := groups[k]
		var cuts []uint64
		for _, e := range g {
			cuts = append(cuts, uint64(e.dlo), uint64(e.dhi)+1)
		}
		slices.Sort(cuts)
		cuts = slices.Compact(cuts)
		type piece struct {
			lo, hi uint32
			ports  []PortSpan
		}
		var pieces []piece
		for i := 0; i+1 < len(cuts); i++ {
			lo, hi := uint32(cuts[i]), uint32(cuts[i+1]-1)
			var spans []PortSpan
			for _, e := range g {
				if e.dlo <= lo && hi <= e.dhi {
					spans = append(spans, PortSpan{e.plo, e.phi})
				}
			}
			if len(spans) == 0 {
				continue
			}
			spans = mergeSpans(spans)
			if n := len(pieces); n > 0 && uint64(pieces[n-1].hi)+1 == uint64(lo) && slices.Equal(pieces[n-1].ports, spans) {
				pieces[n-1].hi = hi
				continue
			}
			pieces = append(pieces, piece{lo, hi, spans})
		}
		for _, pc := range pieces {
			for _, sp := range pc.ports {
				out = append(out, egressElem{k.src, k.proto, pc.lo, pc.hi, sp.Lo, sp.Hi})
			}
		}
	}
	return out
}

// PortSpan is an inclusive range of 16-bit values.
type PortSpan struct{ Lo, Hi uint16 }

// mergeSpans sorts spans and joins overlapping and adjacent ones.
func mergeSpans(spans []PortSpan) []PortSpan {
	slices.SortFunc(spans, func(a, b PortSpan) int { return cmp.Or(cmp.Compare(a.Lo, b.Lo), cmp.Compare(a.Hi, b.Hi)) })
	out := spans[:1]
	for _, s := range spans[1:] {
		last := &out[len(out)-1]
		if uint32(s.Lo) <= uint32(last.Hi)+1 {
			last.Hi = max(last.Hi, s.Hi)
			continue
		}
		out = append(out, s)
	}
	return out
}

// allowsEgress reports whether the plan admits a new connection from src
// to dst on proto and port (for icmp: any type), the check conntrack cuts
// are made against.
func (p *egressPlan) allowsEgress(src, dst netip.Addr, proto uint8, port uint16) bool {
	d := u32(dst)
	for _, e := range p.elems {
		if e.src != src || d < e.dlo || d > e.dhi {
			continue
		}
		switch e.proto {
		case protoAll:
			return true
		case protoICMP:
			if proto == protoICMP {
				return true
			}
		case proto:
			if e.plo <= port && port <= e.phi {
				return true
			}
		}
	}
	return false
}

// render prints the plan's set elements in nft syntax, for tests and logs.
func (p *egressPlan) render() string {
	var b strings.Builder
	for _, e := range p.elems {
		switch e.proto {
		case protoAll:
			fmt.Fprintf(&b, "all %s . %s-%s\n", e.src, addr32(e.dlo), addr32(e.dhi))
		case protoICMP:
			fmt.Fprintf(&b, "icmp %s . %s-%s . type %d-%d code %d-%d\n", e.src, addr32(e.dlo), addr32(e.dhi), e.plo>>8, e.phi>>8, e.plo&0xff, e.phi&0xff)
		default:
			fmt.Fprintf(&b, "%s %s . %s-%s . %d-%d\n", protoName(e.proto), e.src, addr32(e.dlo), addr32(e.dhi), e.plo, e.phi)
		}
	}
	return b.String()
}
